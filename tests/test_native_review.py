"""Issues 21 and 18 under the real scheduler: a person in the loop through Airflow's human-in-the-loop REST
API, and the champion Asset event of an approved promotion scheduling ``kdflow_export``.

The native Celery topology of tests/fixtures_deploy.py (scheduler, dag-processor, two workers, no triggerer:
on Airflow 3.3 a waiting review parks its task in ``awaiting_input``, which needs none). The pipeline DAG is
triggered through the REST API with the review params on, as a user would from the trigger form; each test
waits for the review task to park, reads what the reviewer is shown (``GET .../hitlDetails``) and answers as
the UI does (``PATCH .../hitlDetails``), or leaves it to time out. The default worker runs with
``KDFLOW__PROMOTION__MARGIN=-1``, so the gate proposes the tiny random student's adapter and the promotion
review is asked. Review off is every other topology test's run; a refused promotion (default margin)
announcing nothing is checked on test_native_topology's run.

Two runs (each costs minutes of CI): drop a pair + approve the promotion, whose champion event must schedule
``kdflow_export`` (nothing here calls the export: only the scheduler reacting to the event the results task
added through the ``kdflow_champion`` alias can); leave the data review unanswered until it times out (the
default rejects the cycle: the run stops, everything after the review skipped).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from fixtures_deploy import DAG_ID, AirflowTopology
from kdflow.pipeline.airflow_tasks import CHAMPION_ALIAS, champion_asset_uri
from kdflow.pipeline.review import APPROVE, DROP, DROP_PARAM, PROMOTE, REJECT, review_key
from kdflow.store import run_key

pytestmark = pytest.mark.slow

CONF = {"topics": ["pods"], "cycles": 1, "questions_per_cycle": 2, "held_out_per_topic": 0}
DATASET_REVIEW = "cycle_1.review_dataset"
PROMOTION_REVIEW = "review_promotion"
PARK_WAIT_S = 900  # the teacher, baseline answers and evaluation run before the first review
EXPORT_DAG = "kdflow_export"
# how long the scheduler gets to turn a recorded asset event into a queued run (its loop runs every second)
QUEUE_WAIT_S = 45


@pytest.fixture(scope="module")
def topo(airflow_topology):
    topo = airflow_topology
    with topo.client() as api:
        for dag_id in (DAG_ID, EXPORT_DAG):
            api.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    topo.kill("worker-default", signal.SIGTERM)  # the results and review tasks run on the default worker
    topo.restart("worker-default", extra_env={"KDFLOW__PROMOTION__MARGIN": "-1"})
    try:
        yield topo
    finally:
        topo.kill("worker-default", signal.SIGTERM)
        topo.restart("worker-default")
        with topo.client() as api:
            api.patch(f"/dags/{EXPORT_DAG}", json={"is_paused": True}).raise_for_status()


def _trigger(api, **review) -> str:
    run = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {**CONF, **review}})
    return run.raise_for_status().json()["dag_run_id"]


def _no_slot_held(api) -> None:
    """A waiting review holds no worker or pool slot (and the run has nothing else to run meanwhile)."""
    pool = api.get("/pools/default_pool").raise_for_status().json()
    assert (pool["occupied_slots"], pool["running_slots"], pool["queued_slots"]) == (0, 0, 0), pool


def _answer(api, run_id: str, task_id: str, option: str, **params) -> dict:
    answer = {"chosen_options": [option], "params_input": params}
    return api.patch(AirflowTopology.hitl_url(run_id, task_id), json=answer).raise_for_status().json()


def _s3_json(topo, key: str) -> dict:
    return json.loads(topo.s3().get_object(Bucket=topo.bucket, Key=f"{topo.store_prefix}/{key}")["Body"].read())


def _finished(topo, api, run_id: str) -> tuple[dict, dict[str, str]]:
    run = topo.wait_for_run(api, run_id, timeout=900)
    return run, {ti["task_id"]: ti["state"] for ti in topo.task_instances(api, run_id)}


@pytest.fixture(scope="module")
def approved_run(topo):
    """One run: the reviewer drops one pair before training and approves the new champion."""
    with topo.client() as api:
        exports_before = {run["dag_run_id"] for run in topo.dag_runs(api, EXPORT_DAG)}
        run_id = _trigger(api, review_dataset=True, review_promotion=True)
        shown = topo.wait_for_review(api, run_id, DATASET_REVIEW, PARK_WAIT_S)
        _no_slot_held(api)
        ids = shown["params"][DROP_PARAM]["schema"]["items"]["enum"]
        assert shown["options"] == [APPROVE, DROP, REJECT] and shown["defaults"] == [REJECT]
        assert all(f"`{qid}`" in shown["body"] for qid in ids) and "| gate | scores |" in shown["body"]
        assert len(ids) >= 2, f"the teacher's gate kept {len(ids)} pair(s); dropping one would leave nothing to train"
        answered = _answer(api, run_id, DATASET_REVIEW, DROP, **{DROP_PARAM: ids[:1]})
        assert answered["chosen_options"] == [DROP]

        shown = topo.wait_for_review(api, run_id, PROMOTION_REVIEW, PARK_WAIT_S)
        assert "The promotion gate proposes a new champion" in shown["body"]
        _answer(api, run_id, PROMOTION_REVIEW, PROMOTE)
        run, states = _finished(topo, api, run_id)
    assert run["state"] == "success" and states["save_pipeline_results"] == "success", states
    return {"run_id": run_id, "ids": ids, "exports_before": exports_before}


def test_a_reviewer_drops_a_pair_before_training_and_approves_the_new_champion(topo, approved_run):
    run_id, ids = approved_run["run_id"], approved_run["ids"]
    dataset = _s3_json(topo, review_key(run_id, "dataset", 1))
    assert (dataset["outcome"], dataset["dropped"], dataset["timed_out"]) == ("dropped", ids[:1], False)
    assert dataset["by"].startswith("admin")
    dataset_key = f"{topo.store_prefix}/{run_key(run_id, 'cycle_1', 'dataset.jsonl')}"
    pairs = topo.s3().get_object(Bucket=topo.bucket, Key=dataset_key)["Body"].read().decode().splitlines()
    trained = [json.loads(line)["question_id"] for line in pairs]
    assert ids[0] not in trained and ids[1] in trained
    results = _s3_json(topo, run_key(run_id, "results.json"))
    assert results["promotion"]["promote"] is True and results["promotion"]["review"]["outcome"] == "promoted"
    assert [r["outcome"] for r in results["reviews"]] == ["dropped", "promoted"]


def _wait_for_export_run(topo, api, known: set[str], timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [run for run in topo.dag_runs(api, EXPORT_DAG) if run["dag_run_id"] not in known]
        if new:
            return new[0]
        topo.assert_alive()
        time.sleep(2)
    return None


def test_the_approved_promotion_schedules_kdflow_export_which_publishes_the_new_champion(topo, approved_run):
    run_id, student = approved_run["run_id"], topo.env["KDFLOW__STUDENT__MODEL"]
    with topo.client() as api:
        [event] = topo.asset_events(api, run_id)
        assert event["uri"] == champion_asset_uri(student)
        assert event["source_task_id"] == "save_pipeline_results"
        assert event["extra"]["run_id"] == run_id and event["extra"]["cycle"] == 1
        aliases = api.get("/assets/aliases").raise_for_status().json()["asset_aliases"]
        assert CHAMPION_ALIAS in {alias["name"] for alias in aliases}

        export = _wait_for_export_run(topo, api, approved_run["exports_before"], QUEUE_WAIT_S)
        assert export is not None, f"no {EXPORT_DAG} run after the promotion:\n{topo.log_tail('scheduler')}"
        assert export["run_type"] == "asset_triggered"
        upstream = api.get(f"/dags/{EXPORT_DAG}/dagRuns/{export['dag_run_id']}/upstreamAssetEvents"
                           ).raise_for_status().json()["asset_events"]
        assert [e["extra"]["run_id"] for e in upstream] == [run_id]

        export = topo.wait_for_run(api, export["dag_run_id"], timeout=600, dag_id=EXPORT_DAG)
        [event] = topo.asset_events(api, run_id)
        assert [(d["dag_id"], d["run_id"]) for d in event["created_dagruns"]] == [(EXPORT_DAG, export["dag_run_id"])]
        tis = {ti["task_id"]: ti for ti in topo.task_instances(api, export["dag_run_id"], dag_id=EXPORT_DAG)}
    assert tis["export_champion"]["state"] == "success", f"logs in {topo.home / 'logs'}"
    assert export["state"] == "success", {t: ti["state"] for t, ti in tis.items()}
    # the export is the promoted run's adapter, published under models/ in the same bucket
    keys = topo.s3_keys(f"{topo.store_prefix}/models/")
    [record_key] = [k for k in keys if k.endswith("/champion.json")]
    record = json.loads(topo.s3().get_object(Bucket=topo.bucket, Key=record_key)["Body"].read())
    assert (record["run_id"], record["cycle"]) == (run_id, 1)
    assert any(k.endswith("/hf/model.safetensors") for k in keys)


def test_an_unanswered_data_review_times_out_rejects_the_cycle_and_nothing_is_trained(topo):
    """The timeout takes the configured default (``review.dataset_default``: reject), and a rejected cycle stops
    the run cleanly: every later task skipped, no adapter, no results. The REST API's reject is the same
    answer as the default here; what each answer does is tests/test_pipeline_review.py's."""
    with topo.client() as api:
        run_id = _trigger(api, review_dataset=True, review_promotion=True, review_timeout="20s")
        topo.wait_for_review(api, run_id, DATASET_REVIEW, PARK_WAIT_S)
        _no_slot_held(api)
        run, states = _finished(topo, api, run_id)  # the scheduler's sweep applies the default after 20 s
        detail = api.get(AirflowTopology.hitl_url(run_id, DATASET_REVIEW)).raise_for_status().json()
    assert run["state"] == "success" and states[DATASET_REVIEW] == "success", states
    assert detail["chosen_options"] == [REJECT] and detail["responded_by_user"] is None
    decision = _s3_json(topo, review_key(run_id, "dataset", 1))
    assert (decision["outcome"], decision["by"], decision["timed_out"]) == ("rejected", None, True)
    later = ("cycle_1.finetune_student", "cycle_1.save_adapter", PROMOTION_REVIEW, "save_pipeline_results",
             "pipeline_complete", "show_sample_qa_pairs")
    assert {task: states[task] for task in later} == dict.fromkeys(later, "skipped")
    keys = topo.s3_keys(f"{topo.store_prefix}/{run_key(run_id)}/")
    assert not [k for k in keys if "/adapter" in k or k.endswith("/results.json")]
    with topo.client() as api:
        assert topo.asset_events(api, run_id) == []  # nothing trained: no champion announced
