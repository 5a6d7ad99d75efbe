"""The verdict on the gold set: did the student learn what the knowledge base states?

The gold set is answered by the model the run started from (cycle 1's baseline: the base model or
the champion) and after every cycle (each cycle's fine-tuned answers). When the run's student read the
knowledge base first (:mod:`kdflow.pipeline.reading_steps`), cycle 1's baseline also holds its answers
from before reading (stage ``unread``), and they are the first point. Every comparison is paired on the
same gold questions (:mod:`kdflow.evaluation.stats`):

* ``overall``: the first point -> after the last cycle, per gold metric, with the share of the gap to
  the ceiling (the teacher answering the same questions open book) that the run closed;
* ``per_cycle``: before -> after reading the knowledge base (where it did), then after cycle k-1 (the
  start for k = 1) -> after cycle k;
* ``by_topic``: start -> last per topic of the lead metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kdflow.evaluation.aggregate import by_question, select
from kdflow.evaluation.stats import gap_closed, paired_comparison
from kdflow.records import ScoreRow

GOLD = "gold"


UNREAD_LABEL = "before reading"  # the first point of a run whose student read the knowledge base
READ_LABEL = "after reading the knowledge base"


def gold_points(cycles: Mapping[int, Sequence[ScoreRow]]) -> list[dict[str, Any]]:
    """``[{"cycle": 0, "label": "start", "rows"}, {"cycle": k, "label": "after cycle k", "rows"}...]``
    from each cycle's score rows: the start is cycle 1's gold baseline, then every cycle's gold fine-tuned.
    A run whose student read the knowledge base starts one point earlier: ``{"cycle": 0, "label": "before
    reading"}`` (the ``unread`` rows), then ``{"cycle": 0, "label": READ_LABEL}``."""
    ordered = sorted(cycles)
    if not ordered:
        return []
    start = select(cycles[ordered[0]], split=GOLD, stage="baseline")
    unread = select(cycles[ordered[0]], split=GOLD, stage="unread")
    points = [{"cycle": 0, "label": UNREAD_LABEL, "rows": unread}] if unread and start else []
    if start:
        points.append({"cycle": 0, "label": READ_LABEL if points else "start", "rows": start})
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
    read = start["label"] == UNREAD_LABEL
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
            "cycle": point["cycle"], "step": "reading" if point["label"] == READ_LABEL else f"cycle {point['cycle']}",
            "from": prev["label"], "to": point["label"],
            "metrics": {m: paired_comparison(by_question(prev["rows"], m), by_question(point["rows"], m), **stats)
                        for m in metrics},
        })
    lead = metrics[0]
    return {
        "lead_metric": lead,
        "metrics": list(metrics),
        "start_model": f"{start_model} before reading the knowledge base" if read else start_model,
        "read": read,  # the student read the knowledge base before cycle 1: the run, not distillation alone
        "last_cycle": last["cycle"],
        "items": len(start["rows"]),
        "overall": overall,
        "per_cycle": per_cycle,
        "by_topic": _topic_comparisons(start["rows"], last["rows"], lead, **stats),
        "has_ceiling": bool(ceiling),
    }
