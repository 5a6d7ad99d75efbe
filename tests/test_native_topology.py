"""docker-compose's topology, natively: Celery with a default and a gpu worker, Postgres, Redis and
an S3 server; the DAG is driven only through the REST API v2, as a user or another service would.

Needs Postgres and Redis on 127.0.0.1 (scripts/services.sh). Fixture: tests/fixtures_deploy.py.

The failure drill is the README's: the default worker is restarted with ``KDFLOW_FAIL_STEP`` naming a
middle task (kdflow reads it in the task process, so it is armed per worker, not per run), the task
and its downstream are cleared and really fail; then the worker runs without it again and the failed
task is cleared with its downstream, as a user would in the graph view.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import signal
import time

import pytest

from fixtures_deploy import DAG_ID, REDIS_URL, WORKERS
from fixtures_reliability import STABLE, is_loopback
from kdflow.config import load_config
from kdflow.pipeline import FAIL_STEP_ENV
from kdflow.pipeline.registry import ALL_STEPS
from kdflow.store import run_key

pytestmark = pytest.mark.slow

CONF = {"topics": ["pods"], "cycles": 1, "questions_per_cycle": 1, "held_out_per_topic": 0}
# A middle task of the cycle on the default worker; fine-tuning and everything after it follow it.
FAILED_ON_PURPOSE = "cycle_1.prepare_training_dataset"


def _step(task_id: str):
    return ALL_STEPS[task_id.rsplit(".", 1)[-1]]


def _is_step(task_id: str) -> bool:
    """A pipeline step's task, not a review task (Airflow's HITL operator, beyond the diagram)."""
    return task_id.rsplit(".", 1)[-1] in ALL_STEPS


def _ran(tis: list[dict]) -> list[dict]:
    """Task instances a worker executed (the scheduler marks downstream skips without running them)."""
    return [ti for ti in tis if ti["hostname"]]


def _read_json(topo, key: str) -> dict:
    return json.loads(topo.s3().get_object(Bucket=topo.bucket, Key=key)["Body"].read())


def _manifest(topo, run_id: str) -> dict[str, dict]:
    """checkpoint name -> its pointer, read straight from the bucket."""
    prefix = f"{topo.store_prefix}/{run_key(run_id, 'manifest')}/"
    return {key[len(prefix):-5]: _read_json(topo, key) for key in topo.s3_keys(prefix)}


def _cycle_checkpoints(topo, run_id: str, cycle: int = 1) -> dict[str, str]:
    """sha256 of the cycle's data checkpoints and of every file of its adapter but the training record
    (train_result.json: it holds the training's wall time, so it differs per try)."""
    from kdflow.student.train import RESULT_FILE

    manifest = _manifest(topo, run_id)
    hashes = {name: entry["sha256"] for name, entry in manifest.items()
              if name.startswith(f"cycle_{cycle}.") and name.split(".")[-1] in STABLE}
    marker = _read_json(topo, f"{topo.store_prefix}/{manifest[f'cycle_{cycle}.adapter']['key']}")
    hashes.update({f"cycle_{cycle}.adapter/{name}": sha for name, sha in marker["files"].items()
                   if name != RESULT_FILE})
    assert len(hashes) >= len(STABLE) + 2, sorted(hashes)  # every data checkpoint, the weights and the adapter config
    return hashes


def _clear_with_downstream(api, run_id: str, task_id: str) -> set[str]:
    cleared = api.post(f"/dags/{DAG_ID}/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": [task_id], "include_downstream": True,
        "only_failed": False, "reset_dag_runs": True}).raise_for_status().json()["task_instances"]
    time.sleep(3)
    return {ti["task_id"] for ti in cleared}


def test_too_many_cycles_are_refused_at_trigger_time_with_the_schema_message(airflow_topology):
    topo = airflow_topology
    too_many = load_config(environ=topo.env).pipeline.max_cycles + 1
    with topo.client() as api:
        answer = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {**CONF, "cycles": too_many}})
        if answer.is_success:  # keep the shared topology clean for the next tests before failing
            api.delete(f"/dags/{DAG_ID}/dagRuns/{answer.json()['dag_run_id']}")
        runs = api.get(f"/dags/{DAG_ID}/dagRuns").raise_for_status().json()["dag_runs"]
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert "param cycles" in detail and f"{too_many} is greater than the maximum" in detail, detail
    assert not [run for run in runs if (run["conf"] or {}).get("cycles") == too_many]


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


def test_a_refused_promotion_announces_no_champion(finished_run):
    """Issue 18: the tiny random student cannot beat the default promotion margin, so the results task adds
    no event to the ``kdflow_champion`` alias and nothing can schedule ``kdflow_export`` (an approved
    promotion's event and the export it schedules: test_native_review.py)."""
    topo, run, _ = finished_run
    key = f"{topo.store_prefix}/{run_key(run['dag_run_id'], 'results.json')}"
    results = json.loads(topo.s3().get_object(Bucket=topo.bucket, Key=key)["Body"].read())
    assert results["promotion"]["promote"] is False, results["promotion"]
    with topo.client() as api:
        assert topo.asset_events(api, run["dag_run_id"]) == []


