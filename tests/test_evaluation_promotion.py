"""The champion gate promotes only on a paired gain beyond noise, refuses otherwise, and fails
closed when there is nothing comparable."""

from __future__ import annotations

import pytest

from kdflow.config import PromotionConfig
from kdflow.evaluation.promotion import decide_promotion
from kdflow.records import ScoreRow

METRIC = "key_fact_recall"
TOPICS = ("pods", "services", "storage")


def gold(values: dict[str, float | None], stage: str = "finetuned") -> list[ScoreRow]:
    """``{"pods-1": 0.5, ...}``: the topic is the id's prefix."""
    return [
        ScoreRow(question_id=qid, topic=qid.split("-")[0], split="gold", stage=stage, cycle=1,
                 scores={METRIC: v}, failures={} if v is not None else {METRIC: "unparsable"})
        for qid, v in values.items()
    ]


def spread(base: float, lift: float, per_topic: int = 8, lifts: dict[str, float] | None = None) -> dict[str, float]:
    """Scores with a little per-question spread, so a paired interval has width."""
    return {f"{t}-{i}": round(base + (lifts or {}).get(t, lift) + 0.02 * ((i % 3) - 1), 4)
            for t in TOPICS for i in range(per_topic)}


INCUMBENT = gold(spread(0.3, 0.0), stage="baseline")


def test_promotes_a_clear_paired_gain():
    decision = decide_promotion(gold(spread(0.3, 0.2)), INCUMBENT, PromotionConfig(margin=0.05),
                                metric=METRIC, split="gold")
    assert decision["promote"] is True, decision["reason"]
    assert decision["delta"] == pytest.approx(0.2) and decision["ci_low"] > 0.05 and decision["questions"] == 24
    assert decision["verdict"] == "improved" and "CI" in decision["reason"]


def test_refuses_a_mean_gain_inside_the_noise():
    """Half the questions up by 0.3, half down by 0.25: the mean rises by 0.025, the interval spans 0."""
    values = {qid: v + (0.3 if i % 2 else -0.25) for i, (qid, v) in enumerate(spread(0.4, 0.0).items())}
    decision = decide_promotion(gold(values), gold(spread(0.4, 0.0), "baseline"), PromotionConfig(), metric=METRIC)
    assert decision["delta"] > 0 and decision["ci_low"] < 0 < decision["ci_high"]
    assert decision["promote"] is False and "beyond noise" in decision["reason"]


def test_refuses_when_not_better_by_the_margin():
    decision = decide_promotion(gold(spread(0.3, 0.05)), INCUMBENT, PromotionConfig(margin=0.1), metric=METRIC)
    assert decision["promote"] is False and "margin" in decision["reason"]
    tie = decide_promotion(gold(spread(0.3, 0.0)), INCUMBENT, PromotionConfig(margin=0.0), metric=METRIC)
    assert tie["promote"] is False  # equal is not better


def test_refuses_when_a_topic_regresses_beyond_tolerance():
    candidate = gold(spread(0.3, 0.3, lifts={"storage": -0.2}))
    decision = decide_promotion(candidate, INCUMBENT, PromotionConfig(margin=0.0, topic_tolerance=0.1), metric=METRIC)
    assert decision["ci_low"] > 0 and decision["promote"] is False
    assert decision["regressed_topics"] == ["storage"] and "storage -0.200" in decision["reason"]


def test_fails_closed_without_comparable_scores():
    """No incumbent scores, or none shared with the candidate: no promotion (today's code promoted)."""
    candidate = gold(spread(0.3, 0.5))
    for incumbent in (None, [], gold({"other-1": 0.1, "other-2": 0.2}, "baseline"), gold({"pods-0": None}, "baseline")):
        decision = decide_promotion(candidate, incumbent, PromotionConfig(), metric=METRIC)
        assert decision["promote"] is False and "fails closed" in decision["reason"]


def test_failed_rows_and_unshared_questions_are_left_out():
    values = spread(0.3, 0.2)
    values["pods-0"] = None
    values["pods-99"] = 0.0  # not in the incumbent's set
    decision = decide_promotion(gold(values), INCUMBENT, PromotionConfig(), metric=METRIC)
    assert decision["questions"] == 23 and decision["promote"] is True


def test_refuses_without_candidate_scores():
    decision = decide_promotion(gold({"pods-1": None}), INCUMBENT, PromotionConfig(), metric=METRIC, split="gold")
    assert decision["promote"] is False and "no scored gold" in decision["reason"]
