"""Question checks on hand-made passages (issue #10): an appended answer (labelled, before the
question, after it), an unanswerable question, a question that leans on the passage, duplicates;
each rejection carries its reason, and real questions with abbreviations pass."""

from __future__ import annotations

import pytest

from kdflow.config import GateConfig
from kdflow.kb import Passage
from kdflow.teacher.gate import DuplicateIndex, check_question, form_problem, normalise

PASSAGE = Passage(
    id="pods/pods#restart-0", topic="pods", source="pods.md", section="Pods > Restart policy",
    text="The restartPolicy field of a Pod applies to all its containers. Possible values are Always, OnFailure "
    "and Never; the default is Always. The kubelet restarts failed containers with an exponential back-off delay.",
)


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
        # an answer placed before the question, or after it, is a second sentence or trailing text
        ("The kubelet restarts failed containers. What does the kubelet do with failed containers?",
         "more than one sentence"),
        ("The default is Always! Which restartPolicy is the default?", "more than one sentence"),
        ("It restarts them. what does the kubelet do with failed containers?", "more than one sentence"),
        ("What does the kubelet do with failed containers? (It restarts them with a back-off delay.)",
         "text follows the '?'"),
        ("What does the kubelet do with failed containers (it restarts them). Why?", "more than one sentence"),
    ],
)
def test_bad_questions_are_rejected_with_a_reason(seen, text, reason):
    verdict = check_question(GateConfig(passage_floor=0.3), text, PASSAGE, seen)
    assert not verdict.ok and reason in verdict.reason


def test_a_good_question_is_kept_with_its_scores(seen):
    verdict = check_question(GateConfig(passage_floor=0.3),
                             "How does the kubelet delay restarts of failed containers?", PASSAGE, seen)
    assert verdict.ok, verdict.reason
    assert verdict.scores["passage_similarity"] >= 0.3 and verdict.scores["duplicate_similarity"] < 0.92


@pytest.mark.parametrize(
    "text",
    [
        "How does the kubelet delay restarts of failed containers, e.g. after a crash?",
        "Which restartPolicy values exist, i.e. what can a Pod's restartPolicy be set to?",
        "What restartPolicy does a Pod get in Kubernetes v1.28 if none is set?",
        "Which containers of a Pod does the restartPolicy apply to, e.g. init containers vs. app containers?",
    ],
)
def test_real_questions_with_abbreviations_pass_the_form_check(text):
    assert form_problem(text) is None


def test_normalise_ignores_case_and_punctuation():
    assert normalise("What is a Pod?") == normalise("  what is a  pod") == "what is a pod"
