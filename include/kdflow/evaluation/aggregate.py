"""Aggregates and comparisons over per-question :class:`~kdflow.records.ScoreRow`s.

Pure functions on stored scores (no models), so the report and the Airflow "Display" tasks
recompute the same numbers from the same rows. A score of ``None`` is a judge failure: it is
counted under ``failures`` and left out of every mean, median and share.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kdflow.evaluation.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, paired_comparison
from kdflow.records import ScoreRow

SPLITS = ("train", "held_out")
STAGES = ("baseline", "finetuned")


def select(rows: Iterable[ScoreRow], *, split: str | None = None, stage: str | None = None) -> list[ScoreRow]:
    return [r for r in rows if (split is None or r.split == split) and (stage is None or r.stage == stage)]


def metric_names(rows: Iterable[ScoreRow]) -> list[str]:
    """Every metric that appears in ``rows``, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.scores))
        names.update(dict.fromkeys(row.failures))
    return list(names)


def _scored(rows: Iterable[ScoreRow], metric: str) -> list[float]:
    return [v for r in rows if (v := r.scores.get(metric)) is not None]


def summarize(rows: Sequence[ScoreRow], metric: str) -> dict[str, Any]:
    """Mean, median, count of scored rows and count of failed rows for one metric."""
    values = _scored(rows, metric)
    failures = sum(1 for r in rows if r.scores.get(metric) is None and (metric in r.scores or metric in r.failures))
    return {
        "mean": statistics.fmean(values) if values else None,
        "median": statistics.median(values) if values else None,
        "count": len(values),
        "failures": failures,
    }


