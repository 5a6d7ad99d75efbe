"""Every run in MLflow (issue 19): a `make run`-sized run (2 cycles, embedded teacher, tiny student) tracks
into the embedded SQLite store beside its store, read back through ``MlflowClient``: params, per-cycle
metrics, the loss history, artifacts, the champion's registered version with alias ``champion``; tasks
rerun leave one MLflow run and no repeated points; tasks run with the tracker down succeed with a warning
and a health line; ``python -m kdflow track`` backfills the run from the store alone into the same MLflow
runs the live steps made; a refused promotion registers nothing; lineage names the store objects."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_reliability import smallest_overrides
from kdflow.pipeline.spec import DAG_ID
from kdflow.tracking.client import CHAMPION_ALIAS, flatten
from kdflow.tracking.hooks import champion_name

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN = "manual__tracked"
SECRET = "sk-tracking-SECRET-0123456789abcdef"


def _client(store: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{store / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(client, run_id: str, level: str):
    experiment = client.get_experiment_by_name("kdflow")
    return client.search_runs([experiment.experiment_id],
                              f"tags.`kdflow.run_id` = '{run_id}' and tags.`kdflow.level` = '{level}'")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_phi_dir):
    """The run, tracked with the defaults (tracking.mlflow_uri: embedded), promoted whatever it scores
    (margin -1); a secret in the environment that also appears in the knowledge base's name."""
    from kdflow.pipeline.runner import run_pipeline

    store = tmp_path_factory.mktemp("tracked") / "store"
    overrides = smallest_overrides(str(store), str(tiny_phi_dir), pipeline={"cycles": 2},
                                   knowledge_base={"name": f"Kubernetes {SECRET}"},
                                   promotion={"margin": -1.0, "topic_tolerance": 1.0},
                                   tracking={"mlflow_uri": "embedded"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", SECRET)
        outputs = run_pipeline(overrides, run_id=RUN)
    assert outputs["save_pipeline_results"]["summary"]["promoted"] is True
    return {"store": store, "overrides": overrides, "outputs": outputs, "client": _client(store)}


def test_one_mlflow_run_per_pipeline_run_with_tags_and_the_effective_config(tracked):
    from kdflow.store import ArtifactStore, run_key

    client = tracked["client"]
    (run,) = _runs(client, RUN, "run")
    assert run.info.run_name == RUN and run.info.status == "FINISHED"
    tags = run.data.tags
    kb = ArtifactStore(str(tracked["store"])).read_json(run_key(RUN, "knowledge_base.json"))
    assert tags["kdflow.dag_id"] == DAG_ID and tags["kdflow.kb_hash"] == kb["kb_hash"]
    assert tags["kdflow.student"] == tracked["overrides"]["student"]["model"]
    assert tags["kdflow.teacher"].startswith("embedded llama.cpp") and tags["kdflow.judge"] == tags["kdflow.teacher"]
    commit = tags.get("mlflow.source.git.commit")
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode == 0:
        # the checkout's commit when the run started (an ancestor of HEAD, or HEAD itself)
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", str(commit), "HEAD"], cwd=REPO)
        assert commit and ancestor.returncode == 0, commit
    params = run.data.params
    assert params["pipeline.cycles"] == "2" and params["student.epochs"] == "1"
    assert params["evaluation.metrics"] == '["semantic_similarity", "rouge_l"]'
    assert params["promotion.margin"] == "-1.0" and params["tracking.mlflow_uri"] == "embedded"
    assert len(params) == len(flatten(ArtifactStore(str(tracked["store"])).read_json(run_key(RUN, "config.json"))))
    everything = json.dumps([params, tags])
    assert SECRET not in everything and "***" in params["knowledge_base.name"]


def test_each_cycle_is_a_nested_run_with_its_numbers_and_loss_history(tracked):
    from kdflow.store import ArtifactStore

    client, store = tracked["client"], ArtifactStore(str(tracked["store"]))
    (parent,) = _runs(client, RUN, "run")
    cycles = sorted(_runs(client, RUN, "cycle"), key=lambda r: int(r.data.tags["kdflow.cycle"]))
    all_cycles = store.read_json(store.checkpoint_pointer(RUN, "all_cycles"))
    assert [r.data.tags["kdflow.cycle"] for r in cycles] == ["1", "2"]
    for n, run in enumerate(cycles, 1):
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        improvement = store.read_json(store.checkpoint_pointer(RUN, f"cycle_{n}.improvement"))
        row = improvement["held_out.semantic_similarity"]
        metrics = run.data.metrics
        for field in ("baseline_mean", "finetuned_mean", "mean_delta", "ci_low", "ci_high"):
            if row[field] is not None:
                assert metrics[f"held_out.semantic_similarity.{field}"] == pytest.approx(row[field])
        (entry,) = [e for e in all_cycles["gold"]["per_cycle"] if e["cycle"] == n]  # start or cycle n-1 -> cycle n
        gold = entry["metrics"]["key_fact_recall"]
        assert metrics["gold.key_fact_recall.finetuned_mean"] == pytest.approx(gold["after_mean"])
        assert metrics["gold.key_fact_recall.mean_delta"] == pytest.approx(gold["mean_delta"])
        training = store.read_json(store.checkpoint_pointer(RUN, f"cycle_{n}.training"))
        history = client.get_metric_history(run.info.run_id, "train.loss")
        history = sorted(history, key=lambda p: p.step)
        assert [p.step for p in history] == list(range(1, len(training["losses"]) + 1))
        assert [p.value for p in history] == pytest.approx(training["losses"])
        assert len(history) >= 1 and metrics["train.steps"] == training["steps"]
        # the settings training resolved from the model's architecture profile, beside the config's params
        assert run.data.params["train.learning_rate"] == str(training["profile"]["learning_rate"])
        assert run.data.params["train.epochs"] == str(training["profile"]["epochs"])
        assert run.data.params["train.model_type"] == training["profile"]["model_type"] == "phi"
        assert metrics["dataset.pairs"] >= 1 and "gate.questions_kept" in metrics
        artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"adapter", "dataset", "hf_dataset"} <= artifacts
        adapter = {f.path for f in client.list_artifacts(run.info.run_id, "adapter")}
        assert "adapter/adapter_model.safetensors" in adapter
        assert run.data.tags["kdflow.store.adapter"].startswith(store.url)
    # the run itself charts each cycle's numbers at step = cycle
    across = client.get_metric_history(parent.info.run_id, "held_out.semantic_similarity.finetuned_mean")
    assert sorted(p.step for p in across) == [1, 2]
    assert parent.data.metrics["usage.teacher.calls"] > 0 and "promotion.promoted" in parent.data.metrics


def test_the_report_and_results_are_artifacts_and_the_champion_is_registered(tracked):
    client = tracked["client"]
    (parent,) = _runs(client, RUN, "run")
    top = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"report", "results.json"} <= top
    report = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in report
    html = Path(client.download_artifacts(parent.info.run_id, "report/report.html")).read_text()
    assert "Tracked in MLflow at sqlite:///" in html and parent.info.run_id in html  # the health section
    assert parent.data.tags["kdflow.promotion"] == "promoted"
    name = champion_name(tracked["overrides"]["student"]["model"])
    version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    (last_cycle,) = [r for r in _runs(client, RUN, "cycle") if r.data.tags["kdflow.cycle"] == "2"]
    # the version belongs to the run holding its source (a tracking server insists): the last cycle's
    assert version.run_id == last_cycle.info.run_id and version.tags["kdflow.run_id"] == RUN
    assert version.tags["kdflow.cycle"] == "2" and version.source == f"{last_cycle.info.artifact_uri}/adapter"


