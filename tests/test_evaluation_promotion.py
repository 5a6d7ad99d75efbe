"""The champion gate promotes and refuses in the right cases."""

from __future__ import annotations

import pytest

from kdflow.config import PromotionConfig
from kdflow.evaluation.promotion import decide_promotion
from kdflow.records import ScoreRow

METRIC = "answer_relevancy"


def held_out(values: dict[str, float | None]) -> list[ScoreRow]:
    """``{"pods-1": 0.5, ...}``: the topic is the id's prefix."""
    return [
        ScoreRow(question_id=qid, topic=qid.split("-")[0], split="held_out", stage="finetuned", cycle=2,
                 scores={METRIC: v}, failures={} if v is not None else {METRIC: "unparsable"})
        for qid, v in values.items()
    ]  # fmt: skip


CHAMPION = held_out({"pods-1": 0.5, "pods-2": 0.5, "services-1": 0.5, "storage-1": 0.5})


def test_first_candidate_becomes_champion():
    decision = decide_promotion(held_out({"pods-1": 0.3}), None, PromotionConfig(), metric=METRIC)
    assert decision["promote"] is True and "no champion yet" in decision["reason"]
    assert decision["candidate_mean"] == pytest.approx(0.3)


def test_promotes_when_better_by_margin_without_topic_regression():
    candidate = held_out({"pods-1": 0.7, "pods-2": 0.6, "services-1": 0.55, "storage-1": 0.48})
    decision = decide_promotion(candidate, CHAMPION, PromotionConfig(margin=0.05, topic_tolerance=0.05), metric=METRIC)
    assert decision["promote"] is True, decision["reason"]
    assert decision["delta"] == pytest.approx(0.0825)
    assert decision["topic_deltas"]["storage"] == pytest.approx(-0.02) and decision["regressed_topics"] == []


def test_refuses_when_not_better_by_margin():
    candidate = held_out({"pods-1": 0.55, "pods-2": 0.55, "services-1": 0.55, "storage-1": 0.55})
    decision = decide_promotion(candidate, CHAMPION, PromotionConfig(margin=0.1), metric=METRIC)
    assert decision["promote"] is False and "margin" in decision["reason"]
    tie = decide_promotion(CHAMPION, CHAMPION, PromotionConfig(margin=0.0), metric=METRIC)
    assert tie["promote"] is False  # equal is not better


def test_refuses_when_a_topic_regresses_beyond_tolerance():
    candidate = held_out({"pods-1": 0.9, "pods-2": 0.9, "services-1": 0.9, "storage-1": 0.3})
    decision = decide_promotion(candidate, CHAMPION, PromotionConfig(margin=0.0, topic_tolerance=0.1), metric=METRIC)
    assert decision["promote"] is False
    assert decision["regressed_topics"] == ["storage"] and "storage -0.200" in decision["reason"]


def test_failed_rows_and_unshared_questions_are_left_out():
    candidate = held_out({"pods-1": 0.9, "pods-2": None, "services-1": 0.6, "storage-1": 0.6, "pods-9": 0.0})
    decision = decide_promotion(candidate, CHAMPION, PromotionConfig(), metric=METRIC)
    assert decision["questions"] == 3  # pods-2 failed, pods-9 not in the champion's set
    assert decision["candidate_mean"] == pytest.approx(0.7) and decision["promote"] is True


def test_refuses_without_candidate_scores():
    decision = decide_promotion(held_out({"pods-1": None}), CHAMPION, PromotionConfig(), metric=METRIC)
    assert decision["promote"] is False and "no scored held-out" in decision["reason"]
