"""Issue 18 under the real scheduler: a promotion's champion Asset event schedules ``kdflow_export``;
a refused promotion schedules nothing.

The native Celery topology of tests/fixtures_deploy.py (scheduler, dag-processor, two workers): the
pipeline DAG is triggered through the REST API as a user would. Nothing here calls the export itself:
the only way ``kdflow_export`` can get a run is the scheduler reacting to the event the results task
added through the ``kdflow_champion`` alias. The first run keeps the default ``promotion.margin``
(the tiny random student cannot improve, so it is refused); the second runs with the default worker
started with ``KDFLOW__PROMOTION__MARGIN=-1``, which promotes any adapter with comparable gold scores.
"""

from __future__ import annotations

import fnmatch
import json
import signal
import time

import pytest

from fixtures_deploy import DAG_ID
from kdflow.pipeline.airflow_tasks import CHAMPION_ALIAS, champion_asset_uri
from kdflow.store import run_key

pytestmark = pytest.mark.slow

EXPORT_DAG = "kdflow_export"
CONF = {"topics": ["pods"], "cycles": 1, "questions_per_cycle": 1, "held_out_per_topic": 0}
# how long the scheduler gets to turn a recorded asset event into a queued run (its loop runs every second)
QUEUE_WAIT_S = 45


def _export_runs(api) -> list[dict]:
    return api.get(f"/dags/{EXPORT_DAG}/dagRuns", params={"limit": 100}).raise_for_status().json()["dag_runs"]


def _asset_events(api, run_id: str) -> list[dict]:
    """The asset events the pipeline run ``run_id`` emitted (the results task's champion event, if any)."""
    return api.get("/assets/events", params={"source_dag_id": DAG_ID, "source_run_id": run_id}
                   ).raise_for_status().json()["asset_events"]


def _pipeline_run(topo, api) -> dict:
    run = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": CONF}).raise_for_status().json()
    run = topo.wait_for_run(api, run["dag_run_id"], timeout=900)
    assert run["state"] == "success", f"pipeline run failed; logs in {topo.home / 'logs'}"
    return run


def _promotion(topo, run_id: str) -> dict:
    """The promotion decision the run's results task recorded (results.json in the bucket)."""
    prefix = f"{topo.store_prefix}/{run_key(run_id)}/"
    [key] = fnmatch.filter(topo.s3_keys(prefix), f"{prefix}results.json")
    return json.loads(topo.s3().get_object(Bucket=topo.bucket, Key=key)["Body"].read())["promotion"]


def _wait_for_export_run(topo, api, known: set[str], timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [run for run in _export_runs(api) if run["dag_run_id"] not in known]
        if new:
            return new[0]
        topo.assert_alive()
        time.sleep(2)
    return None


@pytest.fixture(scope="module")
def export_dag_unpaused(airflow_topology):
    topo = airflow_topology
    with topo.client() as api:
        for dag_id in (DAG_ID, EXPORT_DAG):
            api.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    yield topo
    with topo.client() as api:
        api.patch(f"/dags/{EXPORT_DAG}", json={"is_paused": True}).raise_for_status()


def test_a_refused_promotion_announces_nothing_and_schedules_no_export(export_dag_unpaused):
    topo = export_dag_unpaused
    with topo.client() as api:
        before = {run["dag_run_id"] for run in _export_runs(api)}
        run = _pipeline_run(topo, api)
        promotion = _promotion(topo, run["dag_run_id"])
        assert promotion["promote"] is False, promotion
        assert _asset_events(api, run["dag_run_id"]) == []
        assert _wait_for_export_run(topo, api, before, QUEUE_WAIT_S) is None


def test_a_promotion_schedules_kdflow_export_which_publishes_the_new_champion(export_dag_unpaused):
    topo = export_dag_unpaused
    student = topo.env["KDFLOW__STUDENT__MODEL"]
    with topo.client() as api:
        before = {run["dag_run_id"] for run in _export_runs(api)}
        topo.kill("worker-default", signal.SIGTERM)  # the results task runs on the default worker
        try:
            topo.restart("worker-default", extra_env={"KDFLOW__PROMOTION__MARGIN": "-1"})
            run = _pipeline_run(topo, api)
        finally:
            topo.kill("worker-default", signal.SIGTERM)
            topo.restart("worker-default")
        promotion = _promotion(topo, run["dag_run_id"])
        assert promotion["promote"] is True, promotion

        [event] = _asset_events(api, run["dag_run_id"])
        assert event["uri"] == champion_asset_uri(student)
        assert event["source_task_id"] == "save_pipeline_results"
        assert event["extra"]["run_id"] == run["dag_run_id"] and event["extra"]["cycle"] == 1
        aliases = api.get("/assets/aliases").raise_for_status().json()["asset_aliases"]
        assert CHAMPION_ALIAS in {alias["name"] for alias in aliases}

        export = _wait_for_export_run(topo, api, before, QUEUE_WAIT_S)
        assert export is not None, f"no {EXPORT_DAG} run after the promotion:\n{topo.log_tail('scheduler')}"
        assert export["run_type"] == "asset_triggered"
        upstream = api.get(f"/dags/{EXPORT_DAG}/dagRuns/{export['dag_run_id']}/upstreamAssetEvents"
                           ).raise_for_status().json()["asset_events"]
        assert [e["extra"]["run_id"] for e in upstream] == [run["dag_run_id"]]

        export = topo.wait_for_run(api, export["dag_run_id"], timeout=600, dag_id=EXPORT_DAG)
        [event] = _asset_events(api, run["dag_run_id"])
        assert [(d["dag_id"], d["run_id"]) for d in event["created_dagruns"]] == [(EXPORT_DAG, export["dag_run_id"])]
        tis = {ti["task_id"]: ti for ti in topo.task_instances(api, export["dag_run_id"], dag_id=EXPORT_DAG)}
    assert tis["export_champion"]["state"] == "success", f"logs in {topo.home / 'logs'}"
    assert export["state"] == "success", {t: ti["state"] for t, ti in tis.items()}
    # the export is the promoted run's adapter, published under models/ in the same bucket
    keys = topo.s3_keys(f"{topo.store_prefix}/models/")
    [record_key] = [k for k in keys if k.endswith("/champion.json")]
    record = json.loads(topo.s3().get_object(Bucket=topo.bucket, Key=record_key)["Body"].read())
    assert (record["run_id"], record["cycle"]) == (run["dag_run_id"], 1)
    assert any(k.endswith("/hf/model.safetensors") for k in keys)
