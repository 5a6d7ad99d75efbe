"""Answer relevancy through the real local judge: the embedded llama.cpp server (SmolLM2-135M),
cached in a real store. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from kdflow.config import load_config
from kdflow.evaluation.metrics import score_answers
from kdflow.llm import UsageLedger
from kdflow.store import ArtifactStore

pytestmark = pytest.mark.slow

ROWS = [
    {"question_id": "pods-good", "topic": "pods", "split": "train", "question": "What is a Pod in Kubernetes?",
     "answer": "A Pod is the smallest deployable unit in Kubernetes. It groups one or more containers that share "
               "storage and network.",
     "reference": "A Pod is the smallest deployable unit of computing in Kubernetes."},
    {"question_id": "storage-off", "topic": "storage", "split": "held_out", "question": "What is a PersistentVolume?",
     "answer": "Bananas are yellow fruits that grow in tropical countries.",
     "reference": "A PersistentVolume is a piece of storage in the cluster provisioned by an administrator."},
]


@pytest.fixture()
def judge():
    """A fresh embedded llama-server (it starts in about a second) is the judge: a 135M judge sampling
    at temperature 0.7 draws differently once other tests' prompts sit in its slots' caches, and these
    tests assert what it says."""
    from kdflow.llm import teacher_endpoint

    with teacher_endpoint(load_config(environ={}).teacher) as endpoint:
        yield endpoint


@pytest.fixture()
def outbound(monkeypatch):
    """Every address a socket connects to while the test runs."""
    seen: list = []
    for name in ("connect", "connect_ex"):
        original = getattr(socket.socket, name)

        def record(sock, address, _original=original):
            seen.append(address)
            return _original(sock, address)

        monkeypatch.setattr(socket.socket, name, record)
    return seen


def _loopback(address) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX path
        return True
    return ipaddress.ip_address(address[0]).is_loopback


def test_answer_relevancy_through_the_cached_judge_stays_on_loopback(judge, tmp_path, outbound):
    cfg = load_config({"evaluation": {"metrics": ["answer_relevancy", "rouge_l"], "relevancy_strictness": 2,
                                      "judge_concurrency": 1}})
    store, ledger = ArtifactStore(str(tmp_path)), UsageLedger.from_config(cfg.teacher)

    first = score_answers(cfg.evaluation, ROWS, judge=judge, store=store, ledger=ledger, cycle=1, stage="baseline")
    good, off = first
    assert good.failures == {} and off.failures == {}, (good.failures, off.failures)
    assert good.scores["answer_relevancy"] > 0.4 > off.scores["answer_relevancy"]
    judge_use = ledger.tasks["judge"]
    assert judge_use.calls == 4 and judge_use.cache_hits == 0 and judge_use.completion_tokens > 0

    # The endpoint's JSON dialect, the configured temperature and one seed per draw reached the server.
    requests = [store.read_json(k)["request"] for k in store.list_keys("cache/llm")]
    assert len(requests) == 4
    assert all(r["response_format"]["type"] == "json_object"
               and "question" in r["response_format"]["schema"]["properties"]
               for r in requests)
    assert {r["temperature"] for r in requests} == {0.7} and sorted(r["seed"] for r in requests) == [0, 0, 1, 1]

    again = score_answers(cfg.evaluation, ROWS, judge=judge, store=store, ledger=ledger, cycle=1, stage="baseline")
    assert [r.scores for r in again] == [r.scores for r in first]
    assert ledger.tasks["judge"].calls == 4 and ledger.tasks["judge"].cache_hits == 4

    assert outbound, "the judge was never contacted"
    assert [a for a in outbound if not _loopback(a)] == []


def test_unparsable_judge_output_is_recorded_not_raised(judge, tmp_path):
    """8 tokens cannot hold the judge's JSON: the row fails with a reason, the other metric still scores."""
    cfg = load_config({"evaluation": {"metrics": ["answer_relevancy", "rouge_l"], "relevancy_strictness": 1,
                                      "judge_max_tokens": 8, "judge_max_retries": 0}})
    store, ledger = ArtifactStore(str(tmp_path)), UsageLedger.from_config(cfg.teacher)
    (row,) = score_answers(cfg.evaluation, ROWS[:1], judge=judge, store=store, ledger=ledger,
                           cycle=1, stage="finetuned")
    assert row.scores["answer_relevancy"] is None
    assert "answer_relevancy" in row.failures and "\n" not in row.failures["answer_relevancy"]
    assert row.scores["rouge_l"] > 0.3 and "rouge_l" not in row.failures
