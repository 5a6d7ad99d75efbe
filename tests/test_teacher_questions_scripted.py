"""Question generation against a scripted local teacher (issues #3 and #10): a badly formed
question is rejected and asked for again, the judge's "not answerable" rejects a question the
embedding floor would keep, and questions already in the store (an earlier run, through the
pipeline steps; the CLI) are never asked again. Everything the teacher sends is a real HTTP
reply from :class:`ScriptedServer`; the gate, the cache and the pipeline steps are the real ones."""

from __future__ import annotations

import argparse
import json

import pytest

from fixtures_llm import ScriptedServer, chat_completion_body
from kdflow.config import GateConfig, load_config
from kdflow.kb import load_knowledge_base
from kdflow.llm import Endpoint, UsageLedger, make_client
from kdflow.records import Question
from kdflow.store import ArtifactStore
from kdflow.teacher import TeacherError, generate_questions
from kdflow.teacher.gate import DuplicateIndex, check_question

PASSAGE = (
    "The restartPolicy field of a Pod applies to all its containers. Possible values are Always, OnFailure "
    "and Never; the default is Always. The kubelet restarts failed containers with an exponential back-off delay."
)
BAD_FORM = "What does the kubelet do with failed containers. It restarts them with a back-off delay. Why?"
GOOD = "How does the kubelet delay restarts of failed containers?"
# Shares the passage's words (the embedding floor keeps it) but asks for a number it never gives.
UNANSWERABLE = "How many seconds is the back-off delay before the kubelet restarts a failed container?"
OLD = "What is the default restartPolicy of a Pod?"


def draft(question: str) -> str:
    return json.dumps({"question": question})


@pytest.fixture()
def kb_path(tmp_path):
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "pods.md").write_text(f"# Pods\n\n## Restart policy\n\n{PASSAGE}\n")
    return tmp_path / "kb"


def ask(server: ScriptedServer, kb_path, tmp_path, n: int = 1, **teacher: object) -> list[Question]:
    cfg = load_config({"teacher": teacher}, environ={}).teacher
    endpoint = Endpoint(server.url, "fake-model", "sk-test", "json_object_schema")
    client = make_client(endpoint, ArtifactStore(str(tmp_path / "store")), UsageLedger(),
                         task="questions", max_retries=0)
    return generate_questions(client, endpoint, cfg, load_knowledge_base(str(kb_path)), "pods", n,
                              existing=[], seed=3, cycle=1)


def test_a_badly_formed_question_is_rejected_asked_again_and_recorded(kb_path, tmp_path):
    with ScriptedServer(draft(BAD_FORM), draft(GOOD)) as server:
        [question] = ask(server, kb_path, tmp_path)
    assert question.question == GOOD and len(server.bodies) == 2
    assert server.bodies[0]["seed"] != server.bodies[1]["seed"]  # a new request, not a cache replay
    gate = question.gate
    assert gate["decision"] == "kept" and gate["attempts"] == 2 and "judge" not in gate
    [rejected] = gate["rejected"]
    assert rejected["question"] == BAD_FORM and rejected["passage_id"] == question.passage_ids[0]
    assert rejected["reason"].startswith("more than one sentence")


def test_a_reply_cut_at_max_tokens_is_a_rejected_attempt_and_the_next_draw_is_asked(kb_path, tmp_path):
    """A tiny teacher can loop until max_tokens on one draw; that draw is unusable (not asked again under
    the same budget), but the step goes on with the next draw instead of failing."""
    looping = chat_completion_body('{"question": "What is a Pod a Pod a Pod a Pod', finish_reason="length")
    with ScriptedServer(looping, draft(GOOD)) as server:
        [question] = ask(server, kb_path, tmp_path)
    assert question.question == GOOD and len(server.bodies) == 2  # the cut draft was not asked again as is
    assert server.bodies[0]["seed"] != server.bodies[1]["seed"]
    assert question.gate["decision"] == "kept" and question.gate["attempts"] == 2
    [rejected] = question.gate["rejected"]
    assert rejected["question"] is None and rejected["passage_id"] == question.passage_ids[0]
    assert "reply cut at" in rejected["reason"] and "not asked again" in rejected["reason"]
    # the stored reason does not name the endpoint's address: a rerun against a server on another port
    # (the embedded teacher gets a new one each time) must write the same checkpoint
    assert "127.0.0.1" not in json.dumps(question.gate)