def test_rerun_tasks_log_into_the_same_runs_without_repeating_points(tracked):
    from kdflow.pipeline import execute

    client, outputs, overrides = tracked["client"], tracked["outputs"], tracked["overrides"]
    (parent,) = _runs(client, RUN, "run")
    before = {r.info.run_id: r.data.metrics for r in _runs(client, RUN, "cycle")}
    loss = {rid: len(client.get_metric_history(rid, "train.loss")) for rid in before}
    execute("start_pipeline", run_id=RUN, overrides=overrides)
    execute("cycle_start", run_id=RUN, overrides=overrides, cycle=1)
    execute("finetuning_complete", run_id=RUN, overrides=overrides, cycle=1,
            inputs={"save_adapter": outputs["cycle_1.save_adapter"]})
    execute("save_cycle_results", run_id=RUN, overrides=overrides, cycle=1,
            inputs={k: outputs[f"cycle_1.{k}"] for k in ("compare_performance", "calculate_improvement_metrics")})
    final = {k: outputs[k] for k in ("compare_all_cycles", "calculate_overall_improvement")}
    execute("save_pipeline_results", run_id=RUN, overrides=overrides, inputs=final)
    assert [r.info.run_id for r in _runs(client, RUN, "run")] == [parent.info.run_id]
    after = _runs(client, RUN, "cycle")
    assert {r.info.run_id for r in after} == set(before)
    for run in after:
        assert run.data.metrics == pytest.approx(before[run.info.run_id])
        assert len(client.get_metric_history(run.info.run_id, "train.loss")) == loss[run.info.run_id]
    across = client.get_metric_history(parent.info.run_id, "held_out.semantic_similarity.finetuned_mean")
    assert sorted(p.step for p in across) == [1, 2]
    versions = client.search_model_versions(f"name = '{champion_name(overrides['student']['model'])}'")
    assert len(versions) == 1  # the rerun promoted the same run again: its one version


