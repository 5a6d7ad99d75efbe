"""Non-LLM RAGAS metrics with the packaged MiniLM embeddings (no judge, no network)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kdflow.config import EvaluationConfig
from kdflow.evaluation.metrics import score_answers

REFERENCE = "A Pod is the smallest deployable unit in Kubernetes: one or more containers sharing storage and network."


def qa(qid: str, answer: str, reference: str = REFERENCE, split: str = "train") -> dict:
    return {"question_id": qid, "topic": "pods", "split": split,
            "question": "What is a Pod in Kubernetes?", "answer": answer, "reference": reference}


@pytest.mark.slow
def test_reference_metrics_rank_a_faithful_answer_above_an_unrelated_one():
    cfg = EvaluationConfig(metrics=["semantic_similarity", "rouge_l", "bleu"])
    rows = [
        qa("good", "A Pod is the smallest deployable unit in Kubernetes; its containers share storage and network."),
        qa("bad", "Bananas are a tropical fruit rich in potassium.", split="held_out"),
        qa("noref", "A Pod groups containers.", reference=""),
    ]
    good, bad, noref = score_answers(cfg, rows, judge=None, store=None, ledger=None, cycle=2, stage="finetuned")
    assert (good.cycle, good.stage, bad.split) == (2, "finetuned", "held_out")
    for metric in cfg.metrics:
        assert 0.0 <= bad.scores[metric] < good.scores[metric] <= 1.0, metric
    assert good.scores["semantic_similarity"] > 0.8 and good.scores["rouge_l"] > 0.5
    assert good.failures == {} and bad.failures == {}
    assert noref.scores == dict.fromkeys(cfg.metrics) and set(noref.failures) == set(cfg.metrics)
    assert "no reference" in noref.failures["rouge_l"]


def test_bad_input_is_refused_with_the_row_named():
    cfg = EvaluationConfig(metrics=["rouge_l"])
    row = qa("q1", "x")
    del row["reference"]
    with pytest.raises(ValueError, match=r"row 0 \(q1\) lacks reference"):
        score_answers(cfg, [row], judge=None, store=None, ledger=None, cycle=1, stage="baseline")
    with pytest.raises(ValueError, match="stage 'after'"):
        score_answers(cfg, [qa("q1", "x")], judge=None, store=None, ledger=None, cycle=1, stage="after")
    with pytest.raises(ValueError, match=r"\['answer_relevancy'\] need a judge endpoint"):
        score_answers(EvaluationConfig(), [qa("q1", "x")], judge=None, store=None, ledger=None,
                      cycle=1, stage="baseline")
    assert score_answers(cfg, [], judge=None, store=None, ledger=None, cycle=1, stage="baseline") == []


@pytest.mark.slow
def test_kdflow_turns_ragas_analytics_off_even_when_set_to_1():
    """ragas only honours exactly "true"; a process that evaluates must end up with it."""
    env = {k: v for k, v in os.environ.items() if k != "RAGAS_DO_NOT_TRACK"} | {"RAGAS_DO_NOT_TRACK": "1"}
    code = (
        "from kdflow.evaluation.judge import ragas_environment; ragas_environment()\n"
        "from ragas._analytics import do_not_track; import os\n"
        "print(do_not_track(), os.environ['RAGAS_DO_NOT_TRACK'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[-2:] == ["True", "true"]


def score_one(name: str, scorer, row: dict) -> tuple[float | None, str | None]:
    """One (metric, row) through the conversion every score goes through."""
    import asyncio

    from kdflow.evaluation.metrics import _score_metric

    return asyncio.run(_score_metric(name, scorer, row, asyncio.Semaphore(1)))


def test_nan_and_metric_errors_become_recorded_failures():
    """NaN and exceptions are data, an empty answer is 0."""

    async def nan(_row):
        return float("nan")

    async def unparsable(_row):
        raise RuntimeError("judge said\nnothing useful")

    assert score_one("rouge_l", nan, qa("q", "an answer")) == (None, "metric returned nan (judge output unusable)")
    assert score_one("answer_relevancy", unparsable, qa("q", "an answer")) == (
        None, "RuntimeError: judge said nothing useful")
    assert score_one("answer_relevancy", unparsable, qa("q", "   ")) == (0.0, None)  # nothing said: 0, no judge call


def test_a_reference_dropped_by_the_gate_is_not_scored_against_but_relevancy_still_is():
    from kdflow.evaluation.metrics import REFERENCE_METRICS

    reason = "no passage sentence answers the question (best cosine 0.12 < 0.35)"
    dropped = qa("dropped", REFERENCE) | {"reference_dropped": reason}
    asked = []

    async def scorer(row):
        asked.append(row["question_id"])
        return 0.8

    why = f"reference dropped by the quality gate: {reason}"
    assert {name: score_one(name, scorer, dropped)
            for name in REFERENCE_METRICS} == dict.fromkeys(REFERENCE_METRICS, (None, why))
    assert asked == []  # never compared with the dropped reference, not even by the judge
    assert score_one("answer_relevancy", scorer, dropped) == (0.8, None) and asked == ["dropped"]
    # through score_answers (metrics without a model): the answer repeats the reference, yet only the kept row scores
    cfg = EvaluationConfig(metrics=["rouge_l", "bleu"])
    rows = [qa("kept", REFERENCE), dropped]
    kept, excluded = score_answers(cfg, rows, judge=None, store=None, ledger=None, cycle=1, stage="baseline")
    assert kept.failures == {} and kept.scores["rouge_l"] == pytest.approx(1.0)
    assert excluded.scores == {"rouge_l": None, "bleu": None} and excluded.failures == {"rouge_l": why, "bleu": why}
