"""Benchmark section ``airflow``: the DAG end to end under Airflow (``airflow dags test``, what
``make run`` does), and the share of the run's wall time spent outside its task instances
(scheduling between tasks), read from the run's own metadata database.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from kdflow.bench.runner import ROOT, load_average

RUN_DAG = ROOT / "scripts" / "run-dag.sh"


def run_timing(database: Path, run_id: str | None = None) -> dict[str, Any]:
    """Wall time of a DAG run (default: the latest), from the scheduling of its first task to the
    end of its last (``dag.test`` records the logical date as the run's start), and its task
    instances' durations."""
    with sqlite3.connect(database) as db:
        where, args = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        run_id, state = db.execute(f"SELECT run_id, state FROM dag_run {where} ORDER BY start_date DESC LIMIT 1",
                                   args).fetchone()
        tasks = db.execute("SELECT task_id, duration, COALESCE(scheduled_dttm, start_date), end_date FROM "
                           "task_instance WHERE run_id = ?", (run_id,)).fetchall()
    ran = [(dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end))
           for _, _, start, end in tasks if start and end]
    wall = (max(end for _, end in ran) - min(start for start, _ in ran)).total_seconds()
    in_tasks = sum(duration or 0.0 for _, duration, _, _ in tasks)
    slowest = sorted(((duration or 0.0, task) for task, duration, _, _ in tasks), reverse=True)[:5]
    return {"run_id": run_id, "state": state, "task_instances": len(tasks), "run_wall_s": round(wall, 1),
            "task_sum_s": round(in_tasks, 1), "outside_tasks_share": round(1 - in_tasks / wall, 3),
            "slowest_tasks": {task: round(seconds, 1) for seconds, task in slowest}}


def airflow_run(cycles: int = 2, questions: int = 3) -> dict[str, Any]:
    """``scripts/run-dag.sh`` with a fresh Airflow home (SQLite) and a fresh store."""
    home = Path(tempfile.mkdtemp(prefix="kdflow-bench-airflow-"))
    conf = {"cycles": cycles, "questions_per_cycle": questions}
    env = {**os.environ, "AIRFLOW_HOME": str(home), "KDFLOW__STORE__URL": str(home / "store"),
           "KDFLOW_CONF": json.dumps(conf)}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)  # the run's own SQLite in the fresh home, read below
    load, started = load_average(), time.perf_counter()
    done = subprocess.run(["bash", str(RUN_DAG)], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        raise RuntimeError(f"{RUN_DAG.name} failed (exit {done.returncode}); log: {home / 'last-dag-test.log'}")
    return {"command": f"KDFLOW_CONF='{json.dumps(conf)}' bash scripts/run-dag.sh (fresh AIRFLOW_HOME and store)",
            "wall_s": wall, "load_avg_before": load, "load_avg_after": load_average(),
            **run_timing(home / "airflow.db")}