def test_tasks_run_with_the_tracker_down_succeed_with_a_warning_and_a_health_line(tracked, caplog):
    """The tracker at a closed port: the tasks rerun and succeed, each warns (with the backfill command),
    leaves a failure record, and the rebuilt report's health section says which steps could not log."""
    from conftest import free_port
    from kdflow.pipeline import execute
    from kdflow.store import ArtifactStore, run_key

    down = f"http://127.0.0.1:{free_port()}"
    overrides = {**tracked["overrides"], "tracking": {"mlflow_uri": down, "timeout_s": 2}}
    outputs = tracked["outputs"]
    caplog.set_level(logging.WARNING, logger="kdflow.tracking")
    execute("finetuning_complete", run_id=RUN, overrides=overrides, cycle=1,
            inputs={"save_adapter": outputs["cycle_1.save_adapter"]})
    final = {k: outputs[k] for k in ("compare_all_cycles", "calculate_overall_improvement")}
    result = execute("save_pipeline_results", run_id=RUN, overrides=overrides, inputs=final)
    warnings = [r.getMessage() for r in caplog.records if r.name == "kdflow.tracking"]
    assert len(warnings) == 2 and all(down in w and f"python -m kdflow track --run-id {RUN}" in w for w in warnings)
    store = ArtifactStore(str(tracked["store"]))
    failures = [k.rsplit("/", 1)[-1] for k in store.list_keys(run_key(RUN, "tracking", "failures"))]
    assert failures == ["cycle_1.finetuning_complete.json", "save_pipeline_results.json"]
    report = store.folder_file(result, "report.html").decode()  # built before its own step logged
    assert f"MLflow tracking at {down} failed in 1 step(s) (cycle_1.finetuning_complete)" in report
    assert f"python -m kdflow track --run-id {RUN}" in report
    # back up: the next try of a task logs, and its failure record goes
    execute("finetuning_complete", run_id=RUN, overrides=tracked["overrides"], cycle=1,
            inputs={"save_adapter": outputs["cycle_1.save_adapter"]})
    remaining = [k.rsplit("/", 1)[-1] for k in store.list_keys(run_key(RUN, "tracking", "failures"))]
    assert remaining == ["save_pipeline_results.json"]


def _snapshot(client, run_id: str) -> dict:
    """Everything a run holds that a backfill must reproduce, per level and cycle (ids left out)."""
    experiment = client.get_experiment_by_name("kdflow")
    found = client.search_runs([experiment.experiment_id], f"tags.`kdflow.run_id` = '{run_id}'")
    snapshot = {}
    for run in found:
        label = run.data.tags["kdflow.level"] + run.data.tags.get("kdflow.cycle", "")
        tags = {k: v for k, v in run.data.tags.items() if k.startswith("kdflow.") or k == "mlflow.source.git.commit"}
        snapshot[label] = {"name": run.info.run_name, "status": run.info.status, "params": run.data.params,
                           "metrics": run.data.metrics, "tags": tags,
                           "loss": [(p.step, p.value)
                                    for p in client.get_metric_history(run.info.run_id, "train.loss")],
                           "artifacts": sorted(f.path for f in client.list_artifacts(run.info.run_id))}
    return snapshot


