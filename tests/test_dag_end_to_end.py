"""The DAG end to end with `dag.test()`: 2 cycles x 3 questions on the embedded teacher and judge
with a tiny random Phi-2 student that reads the knowledge base first (the trigger form's
read_knowledge_base, one epoch); then a middle task fails on purpose and the same run is rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest

from fixtures_reliability import STABLE
from kdflow.config import load_config
from kdflow.gold import BUILTIN_GOLD, load_gold, scored_gold
from kdflow.pipeline.registry import CYCLE_STEPS, FINAL_STEPS, SETUP_STEPS
from kdflow.pipeline.spec import DAG_ID
from kdflow.store import ArtifactStore, run_key

pytestmark = pytest.mark.slow

DAGS = Path(__file__).resolve().parents[1] / "dags"
LOGICAL_DATE = pendulum.datetime(2026, 11, 20, 2, tz="UTC")


@pytest.fixture(scope="module")
def e2e_env(tmp_path_factory, tiny_phi_dir):
    store = tmp_path_factory.mktemp("e2e-store")
    env = {
        "KDFLOW__STORE__URL": str(store),
        "KDFLOW__STUDENT__MAX_NEW_TOKENS": "24",
        "KDFLOW__STUDENT__EPOCHS": "2",
        "KDFLOW__STUDENT__KB_READING__EPOCHS": "1",
        "KDFLOW__TEACHER__MAX_TOKENS": "160",
        "KDFLOW__EVALUATION__RELEVANCY_STRICTNESS": "1",  # one judge question per answer keeps CI time down
        "KDFLOW__EVALUATION__CEILING_PER_TOPIC": "1",  # the open-book ceiling on 3 of the scored gold questions
        "KDFLOW__EVALUATION__GOLD_PER_TOPIC": "24",  # the student on 72 gold questions, as `make run` does
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True)
    yield {"store": ArtifactStore(str(store)), "student": str(tiny_phi_dir)}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS)).dags[DAG_ID]


def _conf(e2e_env):
    return {"cycles": 2, "questions_per_cycle": 3, "held_out_per_topic": 1, "student_model": e2e_env["student"],
            "read_knowledge_base": "true"}


def _data_hashes(store: ArtifactStore, run_id: str) -> dict[str, str]:
    manifest = store.manifest(run_id)
    return {name: entry["sha256"] for name, entry in manifest.items() if name.split(".")[-1] in STABLE}


def _report_file(store: ArtifactStore, run_id: str, name: str) -> bytes:
    """A file of the run's report, found as every reader finds it: through the run manifest."""
    return store.folder_file(store.checkpoint_pointer(run_id, "report"), name)


@pytest.fixture(scope="module")
def clean_run(dag, e2e_env):
    run = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=_conf(e2e_env))
    assert run.state == "success"
    return run


def test_clean_run_publishes_every_checkpoint(clean_run, e2e_env):
    store, run_id = e2e_env["store"], clean_run.run_id
    manifest = store.manifest(run_id)
    for cycle in (1, 2):
        for name in ("start", "questions", "baseline_model", "baseline_answers", "references", "baseline_scores",
                     "baseline_aggregate", "dataset", "adapter", "training", "finetuned_model", "finetuned_answers",
                     "finetuned_scores", "finetuned_aggregate", "comparison", "improvement", "results"):
            assert f"cycle_{cycle}.{name}" in manifest, f"cycle_{cycle}.{name} missing"
    for name in ("run", "config", "knowledge_base", "topics", "student_base", "held_out", "all_cycles", "overall",
                 "results", "report", "completion"):
        assert name in manifest, name
    # every pointer in the manifest verifies against the object it points at
    for entry in manifest.values():
        store.read_verified(entry)
    # 3 + 3 = 6 accumulated training pairs by cycle 2, none of them held out
    dataset = store.read_jsonl(manifest["cycle_2.dataset"])
    assert len(dataset) == 6 and {row["cycle"] for row in dataset} == {1, 2}
    held_out = {q["id"] for q in store.read_jsonl(manifest["held_out"])}
    assert held_out and not held_out & {row["question_id"] for row in dataset}
    # cycle 2 started from cycle 1's adapter, with new questions
    start = store.read_json(manifest["cycle_2.start"])
    assert start["start_adapter"]["key"] == manifest["cycle_1.adapter"]["key"]
    q1 = {q["question"] for q in store.read_jsonl(manifest["cycle_1.questions"])}
    q2 = {q["question"] for q in store.read_jsonl(manifest["cycle_2.questions"])}
    assert len(q1) == len(q2) == 3 and not q1 & q2
    # the report covers both cycles
    report = json.loads(_report_file(store, run_id, "report.json"))
    assert [c["cycle"] for c in report["cycles"]] == [1, 2]
    html = _report_file(store, run_id, "report.html").decode()
    assert "Cycle 1" in html and "Cycle 2" in html


