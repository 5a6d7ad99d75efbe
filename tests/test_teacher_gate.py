"""Question checks on hand-made passages (issue #10): an appended answer, an unanswerable
question, a question that leans on the passage, duplicates; each rejection carries its reason."""

from __future__ import annotations

import pytest

from kdflow.kb import Passage
from kdflow.teacher.gate import DuplicateIndex, QuestionGate, normalise

PASSAGE = Passage(
    id="pods/pods#restart-0", topic="pods", source="pods.md", section="Pods > Restart policy",
    text="The restartPolicy field of a Pod applies to all its containers. Possible values are Always, OnFailure "
    "and Never; the default is Always. The kubelet restarts failed containers with an exponential back-off delay.",
)  # fmt: skip


@pytest.fixture(scope="module")
def seen():
    return DuplicateIndex(["What are the possible values of a Pod's restartPolicy?"], threshold=0.92)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("What is the default restartPolicy? Answer: Always", "not exactly one question"),
        ("What is the default restartPolicy. A: Always?", "appended answer"),
        ("Which of the following is the default restartPolicy?", "refers to a passage"),
        ("Why?", "words, outside"),
        ("What is the capital city of France and its population?", "not answerable from its passage"),
        ("what are the possible values of a pod's restartPolicy", "not exactly one question"),
        ("WHAT are the possible values of a POD'S restartPolicy?", "exact duplicate"),
        ("Which values can the restartPolicy of a Pod take?", "near duplicate"),
    ],
)
def test_bad_questions_are_rejected_with_a_reason(seen, text, reason):
    verdict = QuestionGate(passage_floor=0.3).check(text, PASSAGE, seen)
    assert not verdict.ok and reason in verdict.reason


def test_a_good_question_is_kept_with_its_scores(seen):
    verdict = QuestionGate(passage_floor=0.3).check("How does the kubelet delay restarts of failed containers?", PASSAGE, seen)
    assert verdict.ok, verdict.reason
    assert verdict.scores["passage_similarity"] >= 0.3 and verdict.scores["duplicate_similarity"] < 0.92


def test_normalise_ignores_case_and_punctuation():
    assert normalise("What is a Pod?") == normalise("  what is a  pod") == "what is a pod"
