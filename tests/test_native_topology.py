"""docker-compose's topology, natively: Celery with a default and a gpu worker, Postgres, Redis and
an S3 server; the DAG is driven only through the REST API v2, as a user or another service would.

Needs Postgres and Redis on 127.0.0.1 (scripts/services.sh). Fixture: tests/fixtures_deploy.py.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from fixtures_deploy import DAG_ID, WORKERS
from kdflow.pipeline.registry import ALL_STEPS
from kdflow.store import run_key

pytestmark = pytest.mark.slow

CONF = {"topics": ["pods"], "cycles": 1, "questions_per_cycle": 1, "held_out_per_topic": 0}
FAILED_ON_PURPOSE = "cycle_1.save_cycle_results"


def _step(task_id: str):
    return ALL_STEPS[task_id.rsplit(".", 1)[-1]]


def _ran(tis: list[dict]) -> list[dict]:
    """Task instances a worker executed (the scheduler marks downstream skips without running them)."""
    return [ti for ti in tis if ti["hostname"]]


def _manifest(topo, run_id: str) -> dict[str, str]:
    """checkpoint name -> sha256, read straight from the bucket."""
    s3, prefix = topo.s3(), f"{topo.store_prefix}/{run_key(run_id, 'manifest')}/"
    return {key[len(prefix):-5]: json.loads(s3.get_object(Bucket=topo.bucket, Key=key)["Body"].read())["sha256"]
            for key in topo.s3_keys(prefix)}


@pytest.fixture(scope="module")
def finished_run(airflow_topology):
    topo = airflow_topology
    with topo.client() as api:
        api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        started = time.monotonic()
        run = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": CONF}).raise_for_status().json()
        run = topo.wait_for_run(api, run["dag_run_id"], timeout=900)
        print(f"\n[native] run {run['dag_run_id']}: {run['state']} in {time.monotonic() - started:.0f}s")
        return topo, run, topo.task_instances(api, run["dag_run_id"])


def test_run_succeeds_with_conf(finished_run):
    topo, run, tis = finished_run
    failed = [ti["task_id"] for ti in tis if ti["state"] != "success" and ti["state"] != "skipped"]
    assert run["state"] == "success", f"failed tasks: {failed}; logs in {topo.home}"
    assert run["conf"] == CONF
    assert {ti["task_id"] for ti in tis if ti["state"] == "skipped" and ti["task_id"].startswith("cycle_1.")} == set()


def test_student_tasks_ran_on_gpu_worker_in_gpu_pool_and_the_rest_on_default(finished_run):
    _, _, tis = finished_run
    ran = _ran(tis)
    student = [ti for ti in ran if _step(ti["task_id"]).uses_student]
    others = [ti for ti in ran if not _step(ti["task_id"]).uses_student]
    assert len(student) == sum(s.uses_student for s in ALL_STEPS.values())  # every student step of cycle 1
    assert len(others) >= 20
    for ti in student:
        assert (ti["hostname"], ti["pool"], ti["queue"]) == (WORKERS["gpu"], "gpu", "gpu"), ti["task_id"]
    for ti in others:
        assert (ti["hostname"], ti["queue"]) == (WORKERS["default"], "default"), ti["task_id"]
        assert ti["pool"] == "default_pool", ti["task_id"]


def test_artifacts_are_in_the_bucket(finished_run):
    topo, run, _ = finished_run
    base = f"{topo.store_prefix}/{run_key(run['dag_run_id'])}"  # the run id, sanitised into a key segment
    keys = set(topo.s3_keys(f"{base}/"))
    for name in ("cycle_1/questions.jsonl", "cycle_1/baseline_answers.jsonl", "cycle_1/references.jsonl",
                 "cycle_1/adapter/_COMPLETE.json", "report/report.html", "manifest/cycle_1.questions.json"):
        assert any(k.startswith(f"{base}/{name}") for k in keys), f"{name} missing; bucket has {sorted(keys)[:40]}"


def test_xcom_values_are_pointers_to_the_bucket(finished_run):
    topo, run, tis = finished_run
    s3 = topo.s3()
    checked = 0
    with topo.client() as api:
        for ti in _ran(tis):
            if ti["state"] != "success":
                continue
            entry = api.get(f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/{ti['task_id']}/xcomEntries/return_value",
                            params={"deserialize": True}).raise_for_status().json()
            value = entry["value"] if isinstance(entry["value"], dict) else json.loads(entry["value"])
            assert len(json.dumps(value)) < 8192, f"{ti['task_id']} pushed data, not a pointer"
            if "sha256" not in value:
                continue
            assert value["url"].startswith(f"s3://minio@{topo.bucket}/"), value
            body = s3.get_object(Bucket=topo.bucket, Key=f"{topo.store_prefix}/{value['key']}")["Body"].read()
            if value["key"].endswith("/run.json"):  # the run record: pipeline_complete republishes it when the run ends
                continue
            assert hashlib.sha256(body).hexdigest() == value["sha256"], ti["task_id"]
            checked += 1
    assert checked >= 25


def test_failed_task_cleared_with_downstream_reruns_to_the_same_checkpoints(finished_run):
    topo, run, tis = finished_run
    run_id = run["dag_run_id"]
    before = _manifest(topo, run_id)
    tries = {ti["task_id"]: ti["try_number"] for ti in tis}
    with topo.client() as api:
        base = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
        api.patch(f"{base}/{FAILED_ON_PURPOSE}", json={"new_state": "failed"}).raise_for_status()
        assert api.get(f"{base}/{FAILED_ON_PURPOSE}").json()["state"] == "failed"
        cleared = api.post(f"/dags/{DAG_ID}/clearTaskInstances", json={
            "dry_run": False, "dag_run_id": run_id, "task_ids": [FAILED_ON_PURPOSE], "include_downstream": True,
            "only_failed": False, "reset_dag_runs": True}).raise_for_status().json()["task_instances"]
        cleared_ids = {ti["task_id"] for ti in cleared}
        assert FAILED_ON_PURPOSE in cleared_ids and "pipeline_complete" in cleared_ids
        time.sleep(3)
        rerun = topo.wait_for_run(api, run_id, timeout=600)
        after_tis = {ti["task_id"]: ti for ti in topo.task_instances(api, run_id)}
    assert rerun["state"] == "success"
    for task_id in cleared_ids:
        assert after_tis[task_id]["state"] in ("success", "skipped"), task_id
        if after_tis[task_id]["state"] == "success":
            assert after_tis[task_id]["try_number"] > tries[task_id], f"{task_id} did not rerun"
    after = _manifest(topo, run_id)
    assert after.keys() == before.keys()
    cycle_checkpoints = {k for k in before if k.startswith("cycle_")}
    assert cycle_checkpoints and {k: after[k] for k in cycle_checkpoints} == {k: before[k] for k in cycle_checkpoints}