def test_the_gold_set_is_answered_at_the_start_and_after_each_cycle_and_leads_the_report(clean_run, e2e_env):
    store, run_id = e2e_env["store"], clean_run.run_id
    manifest = store.manifest(run_id)
    gold = {row["id"] for row in store.read_jsonl(manifest["gold"])}
    shipped = load_gold(BUILTIN_GOLD).items
    assert gold == {item.id for item in shipped}  # the whole set is published: decontamination protects all of it
    sample = {f"gold-{item.id}" for item in scored_gold(load_config({"evaluation": {"gold_per_topic": 24}},
                                                                    environ={}), shipped)}
    assert len(sample) == 72
    rows = {(n, stage): store.read_jsonl(manifest[f"cycle_{n}.{stage}_answers"]) for n in (1, 2)
            for stage in ("baseline", "finetuned")}
    answered = {(n, stage, row["stage"]): set() for (n, stage), found in rows.items() for row in found}
    for (n, stage), found in rows.items():
        for row in found:
            if row["split"] == "gold":
                answered[(n, stage, row["stage"])].add(row["question_id"])
    # the student before it read the knowledge base and the start model (cycle 1's baseline: the read student),
    # then each cycle's adapter, on the same seeded sample; cycle 2's baseline model is cycle 1's adapter
    assert answered[(1, "baseline", "unread")] == answered[(1, "baseline", "baseline")] == sample
    assert answered[(1, "finetuned", "finetuned")] == answered[(2, "finetuned", "finetuned")] == sample
    assert answered[(2, "baseline", "baseline")] == set()
    base = store.read_json(manifest["student_base"])
    assert base["read"] and base["epochs"] == 1 and base["documents"] > 100
    assert {r["model"] for r in rows[(1, "baseline")] if r["stage"] == "baseline"} == {base["base_model"]}
    ceiling = store.read_jsonl(manifest["gold_ceiling"])
    assert sorted(row["topic"] for row in ceiling) == ["pods", "services",
                                                       "storage"] and all("key_fact_recall" in r["scores"]
                                                                          for r in ceiling)
    report = json.loads(_report_file(store, run_id, "report.json"))
    verdict = report["verdict"]
    assert verdict["items"] == 72 and verdict["set_items"] == len(shipped)
    assert verdict["start_model"] == "base model before reading the knowledge base" and verdict["last_cycle"] == 2
    lead = verdict["overall"]["key_fact_recall"]
    assert lead["n"] == 72 and lead["verdict"] in ("improved", "regressed",
                                                   "no detectable change") and lead["mde"] is not None
    assert lead["gap_closed"]["n"] == 3
    assert [step["step"] for step in verdict["per_cycle"]] == ["reading", "cycle 1", "cycle 2"]
    md = _report_file(store, run_id, "report.md").decode()
    assert md.split("\n\n")[2].startswith(f"VERDICT: Gold set (a stratified sample of 72 of its {len(shipped)} "
                                             "questions), key_fact_recall: base model before reading")
    assert "Before cycle 1 the student read the knowledge base" in md
    assert "on a stratified sample of 3 of 72 questions" in md
    roles = {r["role"]: r for r in report["roles"]}
    assert roles["teacher"]["where"].startswith("local") and roles["student"]["model"] == e2e_env["student"]
    assert report["usage"]["total"]["cost_usd"] == 0  # the embedded teacher bills nothing


