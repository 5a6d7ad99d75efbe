"""Faults on the native Celery topology (issue #8): two runs triggered at once, the GPU worker
killed while it runs a student task, and the scheduler restarted mid-run.

Two pipeline runs carry all three faults, because each run costs minutes: run A gets the worker
kill and then the scheduler restart, run B is triggered right after A and must wait in the queue
(``max_active_runs=1``). Every component killed here is restarted and up again before the module
ends, so the other modules sharing ``airflow_topology`` find it healthy. Fixture:
tests/fixtures_deploy.py (30 s task heartbeat timeout there).
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from datetime import datetime

import pytest

from fixtures_deploy import DAG_ID, WORKERS
from kdflow.store import DIR_MARKER, run_key

pytestmark = pytest.mark.slow

CONF = {"topics": ["pods"], "cycles": 1, "questions_per_cycle": 1, "held_out_per_topic": 0}
GPU_TASK = "cycle_1.finetune_student"  # the training step of the student, on the gpu queue
STEP_STARTED, STEP_DONE = ": starting", "step finetune_student: done"  # kdflow.pipeline's log lines around a step
RUN_TIMEOUT = 1200


def _task_log(topo, run_id: str, attempt: int) -> str:
    task_logs = topo.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={GPU_TASK}"
    path = task_logs / f"attempt={attempt}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _poll(topo, what: str, check, timeout: float, interval: float = 1.0, log: str = "scheduler"):
    """Call ``check`` until it returns something truthy; time out naming ``what`` with a log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        topo.assert_alive()
        time.sleep(interval)
    raise TimeoutError(f"[faults] {what}: not after {timeout:.0f}s; {log} log:\n{topo.log_tail(log)}")


@pytest.fixture(scope="module")
def faults(airflow_topology):
    """Run A and B with the three faults; returns what the tests assert on."""
    topo, t0 = airflow_topology, time.monotonic()
    out = {"seen": set(), "timings": {}}

    def mark(event: str) -> None:
        out["timings"][event] = round(time.monotonic() - t0, 1)
        print(f"[faults] {out['timings'][event]:6.1f}s {event}")

    with topo.client() as api:
        runs = f"/dags/{DAG_ID}/dagRuns"
        api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        a, b = (
            api.post(runs, json={"logical_date": None, "conf": CONF}).raise_for_status().json()["dag_run_id"]
            for _ in range(2)
        )
        out.update(a=a, b=b)
        mark(f"triggered {a} and {b}")

        def states() -> tuple[str, str]:
            pair = tuple(api.get(f"{runs}/{run}").raise_for_status().json()["state"] for run in (a, b))
            out["seen"].add(pair)
            return pair

        def gpu_ti() -> dict:
            return api.get(f"{runs}/{a}/taskInstances/{GPU_TASK}").raise_for_status().json()

        # Fault: the GPU worker dies (the whole process tree) once the student step itself has started.
        _poll(topo, f"{GPU_TASK} of {a} started",
              lambda: states() and STEP_STARTED in _task_log(topo, a, 1), RUN_TIMEOUT, 0.5)
        out["killed_try"] = gpu_ti()["try_number"]
        topo.kill("worker-gpu")
        mark(f"SIGKILLed worker-gpu while {GPU_TASK} try {out['killed_try']} ran")
        since = topo.log_size("worker-gpu")
        topo.restart("worker-gpu")
        topo.wait_for_log("worker-gpu", " ready.", since)
        mark("worker-gpu restarted and ready")
        _poll(
            topo,
            f"{GPU_TASK} leaving 'running' without a heartbeat",
            lambda: states() and (gpu_ti()["state"] != "running" or gpu_ti()["try_number"] > out["killed_try"]),
            300,
        )
        mark(f"heartbeat timeout detected: {GPU_TASK} {gpu_ti()['state']}")
        _poll(
            topo,
            f"{GPU_TASK} retried",
            lambda: (states() and gpu_ti()["try_number"] > out["killed_try"]
                     and gpu_ti()["state"] in ("running", "success")),
            300,
            log="worker-gpu",
        )
        mark(f"{GPU_TASK} try {gpu_ti()['try_number']} {gpu_ti()['state']}")

        # Fault: the scheduler is stopped and started again while a run is in progress.
        out["restarted_during"] = next(run for run, state in zip((a, b), states(), strict=True) if state == "running")
        topo.kill("scheduler", signal.SIGTERM)
        mark(f"scheduler exited on SIGTERM during {out['restarted_during']}")
        since = topo.log_size("scheduler")
        topo.restart("scheduler")
        topo.wait_for_log("scheduler", "Adopting or resetting orphaned tasks", since)
        mark("scheduler restarted")

        for run in (a, b):
            _poll(
                topo, f"run {run} finished",
                lambda run=run: states()[(a, b).index(run)] in ("success", "failed"), RUN_TIMEOUT, 3
            )
            mark(f"run {run} {states()[(a, b).index(run)]}")
        out["runs"] = {run: api.get(f"{runs}/{run}").raise_for_status().json() for run in (a, b)}
        out["tis"] = {run: topo.task_instances(api, run) for run in (a, b)}
        out["tries"] = api.get(f"{runs}/{a}/taskInstances/{GPU_TASK}/tries").raise_for_status().json()["task_instances"]
        out["events"] = (
            api.get("/eventLogs",
                    params={"dag_id": DAG_ID, "run_id": a, "task_id": GPU_TASK, "event": "heartbeat timeout"})
            .raise_for_status()
            .json()["event_logs"]
        )
        out["health"] = api.get("/monitor/health").raise_for_status().json()
    return topo, out


