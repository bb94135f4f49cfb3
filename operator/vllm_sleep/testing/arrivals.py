"""Seeded multi-model request arrivals shaped like public LLM serving traces.

The soak bench and its short e2e version replay the same generator, so a failure found by one
can be replayed by the other from its seed. The shape, and where each part comes from:

- **Popularity, Zipf-like**: model k (1-based) gets a share of the traffic proportional to
  1/k^s. A few models take most requests and a long tail wakes rarely, as in the Azure
  Functions trace (Shahrad et al., "Serverless in the Wild", USENIX ATC 2020), which
  AlpaServe (Li et al., OSDI 2023) and later multi-model LLM serving work replay as
  per-model request streams.
- **Burstiness, Gamma inter-arrival gaps**: each model's requests form a renewal process
  whose gaps are Gamma distributed with a coefficient of variation `cv` (1 is Poisson;
  larger is burstier: clusters of requests separated by long quiet spells). BurstGPT (Wang
  et al., arXiv 2401.17644; the Azure OpenAI GPT service trace) fits its request arrivals
  with Gamma distributions, and AlpaServe generates multi-model load the same way.
- **Diurnal swing, compressed**: a model's rate is multiplied by `1 + swing * sin(...)` with a
  `period` of minutes instead of a day (both traces show a daily cycle), each model with its
  own phase within `phase_spread` of the others, so peaks of different models overlap only
  partly and the set of hot models drifts over the run.
- Each request is streamed with probability `stream_share` and asks for a geometric number of
  tokens with mean `tokens_mean` (short answers: the soak measures time to first token).

The rate modulation is applied by time rescaling: gaps are drawn with mean 1 in the model's
cumulative-intensity time and mapped back to wall time, so the Gamma shape holds locally.
Pure: no I/O, no clock; the same (models, seconds, seed, shape) always gives the same list.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the trace's start
    model: str
    stream: bool
    max_tokens: int


@dataclass(frozen=True)
class TraceShape:
    rate: float = 2.0  # mean requests per second, all models together, over whole periods
    zipf: float = 1.0  # popularity exponent s: model k's share is proportional to 1/k^s
    cv: float = 3.0  # coefficient of variation of one model's gaps (1 = Poisson)
    period: float = 600.0  # seconds of one compressed "day"
    swing: float = 0.6  # the rate goes between (1 - swing) and (1 + swing) of its mean
    phase_spread: float = 0.25  # models' phases spread over this fraction of a period
    stream_share: float = 0.5
    tokens_mean: float = 8.0

    def __post_init__(self) -> None:
        problems = [
            msg
            for bad, msg in (
                (not self.rate > 0, "rate must be > 0"),
                (not self.zipf >= 0, "zipf must be >= 0"),
                (not self.cv > 0, "cv must be > 0"),
                (not self.period > 0, "period must be > 0"),
                (not 0 <= self.swing < 1, "swing must be in [0, 1)"),
                (not 0 <= self.phase_spread <= 1, "phase_spread must be in [0, 1]"),
                (not 0 <= self.stream_share <= 1, "stream_share must be in [0, 1]"),
                (not self.tokens_mean >= 1, "tokens_mean must be >= 1"),
            )
            if bad
        ]
        if problems:
            raise ValueError("; ".join(problems))

    def shares(self, n: int) -> list[float]:
        """Each of n models' share of the traffic, most popular first."""
        weights = [1 / (k + 1) ** self.zipf for k in range(n)]
        total = sum(weights)
        return [w / total for w in weights]


def arrivals(models: list[str], seconds: float, seed: int, shape: TraceShape) -> list[Arrival]:
    """Every request of the trace, in time order; `models` most popular first."""
    if not models:
        raise ValueError("no models")
    if len(set(models)) != len(models):
        raise ValueError("model names repeat")
    if not seconds > 0:
        raise ValueError("seconds must be > 0")
    out: list[Arrival] = []
    for k, (model, share) in enumerate(zip(models, shape.shares(len(models)), strict=True)):
        rng = random.Random(f"{seed}/{k}")  # one stream per model: adding a model moves no other
        phase = 2 * math.pi * shape.phase_spread * rng.random()
        out.extend(_one_model(model, shape.rate * share, phase, seconds, rng, shape))
    out.sort(key=lambda a: (a.at, a.model))
    return out


def _one_model(
    model: str, rate: float, phase: float, seconds: float, rng: random.Random, shape: TraceShape
) -> list[Arrival]:
    k = 1 / shape.cv**2  # Gamma shape; the scale 1/k makes the mean gap 1
    omega = 2 * math.pi / shape.period

    def cumulative(t: float) -> float:
        """Expected requests in [0, t]: the integral of rate * (1 + swing * sin(omega t + phase))."""
        return rate * (t - shape.swing / omega * (math.cos(omega * t + phase) - math.cos(phase)))

    end = cumulative(seconds)
    # The first gap starts inside a gap, not at an arrival (a trace cut out of a longer one).
    target = rng.gammavariate(k, 1 / k) * rng.random()
    out: list[Arrival] = []
    t = 0.0
    while target < end:
        t = _invert(cumulative, target, t, seconds)
        stream = rng.random() < shape.stream_share
        out.append(Arrival(t, model, stream, _geometric(rng, shape.tokens_mean)))
        target += rng.gammavariate(k, 1 / k)
    return out


def _geometric(rng: random.Random, mean: float) -> int:
    """1, 2, 3, ... with P(n) = p (1 - p)^(n - 1), p = 1 / mean."""
    if mean == 1:
        return 1
    return 1 + int(math.log(1 - rng.random()) / math.log(1 - 1 / mean))


def _invert(f: Callable[[float], float], y: float, lo: float, hi: float) -> float:
    """The t in [lo, hi] with f(t) = y, for an increasing f (bisection to a microsecond)."""
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if f(mid) < y:
            lo = mid
        else:
            hi = mid
    return hi