def test_the_attempt_bound_ends_in_a_clear_error(kb_path, tmp_path):
    with ScriptedServer(draft(BAD_FORM)) as server:
        with pytest.raises(
            TeacherError, match=r"topic 'pods' looks exhausted: .* after 2 attempts \(last rejection: more than one"
        ):
            ask(server, kb_path, tmp_path, max_attempts_per_question=2)
    assert len(server.bodies) == 2


def _by_seed(body: dict) -> str:
    """A reply that depends only on the request (its seed), whatever order the requests arrive in;
    seeds divisible by 3 draw a badly formed question, so some slots need a second round."""
    import time

    time.sleep(0.2)  # long enough for concurrent requests to overlap
    seed = body["seed"]
    return draft(BAD_FORM if seed % 3 == 0 else f"How does the kubelet restart failed container number {seed}?")


def test_open_slots_are_drafted_side_by_side_and_the_questions_do_not_depend_on_it(kb_path, tmp_path):
    """Concurrency 4 sends the drafts of four slots at once (llama-server decodes them together) and
    keeps exactly the questions, attempts and rejections that one call at a time keeps."""
    runs = {}
    for concurrency in (1, 4):
        with ScriptedServer(_by_seed) as server:
            questions = ask(server, kb_path, tmp_path / f"c{concurrency}", n=4, concurrency=concurrency,
                            dedup_similarity=0.999)
        runs[concurrency] = ([q.model_dump() for q in questions], sorted(b["seed"] for b in server.bodies),
                             server.max_in_flight)
    (one_questions, one_seeds, one_peak), (four_questions, four_seeds, four_peak) = runs[1], runs[4]
    assert one_peak == 1 and four_peak >= 2
    assert four_questions == one_questions and four_seeds == one_seeds
    assert len(one_questions) == 4 and len({q["question"] for q in one_questions}) == 4


def test_several_questions_per_passage_each_ask_about_another_of_its_sentences(kb_path, tmp_path):
    """teacher.questions_per_passage=2 on a one-passage topic: both slots read the same passage, the
    first points the teacher at its first sentence, the second at its second; the default sends the
    plain prompt with no sentence named."""
    first, second = "What values can the restartPolicy field of a Pod take?", GOOD
    with ScriptedServer(lambda body: draft(first if "applies to all" in body["messages"][-1]["content"]
                                           .split("answers:")[-1] else second)) as server:
        questions = ask(server, kb_path, tmp_path, n=2, questions_per_passage=2)
    assert [q.question for q in questions] == [first, second]
    assert len({q.passage_ids[0] for q in questions}) == 1
    prompts = sorted(b["messages"][-1]["content"] for b in server.bodies)
    assert len(prompts) == 2 and all(PASSAGE in p for p in prompts)
    assert {p.split("answers: ")[1].split("\n")[0] for p in prompts} == {
        '"The restartPolicy field of a Pod applies to all its containers."',
        '"Possible values are Always, OnFailure and Never; the default is Always."'}
    with ScriptedServer(draft(GOOD)) as server:
        ask(server, kb_path, tmp_path / "plain", n=1)
    assert "answers:" not in server.bodies[0]["messages"][-1]["content"]


def test_the_judge_rejects_a_question_its_passage_does_not_answer(kb_path, tmp_path):
    kb = load_knowledge_base(str(kb_path))
    assert check_question(GateConfig(), UNANSWERABLE, kb.passages[0],
                          DuplicateIndex([], threshold=0.92)).ok  # floor alone keeps it
    no = {"answerable": False, "reason": "The passage does not say how long the delay is."}
    yes = {"answerable": True, "reason": "The passage says the delay is an exponential back-off."}
    with ScriptedServer(draft(UNANSWERABLE), json.dumps(no), draft(GOOD), json.dumps(yes)) as server:
        [question] = ask(server, kb_path, tmp_path, gate={"llm_check": True})
    assert question.question == GOOD and len(server.bodies) == 4
    judge_request = server.bodies[1]
    assert judge_request["temperature"] == 0.0
    assert set(judge_request["response_format"]["schema"]["properties"]) == {"answerable", "reason"}
    judge_prompt = judge_request["messages"][-1]["content"]
    assert PASSAGE in judge_prompt and UNANSWERABLE in judge_prompt
    [rejected] = question.gate["rejected"]
    assert rejected["reason"] == f"not answerable from its passage (judge: {no['reason']})"
    assert rejected["judge"] == no and rejected["scores"]["passage_similarity"] >= GateConfig().passage_floor
    assert question.gate["judge"] == yes and question.gate["attempts"] == 2


