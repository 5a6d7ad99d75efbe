"""The teacher against the real embedded llama.cpp server (one per session, see fixtures_llm):
grounded, de-duplicated questions; the judge's answerability check; references with their
passages; the cache (zero calls on a rerun); token accounting; timeouts; the async judge client;
the CLI."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from kdflow.config import load_config
from kdflow.kb import load_knowledge_base
from kdflow.llm import Endpoint, LLMError, UsageLedger, make_client
from kdflow.llm.server import free_port
from kdflow.retrieval import Retriever
from kdflow.store import ArtifactStore
from kdflow.teacher import TeacherError, generate_questions, generate_references
from kdflow.teacher.gate import normalise

pytestmark = pytest.mark.slow

CFG = load_config(environ={}).teacher


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ArtifactStore(str(tmp_path_factory.mktemp("teacher-store")))


@pytest.fixture(scope="module")
def first_run(embedded_endpoint, kb, store):
    ledger = UsageLedger.from_config(CFG)
    client = make_client(embedded_endpoint, store, ledger, task="questions")
    questions = generate_questions(client, embedded_endpoint, CFG, kb, "pods", 2, existing=[], seed=7, cycle=1)
    return questions, ledger


def test_questions_are_grounded_new_and_counted(first_run, kb, store):
    questions, ledger = first_run
    assert len(questions) == 2
    assert len({normalise(q.question) for q in questions}) == 2
    for q in questions:
        assert q.question.endswith("?") and q.topic == "pods" and q.cycle == 1 and q.split == "train"
        assert [kb.by_id(pid).topic for pid in q.passage_ids] == ["pods"]
        assert q.gate["decision"] == "kept" and q.gate["scores"]["passage_similarity"] >= 0.3
    usage = ledger.as_dict()["tasks"]["questions"]
    assert usage["calls"] >= 2 and usage["prompt_tokens"] > 100 and usage["completion_tokens"] > 5
    assert usage["cost_usd"] == 0  # a local endpoint: no provider bills it
    assert len(store.list_keys("cache/llm")) == usage["calls"]


def test_rerun_is_served_from_the_cache_with_zero_calls(first_run, embedded_endpoint, kb, store):
    questions, first_ledger = first_run
    ledger = UsageLedger.from_config(CFG)
    client = make_client(embedded_endpoint, store, ledger, task="questions")
    again = generate_questions(client, embedded_endpoint, CFG, kb, "pods", 2, existing=[], seed=7, cycle=1)
    assert again == questions
    assert ledger.as_dict()["tasks"]["questions"]["calls"] == 0
    assert ledger.as_dict()["tasks"]["questions"]["cache_hits"] == first_ledger.as_dict()["tasks"]["questions"]["calls"]


def test_earlier_questions_are_rejected_as_duplicates(first_run, embedded_endpoint, kb, store):
    questions, _ = first_run
    ledger = UsageLedger.from_config(CFG)
    client = make_client(embedded_endpoint, store, ledger, task="questions")
    # same seed and bank size (as in a rerun of the cycle, whose start record pins the bank): the first draw
    # replays the cached first question, which now counts as an earlier one
    new = generate_questions(client, embedded_endpoint, CFG, kb, "pods", 1,
                             existing=[questions[0].question.upper()], seed=7, cycle=1, bank_size=0)
    assert normalise(new[0].question) != normalise(questions[0].question)
    assert new[0].gate["rejected"][0]["reason"] == "exact duplicate of an earlier question"


def test_exhausted_topic_is_a_clear_error(first_run, embedded_endpoint, kb, store):
    cfg = CFG.model_copy(update={"max_attempts_per_question": 1, "dedup_similarity": 0.01})
    client = make_client(embedded_endpoint, store, UsageLedger(), task="questions")
    with pytest.raises(TeacherError,
                       match=r"topic 'pods' looks exhausted: "
                             r"no new acceptable question for slot 1 of 1 after 1 attempts"):
        generate_questions(client, embedded_endpoint, cfg, kb, "pods", 1,
                           existing=[first_run[0][0].question], seed=7, cycle=1)


def test_judge_answerability_verdict_parses_and_replays_from_the_cache(first_run, embedded_endpoint, kb, tmp_path):
    """The question gate's LLM check (teacher.gate.llm_check) against the real server: the grammar-
    constrained reply parses (or the judge abstains on a reply cut at max_tokens), and a rerun is free."""
    from kdflow.teacher.gate import Answerability, llm_answerability

    question = first_run[0][0]
    ledger = UsageLedger.from_config(CFG)
    client = make_client(embedded_endpoint, ArtifactStore(str(tmp_path)), ledger, task="judge")
    judge = llm_answerability(client, embedded_endpoint)
    verdict = judge(question.question, kb.by_id(question.passage_ids[0]))
    assert verdict is None or isinstance(verdict, Answerability)
    calls = ledger.as_dict()["tasks"]["judge"]["calls"]
    assert calls >= 1 and judge(question.question, kb.by_id(question.passage_ids[0])) == verdict
    judge_usage = ledger.as_dict()["tasks"]["judge"]
    assert judge_usage["calls"] == calls and judge_usage["cache_hits"] == calls


def test_references_answer_from_saved_passages(first_run, embedded_endpoint, kb, store):
    questions, _ = first_run
    ledger = UsageLedger.from_config(CFG)
    client = make_client(embedded_endpoint, store, ledger, task="references")
    cfg = CFG.model_copy(update={"max_tokens": 160})  # keeps the test quick on 2 shared cores
    references = generate_references(client, embedded_endpoint, cfg, Retriever(kb, store), questions, top_k=3)
    assert [r.question_id for r in references] == [q.id for q in questions]
    for question, reference in zip(questions, references, strict=True):
        assert reference.reference.strip() and reference.gate["reason"]
        # default hybrid gate: the teacher's text survives only as kept / rewritten / regenerated
        assert (reference.mode == "abstractive") == (reference.gate["decision"] in {"kept", "rewritten", "regenerated"})
        assert len(reference.passages) == 3
        assert reference.passages[0] == {"id": question.passage_ids[0], "text": kb.by_id(question.passage_ids[0]).text}
    assert ledger.as_dict()["tasks"]["references"]["completion_tokens"] > 0


def test_partial_progress_survives_a_server_that_goes_down(first_run, embedded_endpoint, kb, store):
    """Slots already answered come from the cache; the first new call fails clearly; the cache is intact."""
    before = {key: store.read_bytes(key) for key in store.list_keys("cache/llm")}
    down = Endpoint(f"http://127.0.0.1:{free_port()}/v1", embedded_endpoint.model, "x",
                    embedded_endpoint.structured_output)
    ledger = UsageLedger()
    client = make_client(down, store, ledger, task="questions", max_retries=0)
    with pytest.raises(LLMError, match="cannot reach teacher endpoint"):
        generate_questions(client, down, CFG, kb, "pods", 3, existing=[], seed=7, cycle=1)
    assert ledger.as_dict()["tasks"]["questions"]["cache_hits"] >= 2
    assert {key: store.read_bytes(key) for key in store.list_keys("cache/llm")} == before
    assert all(json.loads(data)["response"]["choices"] for data in before.values())


def test_timeout_is_a_clear_error_and_caches_nothing(embedded_endpoint, kb, tmp_path):
    store = ArtifactStore(str(tmp_path))
    client = make_client(embedded_endpoint, store, UsageLedger(), task="questions", timeout_s=0.05, max_retries=0)
    with pytest.raises(LLMError, match="timed out"):
        generate_questions(client, embedded_endpoint, CFG, kb, "storage", 1, existing=[], seed=1, cycle=1)
    assert store.list_keys("cache") == []


def test_async_judge_client_shares_cache_and_accounting(embedded_endpoint, tmp_path):
    store = ArtifactStore(str(tmp_path))
    ledger = UsageLedger()
    client = make_client(embedded_endpoint, store, ledger, task="judge", async_client=True)

    async def ask() -> str:
        reply = await client.chat.completions.create(
            model=embedded_endpoint.model, messages=[{"role": "user", "content": "Name one Kubernetes object."}],
            max_tokens=12, temperature=0
        )
        return reply.choices[0].message.content

    first, second = asyncio.run(ask()), asyncio.run(ask())
    assert first == second
    assert ledger.as_dict()["tasks"]["judge"]["calls"] == 1 and ledger.as_dict()["tasks"]["judge"]["cache_hits"] == 1


def test_cli_prints_questions_as_json_lines(embedded_endpoint, tmp_path, monkeypatch, capsys):
    """The openai provider pointed at the running server: the path used for any OpenAI-compatible URL."""
    from kdflow.teacher.cli import register

    monkeypatch.setenv("KDFLOW_TEST_LOCAL_KEY", "sk-local")
    config = load_config({
        "store": {"url": str(tmp_path)},
        "teacher": {"provider": "openai", "base_url": embedded_endpoint.base_url, "model": embedded_endpoint.model,
                    "api_key_env": "KDFLOW_TEST_LOCAL_KEY", "structured_output": "json_object_schema"},
    }, environ={})
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["teacher", "questions", "--topic", "services", "-n", "2"])
    assert args.func(args, config) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and all(r["topic"] == "services" and r["passage_ids"] for r in rows)
    assert json.loads(err.strip().splitlines()[-1])["usage"]["calls"] >= 2
    assert "sk-local" not in out + err