def test_the_benchmark_reads_the_run_timing_from_the_metadata_db(dag, clean_run):
    """kdflow.bench's Airflow section: the run's wall time vs its task instances, from the real DB."""
    from kdflow.bench.airflow import run_timing

    timing = run_timing(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db", clean_run.run_id)
    assert (timing["run_id"], timing["state"], timing["task_instances"]) == (clean_run.run_id,
                                                                             "success", len(dag.task_ids))
    assert 0 < timing["task_sum_s"] < timing["run_wall_s"] and 0 < timing["outside_tasks_share"] < 1
    assert len(timing["slowest_tasks"]) == 5 and all(t in dag.task_ids for t in timing["slowest_tasks"])


def test_xcom_carries_pointers_only(clean_run):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.run_id == clean_run.run_id).all()
        assert rows
        for row in rows:
            assert len(str(row.value)) < 2000, (row.task_id, len(str(row.value)))


def test_a_failed_middle_task_reruns_to_the_same_checkpoints(dag, clean_run, e2e_env, monkeypatch):
    store, run_id = e2e_env["store"], clean_run.run_id
    before = _data_hashes(store, run_id)
    base_before = store.checkpoint_pointer(run_id, "student_base").sha256
    usage_before = {k: store.read_bytes(k) for k in store.list_keys(run_key(run_id, "usage"))}
    monkeypatch.setenv("KDFLOW_FAIL_STEP", "cycle_2.finetune_student")
    failed = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=_conf(e2e_env))
    assert failed.run_id == run_id and failed.state == "failed"
    states = {ti.task_id: ti.state for ti in failed.get_task_instances()}
    assert states["cycle_2.finetune_student"] == "failed"
    assert states["cycle_2.save_adapter"] == "upstream_failed"
    assert states["cycle_1.save_cycle_results"] == "success"
    monkeypatch.delenv("KDFLOW_FAIL_STEP")
    rerun = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=_conf(e2e_env))
    assert rerun.state == "success"
    assert _data_hashes(store, run_id) == before
    assert store.checkpoint_pointer(run_id, "student_base").sha256 == base_before  # the reading reused, same record
    # every teacher and judge answer of the reruns came from the cache: each usage record a rerun
    # rewrote shows cache hits only (steps that needed no teacher call left theirs as they were)
    rewritten = [k for k in store.list_keys(run_key(run_id, "usage")) if store.read_bytes(k) != usage_before.get(k)]
    assert rewritten
    for key in rewritten:
        usage = store.read_json(key)["total"]
        assert usage["calls"] == 0 and usage["cache_hits"] > 0, (key, usage)
    # no duplicate or stale objects beside the checkpoints
    keys = store.list_keys(run_key(run_id, "cycle_2"))
    assert len(keys) == len(set(keys))
    assert not [k for k in keys if ".tmp-" in k]


def test_fewer_cycles_skip_the_later_groups(dag, e2e_env):
    conf = {**_conf(e2e_env), "cycles": 1, "questions_per_cycle": 1, "topics": ["pods"], "held_out_per_topic": 0}
    run = dag.test(logical_date=LOGICAL_DATE.add(days=1), run_after=LOGICAL_DATE.add(days=1), run_conf=conf)
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["cycle_1.save_cycle_results"] == "success"
    assert states["cycle_2.cycle_start"] == "skipped"
    assert {s for t, s in states.items() if t.startswith("cycle_2.")} == {"skipped"}
    assert states["show_sample_qa_pairs"] == "success"
    reviews = [t for t in states if t.rsplit(".", 1)[-1].startswith("review_")]  # issue 21's, beyond the diagram
    assert len(reviews) == 3 + 1 and states["cycle_1.review_dataset"] == "success"  # off: finished without asking
    assert len(SETUP_STEPS) + len(FINAL_STEPS) + len(CYCLE_STEPS) * 3 + len(reviews) == len(states)