def test_student_tasks_ran_on_gpu_worker_in_gpu_pool_and_the_rest_on_default(finished_run):
    topo, _, tis = finished_run
    ran = _ran(tis)
    student = [ti for ti in ran if _is_step(ti["task_id"]) and _step(ti["task_id"]).uses_student]
    others = [ti for ti in ran if ti not in student]  # the rest of the steps, and the review tasks (issue 21)
    assert len(student) == sum(s.uses_student for s in ALL_STEPS.values())  # every student step of cycle 1
    assert len(others) >= 20 and {t["task_id"] for t in others if not _is_step(t["task_id"])} == {
        "cycle_1.review_dataset", "review_promotion"}
    cfg = topo.airflow_config  # the pool and queues the DAG and the fixture's pool both take from the config
    for ti in student:
        assert (ti["hostname"], ti["pool"], ti["queue"]) == (WORKERS["gpu"], cfg.gpu_pool, cfg.gpu_queue), ti["task_id"]
    for ti in others:
        assert (ti["hostname"], ti["queue"]) == (WORKERS["default"], cfg.default_queue), ti["task_id"]
        assert ti["pool"] == "default_pool", ti["task_id"]


def test_artifacts_are_in_the_bucket(finished_run):
    topo, run, _ = finished_run
    base = f"{topo.store_prefix}/{run_key(run['dag_run_id'])}"  # the run id, sanitised into a key segment
    keys = set(topo.s3_keys(f"{base}/"))
    # folders are published as versions (<folder>/v<time>-<hex>/...); exactly one is left of each
    for name in ("cycle_1/questions.jsonl", "cycle_1/baseline_answers.jsonl", "cycle_1/references.jsonl",
                 "cycle_1/adapter/v*/_COMPLETE.json", "report/v*/report.html", "manifest/cycle_1.questions.json"):
        found = fnmatch.filter(keys, f"{base}/{name}")
        assert len(found) == 1, f"{name}: {found}; bucket has {sorted(keys)[:40]}"


def test_the_workers_log_the_run_to_a_real_mlflow_server(finished_run):
    """docker-compose's mlflow service, natively: the Celery workers' tasks log the run to `mlflow server`
    (runs in Postgres, artifacts proxied to the bucket) behind its basic-auth app; read back through MlflowClient
    over HTTP with the tasks' login, and refused without it."""
    import httpx

    topo, run, _ = finished_run
    refused = httpx.get(f"{topo.mlflow_uri}/api/2.0/mlflow/experiments/get-by-name",
                        params={"experiment_name": "kdflow"})
    assert refused.status_code == 401, refused.text
    with topo.mlflow_client() as client:
        _assert_run_logged(topo, run, client)


def _assert_run_logged(topo, run, client) -> None:
    experiment = client.get_experiment_by_name("kdflow")
    query = f"tags.`kdflow.run_id` = '{run['dag_run_id']}'"
    found = client.search_runs([experiment.experiment_id], query)
    (parent,) = [r for r in found if r.data.tags["kdflow.level"] == "run"]
    (cycle,) = [r for r in found if r.data.tags["kdflow.level"] == "cycle"]
    assert parent.info.run_name == run["dag_run_id"] and parent.info.status == "FINISHED"
    assert parent.data.tags["kdflow.dag_id"] == DAG_ID and parent.data.params["pipeline.cycles"] == "1"
    assert cycle.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert client.get_metric_history(cycle.info.run_id, "train.loss")
    assert "held_out.semantic_similarity.finetuned_mean" in cycle.data.metrics or any(
        k.endswith(".finetuned_mean") for k in cycle.data.metrics)
    assert {"adapter", "dataset"} <= {f.path for f in client.list_artifacts(cycle.info.run_id)}
    assert any(k.endswith("/adapter/adapter_config.json") for k in topo.s3_keys("mlflow/"))  # proxied to the bucket
    failures = topo.s3_keys(f"{topo.store_prefix}/{run_key(run['dag_run_id'], 'tracking', 'failures')}/")
    assert failures == [], failures


def test_airflow_processes_open_no_socket_off_loopback(finished_run):
    """No telemetry: every socket of every Airflow process (api-server, scheduler, dag-processor, the
    workers and their task processes) stays on loopback for a whole run, as the evaluation egress test
    checks for RAGAS. CI is unset there (Airflow's telemetry used to stay off under CI alone)."""
    topo, _, _ = finished_run
    assert "CI" not in topo.env and topo.env["AIRFLOW__USAGE_DATA_COLLECTION__ENABLED"] == "False"
    events = topo.socket_events()
    # the audit saw the Python-side connections (psycopg2's are in C): the api-server, Redis and the S3 server
    ports = {t[1] for e, t in events if e == "socket.connect" and isinstance(t, list)}
    expected = {int(topo.base_url.rsplit(":", 1)[1]), int(REDIS_URL.rsplit(":", 1)[1]),
                int(topo.s3_endpoint.rsplit(":", 1)[1])}
    assert expected <= ports, (expected, ports)
    outside = sorted({(e, str(t)) for e, t in events if not is_loopback(e, t) and not _local(e, t)})
    assert outside == [], outside


