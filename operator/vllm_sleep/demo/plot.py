"""The timeline as a PNG (matplotlib): per model awake/asleep/transition bands over time on top,
the device's memory below (each model's bytes stacked, the operator's committed bytes, the
device's size).

matplotlib comes with the test extra (`pip install -e '.[test]'`, what `make demo` installs);
without it the demo says so and skips the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .timeline import Request, Swap, Timeline

GiB = 2**30
BAND_COLORS = {
    "loading": "#f2c14e",
    "asleep": "#9ecae1",
    "waking": "#c51b8a",
    "awake": "#31a354",
    "sleeping": "#fd8d3c",
    "failed": "#de2d26",
}
MODEL_COLORS = ("#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#d62728", "#1f77b4")


class NoMatplotlib(RuntimeError):
    """matplotlib is not installed: the message says how to get it."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise NoMatplotlib(
            "no PNG timeline: matplotlib is not installed "
            "(pip install matplotlib, or pip install -e '.[test]' as `make demo` does)"
        ) from e
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def write_png(
    tl: Timeline, requests: list[Request], found: list[Swap], path: Path, title: str = ""
) -> Path:
    plt = _pyplot()
    from matplotlib.patches import Patch

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(13, 6.5), sharex=True, gridspec_kw={"height_ratios": [1, 1.2]}
    )
    outside = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8}
    names = tl.models
    # Top: one row per model, first model on top.
    for row, name in enumerate(reversed(names)):
        for iv in tl.intervals(name):
            color = BAND_COLORS.get(iv.band)
            if color and iv.seconds > 0:
                top.broken_barh([(iv.start, iv.seconds)], (row - 0.35, 0.7), color=color)
        sent = [r.sent for r in requests if r.model == name]
        top.plot(sent, [row + 0.42] * len(sent), "v", color="black", markersize=3, linestyle="")
    top.set_yticks(range(len(names)), list(reversed(names)))
    top.set_ylim(-0.6, len(names) - 0.3)
    for s in found:
        row = len(names) - 1 - names.index(s.woken)
        top.annotate(
            "",
            xy=(s.awake_at, row),
            xytext=(s.evicted_at, len(names) - 1 - names.index(s.evicted)),
            arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 0.6},
        )
    legend = [Patch(color=c, label=b) for b, c in BAND_COLORS.items() if b != "failed"]
    top.legend(handles=legend, **outside)
    fig.suptitle(title or f"{len(found)} swaps on one GPU  (▼ a request sent, → an eviction)")

    # Bottom: memory.
    at = [s.at for s in tl.samples]
    stacks = [[s.held.get(n, 0) / GiB for s in tl.samples] for n in names]
    if at:
        bottom.stackplot(
            at,
            stacks,
            labels=[f"{n} (simulator)" for n in names],
            colors=MODEL_COLORS[: len(names)],
            step="post",
            alpha=0.75,
        )
        committed = [
            (s.at, s.committed_bytes / GiB) for s in tl.samples if s.committed_bytes is not None
        ]
        used = [(s.at, s.used_bytes / GiB) for s in tl.samples if s.used_bytes is not None]
        if used:
            xs, ys = zip(*used, strict=True)
            bottom.step(xs, ys, where="post", color="black", lw=0.8, label="used (simulator)")
        if committed:
            xs, ys = zip(*committed, strict=True)
            bottom.step(
                xs, ys, where="post", color="#444444", lw=1, ls="--", label="committed (operator)"
            )
    bottom.axhline(tl.device_bytes / GiB, color="#de2d26", lw=1, label="device memory")
    bottom.set_ylim(0, tl.device_bytes / GiB * 1.08)
    bottom.set_ylabel("GiB on the GPU")
    bottom.set_xlabel("seconds since the models were applied")
    bottom.legend(**outside)
    for i, (x, label) in enumerate(tl.marks):
        for ax in (top, bottom):
            ax.axvline(x, color="#777777", lw=0.6, ls=":")
        top.text(  # alternate heights: phases can start a fraction of a second apart
            x,
            1.01 + 0.07 * (i % 2),
            f" {label}",
            transform=top.get_xaxis_transform(),
            fontsize=8,
            color="#555555",
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
