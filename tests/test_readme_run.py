"""README's first command, as a user runs it: scripts/run-dag.sh (what `make run` calls after setup)
runs the knowledge_distillation DAG with `airflow dags test` in a fresh Airflow home, then prints
where the report is and its tables. Smallest run: one cycle, one question, the tiny student; the
teacher and judge are the real embedded llama.cpp servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_run_command_runs_the_dag_and_prints_the_report(tmp_path, tiny_phi_dir):
    store = tmp_path / "artifacts"
    conf = {"cycles": 1, "questions_per_cycle": 1, "topics": ["pods"], "held_out_per_topic": 0,
            "student_model": str(tiny_phi_dir)}
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "KDFLOW__STORE__URL": str(store),
           "KDFLOW_CONF": json.dumps(conf), "KDFLOW__STUDENT__MAX_NEW_TOKENS": "12", "KDFLOW__STUDENT__EPOCHS": "1",
           "KDFLOW__EVALUATION__METRICS": "[semantic_similarity, rouge_l]",
           "KDFLOW__EVALUATION__TEACHER_CEILING": "false",  # the DAG end-to-end test covers the ceiling
           "KDFLOW__TRACKING__MLFLOW_URI": "embedded"}  # make run's default (the test session switches it off)
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)  # the script's own SQLite, as on a fresh machine
    done = subprocess.run(["bash", "scripts/run-dag.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)
    out = done.stdout
    assert done.returncode == 0, (out[-3000:], done.stderr[-3000:])

    # progress while it runs: each task as it finishes, then the run's state
    finished = re.findall(r"^\[run\] done: (\S+)$", out, re.MULTILINE)
    assert {"cycle_1.finetune_student", "pipeline_complete", "show_sample_qa_pairs"} <= set(finished), finished
    assert "[run] DAG run finished: success" in out
    # then where the report is and its headline table
    [report] = list(store.glob("runs/*/report/*/report.html"))  # the report folder's one (current) version
    assert str(report) in out or report.relative_to(store).as_posix() in out, out[-2000:]
    assert "semantic_similarity" in out and "cycle" in out.lower()
    # the verdict on the gold set comes before every other table: make run scores a stratified sample of 24 of
    # the 50 pods questions (evaluation.gold_per_topic)
    verdict = re.search(r"^VERDICT: Gold set \(a stratified sample of (\d+) of its (\d+) questions\), key_fact_recall: "
                        "base model", out, re.MULTILINE)
    assert verdict and (int(verdict.group(1)), int(verdict.group(2))) == (24, 50), out[-3000:]
    assert verdict.start() < out.index("split  metric")
    # tracked with no server: MLflow's SQLite store beside the store, one finished run named after the DAG run
    from mlflow import MlflowClient

    from kdflow.store import safe_part

    database = store / "mlflow" / "mlflow.db"
    assert f"[run] MLflow: {ROOT / '.venv' / 'bin' / 'mlflow'} ui --backend-store-uri sqlite:///{database}" in out
    client = MlflowClient(f"sqlite:///{database}")
    (run,) = client.search_runs([client.get_experiment_by_name("kdflow").experiment_id], "tags.`kdflow.level` = 'run'")
    assert safe_part(run.info.run_name) == report.parts[-4] and run.info.status == "FINISHED"
