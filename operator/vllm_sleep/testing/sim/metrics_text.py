"""/metrics in Prometheus text format with vLLM's metric names and labels (docs/vllm.md "Metrics").

Written by hand rather than with prometheus_client registries: a registry per engine would cost
far more memory across 1000 simulated engines than this string does.
"""

from __future__ import annotations

from .engine import SimEngine
from .metrics_state import BUCKETS
from .violations import KINDS


def _labels(**kv: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in kv.items())
    return "{" + inner + "}"


def render_metrics(engine: SimEngine) -> str:
    cfg, m = engine.cfg, engine.metrics
    base = {"model_name": cfg.served_names[0], "engine": "0"}
    lb = _labels(**base)
    running, waiting = engine.sched.stats()
    kv_usage = min(1.0, (running + 0.0) / cfg.max_num_seqs) if not engine.asleep_tags else 0.0
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {value}" for labels, value in samples)

    metric(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [(lb, running)],
    )
    metric(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [(lb, waiting)],
    )
    metric(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        [(lb, kv_usage)],
    )
    states = ("awake", "weights_offloaded", "discard_all")
    metric(
        "vllm:engine_sleep_state",
        "gauge",
        "Engine sleep state; awake = 0 means engine is sleeping.",
        [(_labels(**base, sleep_state=s), 1.0 if engine.sleep_gauge == s else 0.0) for s in states],
    )
    metric(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        [(lb, m.prompt_tokens)],
    )
    metric(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        [(lb, m.generation_tokens)],
    )
    metric(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        [(_labels(**base, finished_reason=r), n) for r, n in sorted(m.finished.items())],
    )
    if m.op_duration:  # ≥0.32, created lazily by the first sleep/wake/release
        samples: list[tuple[str, float]] = []
        for op, h in sorted(m.op_duration.items()):
            for bound, count in zip(BUCKETS, h.counts, strict=True):
                samples.append(
                    (_labels(operation=op, le=str(bound)), count)
                )  # observe() keeps counts cumulative
            samples.append((_labels(operation=op, le="+Inf"), h.n))
        name = "vllm:sleep_mode_operation_duration_seconds"
        out.append(f"# HELP {name} Duration of sleep mode operations.")
        out.append(f"# TYPE {name} histogram")
        out.extend(f"{name}_bucket{lab} {v}" for lab, v in samples)
        for op, h in sorted(m.op_duration.items()):
            out.append(f"{name}_sum{_labels(operation=op)} {h.total}")
            out.append(f"{name}_count{_labels(operation=op)} {h.n}")
        metric(
            "vllm:sleep_mode_operations_in_flight",
            "gauge",
            "Sleep mode operations in flight.",
            [(_labels(operation=op), n) for op, n in sorted(m.op_in_flight.items())],
        )
    counts = {k: 0 for k in KINDS}
    for v in engine.violations:
        counts[v.kind] += 1
    metric(
        "vllm_sim_violations_total",
        "counter",
        "Contract violations seen by the simulator.",
        [(_labels(kind=k), n) for k, n in counts.items()],
    )
    return "\n".join(out) + "\n"
