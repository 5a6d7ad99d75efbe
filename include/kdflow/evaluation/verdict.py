"""The verdict on the gold set: did the student learn what the knowledge base states?

The gold set is answered by the model the run started from (cycle 1's baseline: the base model or
the champion) and after every cycle (each cycle's fine-tuned answers). Every comparison is paired
on the same gold questions (:mod:`kdflow.evaluation.stats`):

* ``overall``: start -> after the last cycle, per gold metric, with the share of the gap to the
  ceiling (the teacher answering the same questions open book) that distillation closed;
* ``per_cycle``: after cycle k-1 (the start for k = 1) -> after cycle k;
* ``by_topic``: start -> last per topic of the lead metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kdflow.evaluation.aggregate import by_question, select
from kdflow.evaluation.stats import gap_closed, paired_comparison
from kdflow.records import ScoreRow

GOLD = "gold"


def gold_points(cycles: Mapping[int, Sequence[ScoreRow]]) -> list[dict[str, Any]]:
    """``[{"cycle": 0, "label": "start", "rows"}, {"cycle": k, "label": "after cycle k", "rows"}...]``
    from each cycle's score rows: the start is cycle 1's gold baseline, then every cycle's gold fine-tuned."""
    ordered = sorted(cycles)
    if not ordered:
        return []
    start = select(cycles[ordered[0]], split=GOLD, stage="baseline")
    points = [{"cycle": 0, "label": "start", "rows": start}] if start else []
    for n in ordered:
        rows = select(cycles[n], split=GOLD, stage="finetuned")
        if rows:
            points.append({"cycle": n, "label": f"after cycle {n}", "rows": rows})
    return points


def _topic_comparisons(start: Sequence[ScoreRow], end: Sequence[ScoreRow], metric: str, **stats: Any) -> dict[str, Any]:
    topics = sorted({r.topic for r in start})
    return {t: paired_comparison(by_question([r for r in start if r.topic == t], metric),
                                 by_question([r for r in end if r.topic == t], metric), **stats) for t in topics}


def gold_verdict(
    cycles: Mapping[int, Sequence[ScoreRow]],
    metrics: Sequence[str],
    *,
    ceiling: Mapping[str, Mapping[str, float | None]] | None = None,
    start_model: str = "base model",
    **stats: Any,
) -> dict[str, Any] | None:
    """The verdict block (see module docstring); None when the run scored no gold answers.
    ``ceiling``: question id -> metric -> the teacher's open-book score."""
    points = gold_points(cycles)
    if len(points) < 2 or points[0]["cycle"] != 0:
        return None
    start, last = points[0], points[-1]
    overall: dict[str, Any] = {}
    for metric in metrics:
        before, after = by_question(start["rows"], metric), by_question(last["rows"], metric)
        entry = paired_comparison(before, after, **stats)
        if ceiling:
            top = {qid: scores.get(metric) for qid, scores in ceiling.items()}
            entry["gap_closed"] = gap_closed(before, after, top, **stats)
        overall[metric] = entry
    per_cycle = []
    for prev, point in zip(points, points[1:], strict=False):
        per_cycle.append({
            "cycle": point["cycle"], "from": prev["label"], "to": point["label"],
            "metrics": {m: paired_comparison(by_question(prev["rows"], m), by_question(point["rows"], m), **stats)
                        for m in metrics},
        })
    lead = metrics[0]
    return {
        "lead_metric": lead,
        "metrics": list(metrics),
        "start_model": start_model,
        "last_cycle": last["cycle"],
        "items": len(start["rows"]),
        "overall": overall,
        "per_cycle": per_cycle,
        "by_topic": _topic_comparisons(start["rows"], last["rows"], lead, **stats),
        "has_ceiling": bool(ceiling),
    }
