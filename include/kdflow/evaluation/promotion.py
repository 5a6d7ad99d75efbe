"""The promotion gate: does a run's last adapter become the store's champion?

Judged on questions never trained on: the gold set (independent of the teacher), or the
teacher-written held-out set when a run has no gold set. The candidate and the incumbent (the model
the run started from: the champion, or the base model) are compared on the SAME questions, paired,
with the statistics the report shows (:mod:`kdflow.evaluation.stats`): the adapter is promoted only
when the lower bound of the interval of its mean paired delta is above ``promotion.margin``, so a
change inside the noise never replaces a champion. It fails closed: no comparable scores, no promotion.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from kdflow.config import PromotionConfig
from kdflow.evaluation.aggregate import by_question
from kdflow.evaluation.stats import MIN_PAIRS, paired_comparison
from kdflow.records import ScoreRow


def _topic_deltas(candidate: Sequence[ScoreRow], incumbent: Sequence[ScoreRow], metric: str,
                  ids: set[str]) -> dict[str, float]:
    before = {r.question_id: (r.topic, v) for r in incumbent
              if r.question_id in ids and (v := r.scores.get(metric)) is not None}
    after = {r.question_id: v for r in candidate if r.question_id in ids and (v := r.scores.get(metric)) is not None}
    by_topic: dict[str, list[float]] = {}
    for qid, (topic, value) in before.items():
        if qid in after:
            by_topic.setdefault(topic, []).append(after[qid] - value)
    return {t: statistics.fmean(d) for t, d in sorted(by_topic.items())}


def decide_promotion(
    candidate: Sequence[ScoreRow],
    incumbent: Sequence[ScoreRow] | None,
    cfg: PromotionConfig,
    *,
    metric: str,
    split: str = "gold",
    **stats: Any,
) -> dict[str, Any]:
    """Promote only if the interval's lower bound of the candidate's mean paired delta against the
    incumbent is above ``cfg.margin`` and no topic's mean delta is below ``-cfg.topic_tolerance``.

    ``stats`` go to :func:`paired_comparison` (resamples, confidence, seed). Fails closed when fewer
    than two questions were scored on both sides. Returns ``{"promote", "reason", "metric", "split",
    "candidate_mean", "champion_mean", "delta", "ci_low", "ci_high", "p_value", "verdict", "margin",
    "topic_tolerance", "topic_deltas", "regressed_topics", "questions"}``."""
    decision: dict[str, Any] = {
        "metric": metric, "split": split, "margin": cfg.margin, "topic_tolerance": cfg.topic_tolerance,
        "candidate_mean": None, "champion_mean": None, "delta": None, "ci_low": None, "ci_high": None,
        "p_value": None, "verdict": None, "topic_deltas": {}, "regressed_topics": [], "questions": 0,
    }
    after = {k: v for k, v in by_question(candidate, metric).items() if v is not None}
    if not after:
        return {**decision, "promote": False,
                "reason": f"candidate has no scored {split} questions for {metric!r}; nothing to judge it by"}
    before = {k: v for k, v in by_question(incumbent or [], metric).items() if v is not None}
    paired = paired_comparison(before, after, **stats)
    if paired["n"] < MIN_PAIRS:
        return {**decision, "promote": False, "questions": paired["n"],
                "reason": ("no comparable scores: the model the run started from and the candidate share "
                           f"{paired['n']} scored {split} question(s) for {metric!r} (need {MIN_PAIRS}); kept the "
                           "champion (fails closed)")}
    topic_deltas = _topic_deltas(candidate, incumbent or [], metric, set(before) & set(after))
    regressed = [t for t, d in topic_deltas.items() if d < -cfg.topic_tolerance]
    decision.update(
        candidate_mean=paired["after_mean"], champion_mean=paired["before_mean"], delta=paired["mean_delta"],
        ci_low=paired["ci_low"], ci_high=paired["ci_high"], p_value=paired["p_value"], verdict=paired["verdict"],
        topic_deltas=topic_deltas, regressed_topics=regressed, questions=paired["n"],
    )
    level = round(paired["confidence"] * 100)
    summary = (f"{split} {metric} {paired['after_mean']:.3f} vs {paired['before_mean']:.3f} over {paired['n']} paired "
               f"questions, delta {paired['mean_delta']:+.3f}, {level}% CI [{paired['ci_low']:+.3f}, "
               f"{paired['ci_high']:+.3f}], margin {cfg.margin:.3f}")
    if regressed:
        worst = ", ".join(f"{t} {topic_deltas[t]:+.3f}" for t in regressed)
        return {**decision, "promote": False,
                "reason": f"topic regression beyond tolerance {cfg.topic_tolerance:.3f}: {worst}; {summary}"}
    if paired["ci_low"] <= cfg.margin:
        return {**decision, "promote": False,
                "reason": f"not better by more than the margin beyond noise (CI lower bound "
                          f"{paired['ci_low']:+.3f} <= {cfg.margin:.3f}): {summary}"}
    return {**decision, "promote": True, "reason": f"beats the model the run started from: {summary}"}