def test_the_judge_is_not_asked_about_a_question_the_cheap_checks_reject(kb_path, tmp_path):
    yes = json.dumps({"answerable": True, "reason": "It says so."})
    with ScriptedServer(draft(BAD_FORM), draft(GOOD), yes) as server:
        [question] = ask(server, kb_path, tmp_path, gate={"llm_check": True})
    assert len(server.bodies) == 3 and "answerable" not in json.dumps(server.bodies[1])
    assert (
        question.gate["rejected"][0]["reason"].startswith("more than one sentence")
        and "judge" not in question.gate["rejected"][0]
    )


def _config(server: ScriptedServer, kb_path, tmp_path, monkeypatch):
    monkeypatch.setenv("KDFLOW_TEST_KEY", "sk-test")
    return load_config({
        "store": {"url": str(tmp_path / "store")},
        "knowledge_base": {"path": str(kb_path)},
        "pipeline": {"topics": ["pods"], "questions_per_cycle": 1, "cycles": 1},
        "tracking": {"mlflow_uri": None},  # not under test here (an MLflow database per store costs seconds)
        "teacher": {"provider": "openai", "base_url": server.url, "model": "fake-model",
                    "api_key_env": "KDFLOW_TEST_KEY", "structured_output": "json_object_schema", "max_retries": 0},
    }, environ={})


def _question_runs(config, run_ids, cycle: int = 1) -> dict[str, list[Question]]:
    """Cycle ``cycle``'s questions of each run in ``run_ids``, one after the other in one store, through the
    pipeline's steps (the cycle's start record pins the question bank, as in a DAG run)."""
    from kdflow.pipeline import execute
    from kdflow.pipeline.context import RunContext

    store, runs = ArtifactStore.from_config(config), {}
    for run_id in run_ids:
        ctx = RunContext(config=config, store=store, run_id=run_id)
        execute("cycle_start", run_id=run_id, config=config, cycle=cycle)
        staged = execute("generate_questions", run_id=run_id, config=config, cycle=cycle)
        execute("save_questions", run_id=run_id, config=config, cycle=cycle, inputs={"generate_questions": staged})
        runs[run_id] = [Question.model_validate(r) for r in ctx.rows(ctx.checkpoint(cycle, "questions.jsonl"))]
    return runs


def test_a_question_of_an_earlier_run_is_a_duplicate_in_a_new_run(kb_path, tmp_path, monkeypatch):
    """Two runs in one store through the pipeline steps. The teacher writes run A's question again for run
    B (a new request: run B's draws differ, the store holds a question more); the bank from run A's
    checkpoint rejects it and run B asks once more."""
    from kdflow.pipeline.artifacts import start_record
    from kdflow.pipeline.context import RunContext

    with ScriptedServer(draft(OLD), draft(OLD), draft(GOOD)) as server:
        config = _config(server, kb_path, tmp_path, monkeypatch)
        runs = _question_runs(config, ("run-a", "run-b"))
    assert [q.question for q in runs["run-a"]] == [OLD]
    store = ArtifactStore.from_config(config)
    assert start_record(RunContext(config=config, store=store, run_id="run-b"), 1)["question_bank"] == [OLD]
    [new] = runs["run-b"]
    assert new.question == GOOD
    assert [(r["question"], r["reason"])
            for r in new.gate["rejected"]] == [(OLD, "exact duplicate of an earlier question")]
    assert len({body["seed"] for body in server.bodies}) == len(server.bodies) == 3  # nothing replayed


