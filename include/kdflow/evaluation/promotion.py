"""The promotion gate: does a run's last adapter become the store's champion?

Judged on the fixed held-out set only (questions never trained on), so a champion is the
adapter that generalises best, not the one that memorised its own cycle's questions.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from kdflow.config import PromotionConfig
from kdflow.records import ScoreRow


def _scores_by_question(rows: Sequence[ScoreRow], metric: str) -> dict[str, tuple[str, float]]:
    return {r.question_id: (r.topic, v) for r in rows if (v := r.scores.get(metric)) is not None}


def _topic_means(scored: dict[str, tuple[str, float]], ids: set[str]) -> dict[str, float]:
    by_topic: dict[str, list[float]] = {}
    for qid in ids:
        topic, value = scored[qid]
        by_topic.setdefault(topic, []).append(value)
    return {t: statistics.fmean(v) for t, v in sorted(by_topic.items())}


def decide_promotion(
    candidate_held_out: Sequence[ScoreRow],
    champion_held_out: Sequence[ScoreRow] | None,
    cfg: PromotionConfig,
    *,
    metric: str,
) -> dict[str, Any]:
    """Promote only if the candidate's held-out mean beats the champion's by more than
    ``cfg.margin`` and no topic's mean drops by more than ``cfg.topic_tolerance``.

    Both sides are compared on the questions scored on both (failed judge rows are left out); if
    the held-out set changed so that none are shared, each side's own mean is used and the reason
    says so. Returns ``{"promote", "reason", "metric", "candidate_mean", "champion_mean", "delta",
    "margin", "topic_tolerance", "topic_deltas", "regressed_topics", "questions"}``.
    """
    candidate = _scores_by_question(candidate_held_out, metric)
    decision: dict[str, Any] = {
        "metric": metric, "margin": cfg.margin, "topic_tolerance": cfg.topic_tolerance,
        "candidate_mean": None, "champion_mean": None, "delta": None,
        "topic_deltas": {}, "regressed_topics": [], "questions": 0,
    }
    if not candidate:
        return {**decision, "promote": False, "reason": f"candidate has no scored held-out questions for {metric!r}; nothing to judge it by"}
    if champion_held_out is None:
        mean = statistics.fmean(v for _, v in candidate.values())
        return {
            **decision, "promote": True, "candidate_mean": mean, "questions": len(candidate),
            "reason": f"no champion yet; candidate held-out {metric} {mean:.3f} over {len(candidate)} questions becomes the first",
        }
    champion = _scores_by_question(champion_held_out, metric)
    if not champion:
        return {**decision, "promote": True, "questions": len(candidate),
                "candidate_mean": statistics.fmean(v for _, v in candidate.values()),
                "reason": f"champion has no scored held-out questions for {metric!r}; candidate replaces it"}
    shared = candidate.keys() & champion.keys()
    note = ""
    if shared:
        cand_ids, champ_ids = set(shared), set(shared)
    else:
        cand_ids, champ_ids = set(candidate), set(champion)
        note = " (no shared held-out questions: compared each side's own set)"
    cand_mean = statistics.fmean(candidate[q][1] for q in cand_ids)
    champ_mean = statistics.fmean(champion[q][1] for q in champ_ids)
    delta = cand_mean - champ_mean
    cand_topics, champ_topics = _topic_means(candidate, cand_ids), _topic_means(champion, champ_ids)
    topic_deltas = {t: cand_topics[t] - champ_topics[t] for t in cand_topics if t in champ_topics}
    regressed = [t for t, d in topic_deltas.items() if d < -cfg.topic_tolerance]
    decision.update(
        candidate_mean=cand_mean, champion_mean=champ_mean, delta=delta,
        topic_deltas=topic_deltas, regressed_topics=regressed, questions=len(cand_ids),
    )
    summary = f"held-out {metric} {cand_mean:.3f} vs champion {champ_mean:.3f} (delta {delta:+.3f}, margin {cfg.margin:.3f}){note}"
    if delta <= cfg.margin:
        return {**decision, "promote": False, "reason": f"not better than the champion by the margin: {summary}"}
    if regressed:
        worst = ", ".join(f"{t} {topic_deltas[t]:+.3f}" for t in regressed)
        return {**decision, "promote": False,
                "reason": f"topic regression beyond tolerance {cfg.topic_tolerance:.3f}: {worst}; {summary}"}
    return {**decision, "promote": True, "reason": f"beats the champion: {summary}"}