def _local(event: str, target) -> bool:
    """Not egress either: a bind to port 0 (a client socket picking its own port) and a lookup of
    this machine's own name (Celery and Airflow record their hostname; /etc/hosts answers it)."""
    import socket

    if event == "socket.bind":
        return isinstance(target, list) and target[1] == 0
    return event == "socket.getaddrinfo" and target in (socket.gethostname(), socket.getfqdn())


def test_xcom_values_are_pointers_to_the_bucket(finished_run):
    topo, run, tis = finished_run
    s3 = topo.s3()
    checked = 0
    with topo.client() as api:
        for ti in _ran(tis):
            if ti["state"] != "success":
                continue
            task_url = f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/{ti['task_id']}"
            entry = api.get(f"{task_url}/xcomEntries/return_value",
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


def test_a_middle_task_failing_mid_run_is_cleared_and_reruns_to_the_same_checkpoints(finished_run):
    topo, run, tis = finished_run
    run_id = run["dag_run_id"]
    task_url = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{FAILED_ON_PURPOSE}"
    before, names_before = _cycle_checkpoints(topo, run_id), set(_manifest(topo, run_id))
    tries = {ti["task_id"]: ti["try_number"] for ti in tis}
    with topo.client() as api:
        # 1. the default worker fails the task for real (its retry too); everything after it waits
        topo.kill("worker-default", signal.SIGTERM)
        try:
            topo.restart("worker-default", extra_env={FAIL_STEP_ENV: FAILED_ON_PURPOSE})
            _clear_with_downstream(api, run_id, FAILED_ON_PURPOSE)
            failed = topo.wait_for_run(api, run_id, timeout=600)
        finally:
            topo.kill("worker-default", signal.SIGTERM)
            topo.restart("worker-default")
        states = {ti["task_id"]: ti for ti in topo.task_instances(api, run_id)}
        broken = states[FAILED_ON_PURPOSE]
        assert (failed["state"], broken["state"], broken["hostname"]) == ("failed", "failed", WORKERS["default"])
        assert states["cycle_1.finetune_student"]["state"] == "upstream_failed"
        log = api.get(f"{task_url}/logs/{broken['try_number']}", params={"full_content": True},
                      headers={"Accept": "application/json"}).raise_for_status()
        assert f"{FAILED_ON_PURPOSE} failed on purpose" in log.text
        # 2. cleared with its downstream on the worker as it normally runs: the same run succeeds
        cleared_ids = _clear_with_downstream(api, run_id, FAILED_ON_PURPOSE)
        assert {FAILED_ON_PURPOSE, "cycle_1.finetune_student", "cycle_1.save_adapter",
                "pipeline_complete"} <= cleared_ids
        rerun = topo.wait_for_run(api, run_id, timeout=900)
        after_tis = {ti["task_id"]: ti for ti in topo.task_instances(api, run_id)}
    assert rerun["state"] == "success", {t: ti["state"] for t, ti in after_tis.items() if ti["state"] != "success"}
    for task_id in cleared_ids:
        assert after_tis[task_id]["state"] in ("success", "skipped"), task_id
        if after_tis[task_id]["state"] == "success":
            assert after_tis[task_id]["try_number"] > tries[task_id], f"{task_id} did not rerun"
    assert after_tis["cycle_1.finetune_student"]["state"] == "success"  # the adapter was trained again
    assert set(_manifest(topo, run_id)) == names_before  # nothing new, nothing lost
    assert _cycle_checkpoints(topo, run_id) == before


def test_the_rerun_logged_into_the_same_mlflow_runs(finished_run):
    """After the drill above reran half the run's tasks on the workers: still one MLflow run for the pipeline
    run and one for its cycle, and no training-loss point logged twice."""
    topo, run, _ = finished_run
    with topo.mlflow_client() as client:
        _assert_rerun_logged_once(run, client)


def _assert_rerun_logged_once(run, client) -> None:
    experiment = client.get_experiment_by_name("kdflow")
    found = client.search_runs([experiment.experiment_id], f"tags.`kdflow.run_id` = '{run['dag_run_id']}'")
    assert sorted(r.data.tags["kdflow.level"] for r in found) == ["cycle", "run"]
    (cycle,) = [r for r in found if r.data.tags["kdflow.level"] == "cycle"]
    steps = [p.step for p in client.get_metric_history(cycle.info.run_id, "train.loss")]
    assert steps and len(steps) == len(set(steps)), steps
