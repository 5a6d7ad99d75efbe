"""The Airflow UI in a real browser (Debian's chromium driven by playwright-core): log in, trigger
the DAG through its params form with the training-data review on, answer each cycle's review on its
Required Actions tab (issue 21), wait for success, open the run's Report tab (the kdflow plugin) and
see both cycles, then clear a failed task from the graph view and watch it rerun.

Prerequisites: scripts/setup-browser.sh (chromium from apt, playwright-core from npm). Screenshots
land in $KDFLOW_SCREENSHOTS (default artifacts/test-screenshots/browser) for CI to keep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from fixtures_deploy import ADMIN_USER, DAG_ID, REPO
from kdflow.pipeline.registry import ALL_STEPS
from kdflow.pipeline.review import APPROVE, DATASET_OPTIONS, DROP_PARAM, review_key

pytestmark = pytest.mark.slow

BROWSER_DIR = REPO / "tests" / "browser"
SCREENSHOTS = Path(os.environ.get("KDFLOW_SCREENSHOTS", REPO / "artifacts" / "test-screenshots" / "browser"))
CONF = {"topics": ["pods"], "cycles": 2, "questions_per_cycle": 1, "held_out_per_topic": 0, "review_dataset": True}
FAILED_ON_PURPOSE = "show_sample_qa_pairs"  # a leaf: clearing it reruns only itself


@pytest.fixture(scope="module")
def browser_tools():
    """chromium and playwright-core, installed by scripts/setup-browser.sh when missing."""
    if not (shutil.which("chromium") and (BROWSER_DIR / "node_modules" / "playwright-core").is_dir()):
        subprocess.run(["bash", str(REPO / "scripts" / "setup-browser.sh")], check=True, timeout=900)
    assert shutil.which("chromium") and shutil.which("node"), "chromium or node missing after scripts/setup-browser.sh"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


def _ui(topo, phase: str, state: Path, **env: str) -> dict:
    """Run one phase of tests/browser/airflow_ui.js; returns the JSON line it prints."""
    done = subprocess.run(["node", str(BROWSER_DIR / "airflow_ui.js"), phase], cwd=BROWSER_DIR,
                          capture_output=True, text=True,
                          timeout=240, env={**os.environ, "BASE_URL": topo.base_url, "AIRFLOW_USER": ADMIN_USER,
                                            "AIRFLOW_PASSWORD": topo.password, "DAG_ID": DAG_ID,
                                            "SHOTS": str(SCREENSHOTS), "STATE": str(state), **env})
    assert done.returncode == 0, (f"browser phase {phase} failed: {done.stderr.strip()[-2000:]} "
                                  f"(screenshots in {SCREENSHOTS})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_trigger_report_and_clear_in_a_real_browser(airflow_topology, browser_tools, tmp_path):
    topo, state = airflow_topology, tmp_path / "storage-state.json"
    run_id = f"browser_{uuid.uuid4().hex[:8]}"
    with topo.client() as api:
        api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()

        started = time.monotonic()
        assert _ui(topo, "trigger", state, RUN_ID=run_id, CONF=json.dumps(CONF))["topics"] == CONF["topics"]
        run = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").raise_for_status().json()
        assert {k: run["conf"].get(k) for k in CONF} == CONF, run["conf"]
        for cycle in (1, 2):  # each cycle waits for a reviewer after its dataset step
            task_id = f"cycle_{cycle}.review_dataset"
            asked = topo.wait_for_review(api, run_id, task_id, timeout=900)
            seen = _ui(topo, "review", state, RUN_ID=run_id, TASK_ID=task_id, OPTION=APPROVE)
            assert seen["options"] == DATASET_OPTIONS, seen
            assert asked["subject"] in seen["shown"], (asked["subject"], seen["shown"][:500])
            pair_ids = asked["params"][DROP_PARAM]["schema"]["items"]["enum"]
            assert pair_ids and all(qid in seen["shown"] for qid in pair_ids), (pair_ids, seen["shown"][:2000])
            answered = api.get(topo.hitl_url(run_id, task_id)).raise_for_status().json()
            assert answered["chosen_options"] == [APPROVE] and answered["responded_by_user"]["name"] == ADMIN_USER
        run = topo.wait_for_run(api, run_id, timeout=1500)
        print(f"\n[browser] run {run_id}: {run['state']} in {time.monotonic() - started:.0f}s")
        assert run["state"] == "success"

        report = _ui(topo, "report", state, RUN_ID=run_id)
        assert report["cycles"] == ["1", "2"], report
        assert {"Cycle 1", "Cycle 2"} <= set(report["headings"]), report
        for cycle in (1, 2):  # the store holds each answer, with who gave it
            key = f"{topo.store_prefix}/{review_key(run_id, 'dataset', cycle)}"
            decision = json.loads(topo.s3().get_object(Bucket=topo.bucket, Key=key)["Body"].read())
            assert (decision["outcome"], decision["timed_out"]) == ("approved", False) and decision["by"].startswith(
                ADMIN_USER), decision

        # Fail a task on purpose, then clear it from the graph view and watch it rerun in the UI.
        base = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{FAILED_ON_PURPOSE}"
        api.patch(base, json={"new_state": "failed"}).raise_for_status()
        failed_try = api.get(base).raise_for_status().json()["try_number"]
        label = ALL_STEPS[FAILED_ON_PURPOSE].display_name()
        seen = _ui(topo, "clear", state, RUN_ID=run_id, TASK_ID=FAILED_ON_PURPOSE, TASK_LABEL=label)["states"]
        assert seen[0] == "failed" and seen[-1] == "success", seen
        deadline = time.monotonic() + 300  # the UI can show success a moment before the API records it
        rerun = api.get(base).raise_for_status().json()
        while rerun["state"] not in ("success", "failed", "upstream_failed") and time.monotonic() < deadline:
            time.sleep(2)
            rerun = api.get(base).raise_for_status().json()
        assert (rerun["state"], rerun["try_number"]) == ("success", failed_try + 1)
        assert topo.wait_for_run(api, run_id, timeout=120)["state"] == "success"
    shots = {p.name for p in SCREENSHOTS.glob("*.png")}
    assert {"02-trigger-form.png", "04-review-cycle_1-review_dataset.png", "04-review-cycle_2-review_dataset.png",
            "05-report.png", "06-graph-failed-task.png", "07-clear-dialog.png",
            "08-rerun-succeeded.png"} <= shots
