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
    return {"question_id": qid, "topic": "pods", "split": split, "question": "What is a Pod in Kubernetes?", "answer": answer,
            "reference": reference}  # fmt: skip


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
        score_answers(EvaluationConfig(), [qa("q1", "x")], judge=None, store=None, ledger=None, cycle=1, stage="baseline")
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


def test_nan_and_metric_errors_become_recorded_failures():
    """The conversion every score goes through: NaN and exceptions are data, an empty answer is 0."""
    import asyncio

    from kdflow.evaluation.metrics import _score_metric

    async def nan(_row):
        return float("nan")

    async def unparsable(_row):
        raise RuntimeError("judge said\nnothing useful")

    async def run(name, scorer, row):
        return await _score_metric(name, scorer, row, asyncio.Semaphore(1))

    assert asyncio.run(run("rouge_l", nan, qa("q", "an answer"))) == (None, "metric returned nan (judge output unusable)")
    assert asyncio.run(run("answer_relevancy", unparsable, qa("q", "an answer"))) == (None, "RuntimeError: judge said nothing useful")
    assert asyncio.run(run("answer_relevancy", unparsable, qa("q", "   "))) == (0.0, None)  # nothing said: 0, no judge call