def _group(rows: Iterable[ScoreRow], key) -> dict[Any, list[ScoreRow]]:  # noqa: ANN001 - a row -> key callable
    groups: dict[Any, list[ScoreRow]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def aggregate(rows: Sequence[ScoreRow]) -> dict[str, Any]:
    """Per (split, stage) and per (split, stage, topic): mean, median, count, failures per metric.

    Shape: ``{"by_split_stage": {split: {stage: {metric: summary}}},
    "by_topic": {split: {stage: {topic: {metric: summary}}}}}``.
    """
    by_split_stage: dict[str, dict[str, Any]] = {}
    by_topic: dict[str, dict[str, Any]] = {}
    for (split, stage), group in sorted(_group(rows, lambda r: (r.split, r.stage)).items()):
        metrics = metric_names(r for r in rows if r.split == split)  # the gold set has metrics of its own
        by_split_stage.setdefault(split, {})[stage] = {m: summarize(group, m) for m in metrics}
        topics = _group(group, lambda r: r.topic)
        by_topic.setdefault(split, {})[stage] = {t: {m: summarize(topics[t], m) for m in metrics}
                                                 for t in sorted(topics)}
    return {"by_split_stage": by_split_stage, "by_topic": by_topic}


def _improvement(before: float | None, after: float | None) -> tuple[float | None, float | None]:
    """Absolute and relative (percent of ``before``) change; relative is None from a zero base."""
    if before is None or after is None:
        return None, None
    absolute = after - before
    return absolute, (absolute / before * 100.0 if before else None)


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def by_question(rows: Iterable[ScoreRow], metric: str) -> dict[str, float | None]:
    return {r.question_id: r.scores.get(metric) for r in rows}


def compare_metric(
    baseline: Sequence[ScoreRow], finetuned: Sequence[ScoreRow], metric: str, success_threshold: float, **stats: Any
) -> dict[str, Any]:
    """Baseline vs fine-tuned for one metric on one split (questions paired by id), with the paired
    statistics of :func:`kdflow.evaluation.stats.paired_comparison` (``stats``: resamples, confidence, seed)."""
    before, after = summarize(baseline, metric), summarize(finetuned, metric)
    absolute, relative = _improvement(before["mean"], after["mean"])
    base_by_id = by_question(baseline, metric)
    pairs = [
        (base_by_id[r.question_id], r.scores[metric])
        for r in finetuned
        if r.scores.get(metric) is not None and base_by_id.get(r.question_id) is not None
    ]
    paired = paired_comparison(base_by_id, by_question(finetuned, metric), **stats)
    return {
        **{k: paired[k] for k in ("mean_delta", "ci_low", "ci_high", "p_value", "mde", "verdict")},
        "baseline_mean": before["mean"],
        "finetuned_mean": after["mean"],
        "baseline_median": before["median"],
        "finetuned_median": after["median"],
        "abs_improvement": absolute,
        "rel_improvement_pct": relative,
        "improved_share": _share([a > b for b, a in pairs]),
        "baseline_above_threshold_share": _share([v >= success_threshold for v in _scored(baseline, metric)]),
        "finetuned_above_threshold_share": _share([v >= success_threshold for v in _scored(finetuned, metric)]),
        "paired": len(pairs),
        "baseline_count": before["count"],
        "finetuned_count": after["count"],
        "baseline_failures": before["failures"],
        "finetuned_failures": after["failures"],
        "failures": before["failures"] + after["failures"],
    }


def training_summary(training: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not training:
        return None
    losses = [float(x) for x in training.get("losses") or []]
    return {
        "wall_s": training.get("wall_s"),
        "final_loss": losses[-1] if losses else None,
        "losses": losses,
        "steps": training.get("steps"),
        "tokens_per_s": training.get("tokens_per_s"),
    }


def compare_cycle(
    baseline: Sequence[ScoreRow],
    finetuned: Sequence[ScoreRow],
    *,
    training: Mapping[str, Any] | None,
    success_threshold: float,
    **stats: Any,
) -> dict[str, Any]:
    """One cycle's comparison: ``{"cycle", "splits": {split: {metric: compare_metric}}, "training"}``.

    Splits with no rows on either side are left out; ``training`` adds wall time, final loss and
    the loss curve.
    """
    rows = [*baseline, *finetuned]
    cycles = {r.cycle for r in rows}
    if len(cycles) > 1:
        raise ValueError(f"compare_cycle got score rows of several cycles {sorted(cycles)}; pass one cycle's rows")
    bad = ([r.question_id for r in baseline if r.stage != "baseline"]
           + [r.question_id for r in finetuned if r.stage != "finetuned"])
    if bad:
        raise ValueError(f"compare_cycle got rows with the wrong stage for questions {bad[:5]}")
    splits = {}
    for split in SPLITS:
        base, fine = select(baseline, split=split), select(finetuned, split=split)
        if base or fine:  # each split's own metrics: the gold set's are not the teacher-written sets'
            splits[split] = {m: compare_metric(base, fine, m, success_threshold, **stats)
                             for m in metric_names([*base, *fine])}
    return {
        "cycle": cycles.pop() if cycles else None,
        "success_threshold": success_threshold,
        "splits": splits,
        "training": training_summary(training),
    }


def statistics_options(resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                       seed: int = 0) -> dict[str, Any]:
    """The keyword arguments of :func:`paired_comparison` the pipeline and the report share."""
    return {"resamples": resamples, "confidence": confidence, "seed": seed}


def compare_all(
    cycles: Sequence[Mapping[str, Any]], scores: Mapping[int, Sequence[ScoreRow]], **stats: Any
) -> dict[str, Any]:
    """Across cycles (``compare_cycle`` outputs, and each cycle's score rows in ``scores``): a flat
    table, the held-out trend, and the overall change on the held-out set: the SAME questions at
    the model the run started from (first cycle's baseline) and at the last adapter, paired.

    The trained questions differ from cycle to cycle, so they get no overall row: a mean over
    other questions is not an improvement. Each cycle's table compares its own questions."""
    ordered = sorted(cycles, key=lambda c: c["cycle"] if c.get("cycle") is not None else 0)
    table = []
    for comp in ordered:
        training = comp.get("training") or {}
        for split, per_metric in comp["splits"].items():
            for metric, numbers in per_metric.items():
                table.append(
                    {"cycle": comp["cycle"], "split": split, "metric": metric, **numbers,
                     "wall_s": training.get("wall_s"), "final_loss": training.get("final_loss")}
                )
    overall: dict[str, dict[str, Any]] = {}
    if ordered:
        first, last = ordered[0]["cycle"], ordered[-1]["cycle"]
        start = select(scores.get(first, []), split="held_out", stage="baseline")
        end = select(scores.get(last, []), split="held_out", stage="finetuned")
        for metric in metric_names([*start, *end]):
            paired = paired_comparison(by_question(start, metric), by_question(end, metric), **stats)
            overall.setdefault("held_out", {})[metric] = {
                "first_cycle": first, "last_cycle": last, **paired,
                "first_baseline_mean": paired["before_mean"], "last_finetuned_mean": paired["after_mean"],
            }
    trend: dict[str, list[dict[str, Any]]] = {}
    for comp in ordered:
        for metric, numbers in comp["splits"].get("held_out", {}).items():
            trend.setdefault(metric, []).append(
                {"cycle": comp["cycle"], "baseline_mean": numbers["baseline_mean"],
                 "finetuned_mean": numbers["finetuned_mean"]}
            )
    return {"table": table, "overall": overall, "held_out_trend": trend}