def test_backfill_logs_a_run_from_the_store_alone_as_the_live_steps_did(tracked, tmp_path):
    """The store as a run from before this change left it (no tracking records), logged into a fresh
    MLflow store by `python -m kdflow track`: the same runs, params, metrics, curves, artifacts, champion."""
    from kdflow.store import ArtifactStore, run_key

    store = ArtifactStore(str(tracked["store"]))
    store.delete_prefix(run_key(RUN, "tracking"))
    fresh = f"sqlite:///{tmp_path / 'backfill' / 'mlflow.db'}"
    (tmp_path / "backfill").mkdir()
    done = subprocess.run([sys.executable, "-m", "kdflow", "track", "--run-id", RUN, "--store", str(tracked["store"]),
                           "--set", f"tracking.mlflow_uri={fresh}",
                           "--set", f"student.model={tracked['overrides']['student']['model']}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run {RUN}: MLflow run" in done.stdout and "left out" not in done.stdout
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=fresh, registry_uri=fresh)
    live, backfilled = _snapshot(tracked["client"], RUN), _snapshot(client, RUN)
    assert set(backfilled) == {"run", "cycle1", "cycle2"} == set(live)
    for label, entry in live.items():
        for part in ("name", "status", "params", "tags", "loss", "artifacts"):
            assert backfilled[label][part] == entry[part], (label, part)
        assert backfilled[label]["metrics"] == pytest.approx(entry[part := "metrics"]), (label, part)
    assert not (tmp_path / "mlruns").exists()  # the artifacts went beside the database
    name = champion_name(tracked["overrides"]["student"]["model"])
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).tags["kdflow.run_id"] == RUN


def test_a_refused_promotion_registers_nothing(tracked, tmp_path):
    """The final step again, with a margin no delta clears, logging into an empty MLflow store."""
    from mlflow import MlflowClient

    from kdflow.pipeline import execute

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = {**tracked["overrides"], "promotion": {"margin": 1.0}, "tracking": {"mlflow_uri": uri}}
    final = {k: tracked["outputs"][k] for k in ("compare_all_cycles", "calculate_overall_improvement")}
    result = execute("save_pipeline_results", run_id=RUN, overrides=overrides, inputs=final)
    assert result["summary"]["promoted"] is False
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (run,) = _runs(client, RUN, "run")
    assert run.data.tags["kdflow.promotion"] == "refused" and run.data.metrics["promotion.promoted"] == 0
    assert client.search_registered_models() == []
    execute("save_pipeline_results", run_id=RUN, overrides=tracked["overrides"], inputs=final)  # as it was


def test_a_steps_lineage_names_the_store_objects_it_read_and_published(tracked):
    """Cycle 2 starts from cycle 1's adapter: that folder is its input, its start record its output."""
    from kdflow.pipeline import run_step
    from kdflow.pipeline.context import RunContext
    from kdflow.pipeline.registry import ALL_STEPS
    from kdflow.store import ArtifactStore
    from kdflow.tracking.lineage import step_datasets

    overrides = {**tracked["overrides"], "tracking": {"mlflow_uri": None}}
    ctx = RunContext.create(RUN, overrides).for_step(ALL_STEPS["cycle_start"], 2)
    run_step(ctx)
    inputs, outputs = step_datasets(ctx)
    store = ArtifactStore(str(tracked["store"]))
    adapter = store.checkpoint_pointer(RUN, "cycle_1.adapter")
    assert inputs == [store.folder_url(adapter)] and store.folder_url(adapter).startswith("file:///")
    assert outputs == [store.checkpoint_pointer(RUN, "cycle_2.start").url]


def test_openlineage_events_of_a_task_name_the_store_objects(tmp_path):
    """A real task run (`airflow tasks test`) with the OpenLineage provider's file transport: its COMPLETE
    event names the run record it published as an output dataset."""
    import os

    airflow = str(Path(sys.executable).with_name("airflow"))
    events = tmp_path / "events.jsonl"
    store = tmp_path / "store"
    env = {**os.environ, "KDFLOW__STORE__URL": str(store), "AIRFLOW__OPENLINEAGE__NAMESPACE": "kdflow",
           "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events),
                                                          "append": True})}
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=env, timeout=300)
    done = subprocess.run([airflow, "tasks", "test", DAG_ID, "start_pipeline", "2026-11-20"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    emitted = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    complete = [e for e in emitted if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(".start_pipeline")]
    assert complete, [e["eventType"] for e in emitted]
    outputs = [(d["namespace"], d["name"]) for d in complete[-1]["outputs"]]
    (run_json,) = [name for namespace, name in outputs if namespace == "file" and name.endswith("/run.json")]
    assert run_json.startswith(f"{store.resolve()}/runs/") and Path(run_json).is_file()
    assert complete[-1]["job"]["namespace"] == "kdflow"
