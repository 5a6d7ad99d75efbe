"""What the benchmark sections share: the repository root, the load average noted beside every
number, and one ``python -m kdflow run`` in a fresh process with its per-step times."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
# The runner prints one line per step: "[12/61] cycle 1 generate_questions: 41.0s".
STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\] (?:cycle (\d+) )?(\w+): ([\d.]+)s$")


def load_average() -> float:
    """1-minute load average, recorded beside each measurement (other engineers share the CPUs)."""
    return round(os.getloadavg()[0], 2)


# The benches time `make run`'s workload, which does not read the knowledge base first (scripts/run-dag.sh): the
# first reading alone takes ~14 min and would be timed once per fresh store.
NO_READING_SETTING = "student.kb_reading.enabled=false"
NO_READING = ("--set", NO_READING_SETTING)


def run_cli(store: Path, run_id: str, cycles: int, questions: int, *, code: Path | None = None,
             extra: Sequence[str] = ()) -> dict[str, Any]:
    """One ``python -m kdflow run`` in a fresh process: wall time (imports included) and step times.
    ``code``: another checkout's ``include`` folder to run instead of this one (same virtualenv)."""
    cmd = [sys.executable, "-m", "kdflow", "run", "--cycles", str(cycles), "--questions", str(questions),
           "--store", str(store), "--run-id", run_id, *extra]
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDFLOW")}
    env.update({"RAGAS_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])
    load, started = load_average(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run {run_id} failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1:]}")
    steps = [{"step": m[4], "cycle": int(m[3]) if m[3] else None, "seconds": float(m[5])}
             for m in (STEP_LINE.match(line.strip()) for line in proc.stdout.splitlines()) if m]
    step_sum = sum(s["seconds"] for s in steps)
    return {"command": " ".join(["python", *cmd[1:]]), "wall_s": round(wall, 1), "steps_sum_s": round(step_sum, 1),
            "outside_steps_share": round(1 - step_sum / wall, 3), "load_avg_before": load,
            "load_avg_after": load_average(), "steps": steps}
