"""Issue 22 under the real scheduler and triggerer: teacher calls through the (fake) Batch API.

The native Celery topology of tests/fixtures_deploy.py plus a triggerer, the default worker started
with ``teacher.batch: on`` against :class:`fixtures_batch.FakeBatchServer` (no batch ends until the
test has cleared the waiting question task, then each ends ``BATCH_DELAY_S`` after it was created).
One pipeline run, triggered through the REST API: the teacher tasks are deferred while their batch
runs; a waiting task whose triggerer was killed and which was cleared waits for the same batch again
(no second submission); the run then succeeds, and its question and reference checkpoints are the
ones the synchronous path writes on the same scripted replies (the two steps run again in-process,
synchronously, on a copy of the run's inputs).
"""

from __future__ import annotations

import signal
import time

import pytest

from fixtures_batch import FakeBatchServer, kb_teacher_reply
from fixtures_deploy import DAG_ID
from kdflow.store import ArtifactStore, run_key

pytestmark = pytest.mark.slow

BATCH_DELAY_S = 30
BATCH_ENV = {"KDFLOW__TEACHER__BATCH": "on", "KDFLOW__TEACHER__BATCH_POLL_S": "2", "OPENAI_API_KEY": "sk-fake"}
QUESTIONS, REFERENCES = "cycle_1.generate_questions", "cycle_1.generate_reference_answers"


@pytest.fixture(scope="module")
def batch_topology(airflow_topology):
    topo = airflow_topology
    fake = FakeBatchServer(kb_teacher_reply, delay_s=3600).__enter__()  # no batch ends until the test says so
    topo.start("triggerer", "triggerer", "--skip-serve-logs", extra_env=BATCH_ENV)
    topo.kill("worker-default", signal.SIGTERM)
    topo.restart("worker-default", extra_env=BATCH_ENV)
    try:
        yield topo, fake
    finally:
        topo.kill("worker-default", signal.SIGTERM)
        topo.restart("worker-default")
        topo.kill("triggerer", signal.SIGTERM)
        del topo.processes["triggerer"]
        fake.__exit__()


def _task(topo, api, run_id: str, task_id: str) -> dict:
    return {ti["task_id"]: ti for ti in topo.task_instances(api, run_id)}[task_id]


def _wait_for_task(topo, api, run_id: str, task_id: str, state: str, *, after_try: int = 0,
                   timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ti = _task(topo, api, run_id, task_id)
        if ti["state"] == state and ti["try_number"] > after_try:
            return ti
        topo.assert_alive()
        time.sleep(1)
    raise TimeoutError(f"{task_id} not {state} after {timeout}s: {ti['state']}; logs in {topo.home / 'logs'}")


def _copy_run(topo, run_id: str, store: ArtifactStore) -> None:
    """The run's objects (manifest, checkpoints) from the bucket into a local store, at the same keys."""
    prefix = f"{topo.store_prefix}/{run_key(run_id)}/"
    for key in topo.s3_keys(prefix):
        body = topo.s3().get_object(Bucket=topo.bucket, Key=key)["Body"].read()
        store.write_bytes(key[len(topo.store_prefix) + 1:], body)


def test_teacher_tasks_wait_in_the_triggerer_resume_their_batch_and_match_the_synchronous_run(
        batch_topology, tmp_path, monkeypatch):
    topo, fake = batch_topology
    conf = {"topics": ["pods"], "cycles": 1, "questions_per_cycle": 1, "held_out_per_topic": 0,
            "teacher_provider": "openai", "teacher_base_url": fake.url, "teacher_model": "fake-model"}
    with topo.client() as api:
        api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        run_id = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}
                          ).raise_for_status().json()["dag_run_id"]
        # 1. the question task waits for its batch in the triggerer, holding no worker
        waiting = _wait_for_task(topo, api, run_id, QUESTIONS, "deferred")
        [first_batch] = list(fake.batches)
        # 2. the triggerer dies and the waiting task is cleared: it waits for the same batch again
        topo.kill("triggerer")
        api.post(f"/dags/{DAG_ID}/clearTaskInstances", json={
            "dry_run": False, "dag_run_id": run_id, "task_ids": [QUESTIONS], "include_downstream": False,
            "only_failed": False, "reset_dag_runs": True}).raise_for_status()
        topo.restart("triggerer")
        _wait_for_task(topo, api, run_id, QUESTIONS, "deferred", after_try=waiting["try_number"])
        assert list(fake.batches) == [first_batch]
        # 3. batches now end BATCH_DELAY_S after they were sent (the first at once): the reference task
        # is deferred on its own batch in turn, and the run completes
        fake.delay_s = BATCH_DELAY_S
        _wait_for_task(topo, api, run_id, REFERENCES, "deferred")
        run = topo.wait_for_run(api, run_id, timeout=900)
        tis = {ti["task_id"]: ti for ti in topo.task_instances(api, run_id)}
    assert run["state"] == "success", {t: ti["state"] for t, ti in tis.items() if ti["state"] != "success"}
    assert fake.submitted() == [1, 1] and fake.chat_requests == []  # one question, one reference: two batches
    assert fake.batches[first_batch]["metadata"]["kdflow_step"].endswith("/cycle_1/generate_questions")

    # 4. the same two steps, synchronously against the same replies, on a copy of the run's inputs
    from kdflow.pipeline import execute
    from kdflow.pipeline.params import params_to_overrides

    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    local = ArtifactStore(str(tmp_path / "sync"))
    _copy_run(topo, run_id, local)
    overrides = params_to_overrides(conf)
    overrides["store"] = {"url": str(tmp_path / "sync")}
    overrides["teacher"]["batch"] = "off"
    published = {name: local.read_jsonl(local.checkpoint_pointer(run_id, f"cycle_1.{name}"))
                 for name in ("questions", "references")}
    questions = execute("generate_questions", run_id=run_id, overrides=overrides, cycle=1)
    assert local.read_jsonl(questions) == published["questions"]
    inputs = {"generate_questions": questions}
    references = execute("generate_reference_answers", run_id=run_id, overrides=overrides, cycle=1, inputs=inputs)
    assert local.read_jsonl(references) == published["references"]
    assert len(fake.chat_requests) == 2  # the synchronous path asked the fake's completions endpoint itself