def test_nightly_runs_with_one_config_keep_finding_new_questions(kb_path, tmp_path, monkeypatch):
    """A schedule runs the same config every night into one store. Each run asks with draws of its own, so
    an endpoint that answers a request the same way every time (a cache, a deterministic model) still gives
    every night a new question: more runs than attempts per question, and none is called exhausted. A
    rerun of a cycle sends the same requests again (served from the cache)."""
    pool = ["What values can the restartPolicy field of a Pod take?",
            "Which restartPolicy does a Pod get when none is set?",
            "How does the kubelet delay restarts of failed containers?",
            "Does the restartPolicy of a Pod apply to each of its containers?",
            "What does the Never restart policy mean for a failed container?",
            "When does the OnFailure policy restart a container?"]
    seeds: list[int] = []

    def by_seed(body: dict) -> str:  # the same request, the same reply; a new one, the next question
        if body["seed"] not in seeds:
            seeds.append(body["seed"])
        return draft(pool[seeds.index(body["seed"]) % len(pool)])

    with ScriptedServer(by_seed) as server:
        config = _config(server, kb_path, tmp_path, monkeypatch)
        config = config.model_copy(update={"teacher": config.teacher.model_copy(
            update={"max_attempts_per_question": 2})})
        nights = [f"scheduled-{night}" for night in range(5)]
        runs = _question_runs(config, nights)
        asked = len(server.bodies)
        rerun = _question_runs(config, nights[-1:])
    texts = [q.question for night in nights for q in runs[night]]
    assert len(texts) == len(set(texts)) == 5
    assert all(q.gate["attempts"] == 1 for night in nights for q in runs[night])
    assert rerun[nights[-1]] == runs[nights[-1]] and len(server.bodies) == asked


def test_cli_questions_skip_questions_already_in_the_store(kb_path, tmp_path, monkeypatch, capsys):
    from kdflow.teacher.cli import register

    with ScriptedServer(draft(OLD), draft(GOOD)) as server:
        config = _config(server, kb_path, tmp_path, monkeypatch)
        earlier = Question(id="pods-old", topic="pods", question=OLD.upper(),
                           passage_ids=["pods/pods#restart-policy-0"], cycle=1)
        ArtifactStore.from_config(config).write_jsonl("runs/some-earlier-run/cycle_1/questions.jsonl", [earlier])
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["teacher", "questions", "--topic", "pods", "-n", "1"])
        assert args.func(args, config) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["question"] == GOOD and row["gate"]["rejected"][0]["reason"] == "exact duplicate of an earlier question"
    assert len(server.bodies) == 2


def test_the_held_out_set_is_made_once_per_store_and_reused_by_later_runs(kb_path, tmp_path, monkeypatch):
    """Run A asks the teacher for the held-out question; run B (another run id, same store and
    knowledge base) publishes the same set without a single request, so every run is measured on
    the same held-out questions, and cycle questions never repeat them."""
    from kdflow.bank import held_out_key, question_bank
    from kdflow.pipeline.artifacts import kb_hash
    from kdflow.pipeline.context import RunContext
    from kdflow.pipeline.teacher_steps import prepare_held_out_questions

    with ScriptedServer(draft(OLD)) as server:
        config = _config(server, kb_path, tmp_path, monkeypatch).model_copy(deep=True)
        config.pipeline.held_out_per_topic = 1
        config.evaluation.gold_path = None  # a knowledge base of its own: the shipped gold set is for the shipped KB
        store = ArtifactStore.from_config(config)
        published = {}
        for run_id in ("nightly-a", "nightly-b"):
            ctx = RunContext(config=config, store=store, run_id=run_id)
            published[run_id] = [Question.model_validate(r) for r in ctx.rows(prepare_held_out_questions(ctx, None))]
            if run_id == "nightly-a":
                assert len(server.bodies) == 1
    assert len(server.bodies) == 1  # run B sent the teacher nothing
    assert published["nightly-a"] == published["nightly-b"]
    [held_out] = published["nightly-b"]
    assert held_out.question == OLD and held_out.split == "held_out"
    assert len(store.read_jsonl(held_out_key(kb_hash(ctx)))) == 1  # one store-wide set, not one per run
    assert OLD in question_bank(store, kb_hash(ctx), run_id=ctx.run_id, before_cycle=1)
