"""The report's matplotlib figures, written as PNG files (Agg backend: no display needed).

Each function takes numbers already computed by :mod:`kdflow.evaluation.aggregate`, so a plot
and the tables beside it show the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLORS = {"baseline": "#9aa5b1", "finetuned": "#2f6fdf"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    _pyplot().close(fig)
    return path


def _value(x: float | None) -> float:
    return float("nan") if x is None else x


def scores_per_cycle(table: Sequence[Mapping[str, Any]], metrics: Sequence[str], split: str, path: Path) -> Path:
    """Grouped bars: baseline vs fine-tuned mean per cycle, one panel per metric."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = [r for r in table if r["metric"] == metric and r["split"] == split]
        cycles = [r["cycle"] for r in rows]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [_value(r["baseline_mean"]) for r in rows], 0.4, label="baseline",
               color=COLORS["baseline"])
        ax.bar([x + 0.2 for x in xs], [_value(r["finetuned_mean"]) for r in rows], 0.4, label="fine-tuned",
               color=COLORS["finetuned"])
        ax.set_xticks(list(xs), [f"cycle {c}" for c in cycles])
        ax.set_ylim(0, 1)
        ax.set_title(f"{metric} ({split})")
    axes[0][0].legend(loc="lower left")
    return _save(fig, path)


def before_after(pairs: Mapping[int, Sequence[tuple[float, float]]], metric: str, path: Path) -> Path:
    """Per-question scatter, baseline (x) vs fine-tuned (y), one colour per cycle; above the
    diagonal = improved."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=1, linestyle="--")
    for cycle, points in sorted(pairs.items()):
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], label=f"cycle {cycle}", s=28)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"baseline {metric}")
    ax.set_ylabel(f"fine-tuned {metric}")
    ax.set_title("per question, before vs after")
    if pairs:
        ax.legend(loc="lower right")
    return _save(fig, path)


def loss_curves(losses: Mapping[int, Sequence[float]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    for cycle, curve in sorted(losses.items()):
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=f"cycle {cycle}")
    ax.set_xlabel("logged step")
    ax.set_ylabel("training loss")
    ax.set_title("loss per cycle")
    if any(losses.values()):
        ax.legend()
    return _save(fig, path)


def held_out_trend(trend: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """Held-out mean per metric: the first baseline, then the fine-tuned model after each cycle."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    for metric, points in trend.items():
        if not points:
            continue
        labels = ["start", *(f"after {p['cycle']}" for p in points)]
        values = [_value(points[0]["baseline_mean"]), *(_value(p["finetuned_mean"]) for p in points)]
        ax.plot(labels, values, marker="o", label=metric)
    ax.set_ylim(0, 1)
    ax.set_title("held-out questions (never trained on)")
    if trend:
        ax.legend()
    return _save(fig, path)