def _manifest(topo, run_id: str) -> dict[str, dict]:
    """checkpoint name -> the pointer recorded for it, read straight from the bucket."""
    s3, prefix = topo.s3(), f"{topo.store_prefix}/{run_key(run_id, 'manifest')}/"
    return {
        key[len(prefix) : -5]: json.loads(s3.get_object(Bucket=topo.bucket, Key=key)["Body"].read())
        for key in topo.s3_keys(prefix)
    }


def _body(topo, key: str) -> bytes:
    return topo.s3().get_object(Bucket=topo.bucket, Key=f"{topo.store_prefix}/{key}")["Body"].read()


def _assert_finished_clean(topo, run: dict, tis: list[dict]) -> None:
    bad = {ti["task_id"]: ti["state"] for ti in tis if ti["state"] not in ("success", "skipped")}
    assert run["state"] == "success" and not bad, f"{run['dag_run_id']}: {run['state']}, {bad}; logs in {topo.home}"


def test_second_run_waits_in_the_queue_while_the_first_runs(faults):
    topo, out = faults
    a, b = out["runs"][out["a"]], out["runs"][out["b"]]
    assert ("running", "queued") in out["seen"], f"never saw A running with B queued: {out['seen']}"
    assert ("running", "running") not in out["seen"], "max_active_runs=1 let both runs run at once"
    assert datetime.fromisoformat(b["start_date"]) >= datetime.fromisoformat(a["end_date"]), (a, b)
    for run in (out["a"], out["b"]):
        _assert_finished_clean(topo, out["runs"][run], out["tis"][run])
        assert out["runs"][run]["conf"] == CONF


def test_the_two_runs_never_mix_their_stores(faults):
    topo, out = faults
    for run, other in ((out["a"], out["b"]), (out["b"], out["a"])):
        own = f"{run_key(run)}/"
        keys = topo.s3_keys(f"{topo.store_prefix}/{own}")
        assert keys, f"nothing stored for {run}"
        for key in keys:  # no object of this run names the other run (pointers, indexes, reports)
            assert run_key(other).encode() not in _body(topo, key[len(topo.store_prefix) + 1 :]), key
        manifest = _manifest(topo, run)
        assert {"cycle_1.questions", "cycle_1.adapter", "cycle_1.results"} <= manifest.keys(), sorted(manifest)
        for name, pointer in manifest.items():
            assert pointer["key"].startswith(own), f"{run}'s manifest entry {name} points at {pointer['key']}"
            assert hashlib.sha256(_body(topo, pointer["key"])).hexdigest() == pointer["sha256"], f"{run}: {name}"


def test_killed_gpu_task_is_found_without_heartbeat_and_retried_on_the_restarted_worker(faults):
    topo, out = faults
    _assert_finished_clean(topo, out["runs"][out["a"]], out["tis"][out["a"]])
    ti = next(ti for ti in out["tis"][out["a"]] if ti["task_id"] == GPU_TASK)
    assert out["killed_try"] == 1 and (ti["try_number"], ti["state"]) == (2, "success"), ti
    assert ti["hostname"] == WORKERS["gpu"] and ti["queue"] == "gpu"
    tries = {t["try_number"]: t for t in out["tries"]}
    assert tries[1]["state"] == "failed" and tries[1]["hostname"] == WORKERS["gpu"], tries[1]
    first, second = _task_log(topo, out["a"], 1), _task_log(topo, out["a"], 2)
    assert STEP_STARTED in first and STEP_DONE not in first, "the kill did not land inside the step"
    assert STEP_DONE in second
    assert out["events"], f"no 'heartbeat timeout' event for {GPU_TASK}; scheduler log:\n{topo.log_tail('scheduler')}"


def test_the_retry_left_consistent_checkpoints_without_duplicates(faults):
    topo, out = faults
    run = out["a"]
    manifest = _manifest(topo, run)
    for name, pointer in manifest.items():
        if name.startswith("cycle_1.") and pointer["key"].endswith(".jsonl"):
            rows = [json.loads(line) for line in _body(topo, pointer["key"]).decode().splitlines() if line.strip()]
            ids = [row.get("id") or row["question_id"] for row in rows]
            assert rows and len(ids) == len(set(ids)) == pointer["count"], f"{name}: {ids}"
    adapter = manifest["cycle_1.adapter"]
    marker = json.loads(_body(topo, adapter["key"]))
    folder = adapter["key"][: -len(DIR_MARKER)]
    stored = {key[len(topo.store_prefix) + 1 + len(folder) :] for key in topo.s3_keys(f"{topo.store_prefix}/{folder}")}
    assert stored == {*marker["files"], DIR_MARKER}, "the retried upload left stale or missing adapter files"
    for rel, digest in marker["files"].items():
        assert hashlib.sha256(_body(topo, folder + rel)).hexdigest() == digest, rel


def test_run_in_progress_survives_a_scheduler_restart(faults):
    topo, out = faults
    run = out["restarted_during"]
    _assert_finished_clean(topo, out["runs"][run], out["tis"][run])


def test_topology_is_left_running_for_the_other_modules(faults):
    topo, out = faults
    topo.assert_alive()
    assert out["health"]["scheduler"]["status"] == "healthy", out["health"]
    for name in ("worker-gpu", "scheduler"):
        assert topo.processes[name].poll() is None, name
