"""Bad input through the pipeline steps: each fails its task with one clear line naming the input,
and nothing already stored changes (only the failing task's usage record and the cached teacher
replies may be added: rejected replies stay cached so a rerun replays them instead of asking again).
Covered elsewhere: params and config (test_config.py, test_dag_integrity.py), the knowledge base
(test_kb.py), missing key / malformed JSON / wrong schema (test_llm_errors.py), NaN and unparsable
judge output (test_evaluation_metrics.py, test_evaluation_judge.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from fixtures_reliability import smallest_overrides, store_snapshot
from kdflow.llm.server import free_port
from kdflow.pipeline import execute
from kdflow.pipeline.context import RunContext
from kdflow.records import Question, Reference
from kdflow.store import ArtifactStore, StoreError

RUN = "manual__bad_input"


def _run(overrides, *steps: str, cycle: int | None = None) -> None:
    for step in steps:
        execute(step, run_id=RUN, overrides=overrides, cycle=cycle)


def _fails_and_changes_nothing(store: ArtifactStore, overrides, step: str, error: type[Exception], match: str,
                               cycle: int | None = None) -> str:
    """Run ``step``; it must raise ``error`` matching ``match`` in one line, and leave every stored
    object as it was (new keys: usage records and cached teacher replies only). Returns the message."""
    before = store_snapshot(store)
    with pytest.raises(error, match=match) as info:
        execute(step, run_id=RUN, overrides=overrides, cycle=cycle)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1200, message
    after = store_snapshot(store)
    assert {k: after.get(k) for k in before} == before, "an existing object changed"
    new = [k for k in after if k not in before and "/usage/" not in k and not k.startswith("cache/")]
    assert new == [], "unexpected new objects"
    return message


@pytest.fixture()
def openai_teacher(tmp_path, monkeypatch, fake_completion_server):
    """``start(content)`` -> overrides for a store in tmp_path whose teacher answers ``content``."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-bad-input")

    def start(content: str | None = None, base_url: str | None = None, **teacher) -> tuple[ArtifactStore, dict]:
        url = base_url or fake_completion_server(content=content)
        overrides = smallest_overrides(str(tmp_path / "store"), "unused", teacher={
            "provider": "openai", "base_url": url, "structured_output": "json_object", "max_retries": 0, **teacher})
        overrides["pipeline"]["held_out_per_topic"] = 0
        _run(overrides, "start_pipeline", "load_configuration")
        _run(overrides, "cycle_start", cycle=1)
        return ArtifactStore(str(tmp_path / "store")), overrides

    return start


def test_a_10000_character_question_fails_the_schema_and_is_not_kept(openai_teacher, fake_completion_server):
    huge = "What is " + "a pod and " * 1000 + "?"
    assert len(huge) > 10_000
    store, overrides = openai_teacher(json.dumps({"question": huge}), max_attempts_per_question=2)
    # Each draft is asked for 3 times (complete_json's own retries on invalid JSON); an unusable draft is a
    # rejected attempt like a duplicate, so the step asks again with the next draw and then gives up.
    message = _fails_and_changes_nothing(store, overrides, "generate_questions", Exception,
                                         r"topic 'pods' looks exhausted: no new acceptable question for slot 1 of 1 "
                                         r"after 2 attempts \(last rejection: unusable draft: no valid "
                                         r"QuestionDraft JSON after 3 attempts; last error: question: "
                                         r"String should match pattern",
                                         cycle=1)
    assert "a pod and a pod and" not in message  # the message names the field, not the 10 kB text
    assert not any(k.startswith("runs/") and "/usage/" not in k and "questions" in k for k in store_snapshot(store))
    # The 2 x 3 rejected replies stay cached: a rerun replays them and fails the same way without new calls.
    assert len(store.list_keys("cache")) == 6
    calls = fake_completion_server.server.requests
    with pytest.raises(Exception, match="unusable draft: no valid QuestionDraft JSON after 3 attempts"):
        execute("generate_questions", run_id=RUN, overrides=overrides, cycle=1)
    assert len(store.list_keys("cache")) == 6
    assert fake_completion_server.server.requests == calls == 6


def test_questions_that_are_all_duplicates_exhaust_the_topic(openai_teacher):
    same = json.dumps({"question": "What is a Pod in Kubernetes and what does it run?"})
    store, overrides = openai_teacher(same, max_attempts_per_question=2, gate={"passage_floor": 0.0})
    overrides["pipeline"]["questions_per_cycle"] = 2
    _fails_and_changes_nothing(store, overrides, "generate_questions", Exception,
                               r"topic 'pods' looks exhausted: no new acceptable question for slot 2 of 2 after 2 "
                               r"attempts "
                               r"\(last rejection: exact duplicate of an earlier question\)", cycle=1)


def test_an_unreachable_base_url_fails_with_the_url(openai_teacher):
    url = f"http://127.0.0.1:{free_port()}/v1"
    store, overrides = openai_teacher(base_url=url)
    _fails_and_changes_nothing(store, overrides, "generate_questions", Exception,
                               rf"cannot reach teacher endpoint gpt-4o-mini at {url}: ConnectError", cycle=1)


@pytest.mark.parametrize("model, match", [
    ("no-such-org/no-such-model", r"student model 'no-such-org/no-such-model' is not in the local Hugging Face cache"),
    ("./missing-folder", r"student model folder not found: ./missing-folder"),
    ("bad id with spaces",
     r"student model 'bad id with spaces' is neither a local model folder, a \.gguf file nor a hub id"),
])
def test_an_unknown_student_model_fails_the_load_step(tmp_path, monkeypatch, model, match):
    from kdflow.student.models import StudentModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = smallest_overrides(str(tmp_path / "store"), model)
    _run(overrides, "start_pipeline", "load_configuration")
    _run(overrides, "cycle_start", cycle=1)
    store = ArtifactStore(str(tmp_path / "store"))
    _fails_and_changes_nothing(store, overrides, "load_student_model", StudentModelError, match, cycle=1)


def _publish(ctx: RunContext, cycle: int, name: str, schema: str, rows) -> None:
    ctx.publish(cycle, name, ctx.stage_rows(cycle, name, rows), schema=schema)


def _question_and_reference(decision: str) -> tuple[Question, Reference]:
    q = Question(id="pods-1", topic="pods", question="What is a Pod?", passage_ids=["pods-p1"], cycle=1)
    r = Reference(question_id=q.id, question=q.question, reference="A Pod is the smallest deployable unit.",
                  passages=[{"id": "pods-p1", "text": "..."}], gate={"decision": decision, "reason": "unsupported"})
    return q, r


def test_a_dataset_with_zero_pairs_fails_before_training(tmp_path):
    from kdflow.pipeline.context import CheckpointError

    overrides = smallest_overrides(str(tmp_path / "store"), "unused")
    ctx = RunContext.create(RUN, overrides)
    question, reference = _question_and_reference("dropped")
    _publish(ctx, 1, "questions.jsonl", "questions", [question])
    _publish(ctx, 1, "references.jsonl", "references", [reference])
    _fails_and_changes_nothing(ctx.store, overrides, "prepare_training_dataset", CheckpointError,
                               r"cycle 1: the training dataset has zero pairs \(1 dropped by the gate, "
                               r"0 by a reviewer, 0 too close to an evaluation question\)", cycle=1)


def test_a_champion_adapter_from_another_base_model_is_refused(tmp_path, tiny_phi_dir, student_cfg, tiny_pairs):
    """The champion says it was trained from the configured student, but its adapter belongs to
    another base model (the folder was replaced): the load step refuses it."""
    from kdflow.pipeline.artifacts import champion_key
    from kdflow.student.device import DevicePlan
    from kdflow.student.models import StudentModelError
    from kdflow.student.train import train_adapter

    student = shutil.copytree(tiny_phi_dir, tmp_path / "student-b")
    train_adapter(student_cfg.model_copy(update={"epochs": 1}), tiny_phi_dir, tiny_pairs[:1], tmp_path / "adapter",
                  plan=DevicePlan.cpu(), seed=1)
    overrides = smallest_overrides(str(tmp_path / "store"), str(student))
    store = ArtifactStore(str(tmp_path / "store"))
    adapter = store.upload_dir(tmp_path / "adapter", "runs/older/cycle_1/adapter")
    store.write_json(champion_key(str(student)),
                     {"run_id": "older", "cycle": 1, "base_model": str(student), "adapter": adapter.to_xcom()})
    _run(overrides, "start_pipeline", "load_configuration")
    _run(overrides, "cycle_start", cycle=1)
    _fails_and_changes_nothing(store, overrides, "load_student_model", StudentModelError,
                               rf"adapter .* was trained on '{tiny_phi_dir}', not on the student '{student}'", cycle=1)


def test_a_store_url_naming_a_missing_airflow_connection_is_refused(tmp_path, monkeypatch):
    """Airflow would fall back to anonymous access to AWS itself; kdflow refuses before any work."""
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    overrides = {"store": {"url": "s3://no_such_conn@bucket/kdflow"}}
    with pytest.raises(StoreError,
                       match=r"names the Airflow connection 'no_such_conn', which is not defined "
                             r".*AIRFLOW_CONN_NO_SUCH_CONN"):
        execute("start_pipeline", run_id=RUN, overrides=overrides)
