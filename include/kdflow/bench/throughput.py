"""Benchmark section ``throughput`` (issue 17): questions per minute, today's code against the code
before issue 17, side by side in one benchmark run.

The code before is the commit :data:`BASELINE_COMMIT`, checked out into a temporary git worktree
and run with this virtualenv (its ``include`` folder first on PYTHONPATH). Both runs are the same
``python -m kdflow run`` on the embedded default with a fresh store each (no response cache), back
to back on the same machine; only the ratio is compared, as our CPUs are shared. A question costs
everything the pipeline spends on it: generation, gate, reference, baseline and fine-tuned answers,
judge, training, and the gold-set scoring of every cycle.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdflow.bench.runner import NO_READING_SETTING

# The last commit before issue 17's changes (main on 2026-12-02: pool of llama-cpp-python servers).
BASELINE_COMMIT = "ba153f4acf9f79c720736e081f724f3768dcacdb"
# The teacher's open-book ceiling on the gold set is cached per store; both sides sample it the same way.
COMMON_SETTINGS = ("evaluation.ceiling_per_topic=4",)
# The code before knows only its own 72 gold questions (24 per topic); this code answers as many, a stratified
# sample of its larger set, so both sides score the gold set with the same work.
# (and does not read the knowledge base first, which the code before could not do: see runner.NO_READING)
NOW_SETTINGS = ("evaluation.gold_per_topic=24", NO_READING_SETTING)
STEP_STAGES = {  # the rest (bookkeeping, report) is "other"
    "teacher questions (+ held-out, gold ceiling)": ("prepare_held_out_questions", "generate_questions"),
    "teacher references": ("generate_reference_answers",),
    "student answers (+ gold set)": ("load_student_model", "generate_baseline_answers", "load_finetuned_model",
                                     "generate_finetuned_answers"),
    "judge": ("evaluate_baseline", "evaluate_finetuned"),
    "training": ("prepare_training_dataset", "finetune_student"),
}


# The student's own work: answering (training questions, held-out and the gold set at every scoring point) and
# training on all pairs so far. What the run measures, not waiting on the teacher: no server change touches it.
STUDENT_STAGES = ("student answers (+ gold set)", "training")
GOAL = 4.0  # issue 17: four times the questions per minute of the code before it


def goal_budget(result: dict[str, Any], goal: float = GOAL) -> dict[str, float]:
    """What ``goal`` times the questions per minute asks of this run, in seconds: the whole run within
    the baseline's wall time / ``goal``; how much of that the student's own stages took now; and how
    fast everything else (teacher, judge, bookkeeping) would have to get in what is left. When the
    student's stages alone exceed the budget, no teacher or judge speed-up reaches the goal."""
    before, now = result["by_code"]["before"], result["by_code"]["now"]
    budget = before["wall_s"] / goal
    student = sum(now["stages_s"][stage] for stage in STUDENT_STAGES)  # every stage is in every run's table
    rest = now["wall_s"] - student
    left = budget - student
    return {"goal": goal, "budget_s": round(budget, 1), "student_s": round(student, 1), "rest_s": round(rest, 1),
            "left_s": round(left, 1), "rest_speedup_needed": round(rest / left, 1) if left > 0 else None}


def baseline_worktree(root: Path, commit: str, into: Path) -> Path:
    """A detached worktree of ``commit`` at ``into``; a clear error when the clone lacks the commit."""
    known = subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    if known.returncode != 0:
        raise RuntimeError(f"the throughput benchmark compares with commit {commit[:12]}, which this clone does not "
                           "have (a shallow clone?): git fetch --unshallow, or skip the section")
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "--force", str(into), commit],
                   check=True, capture_output=True)
    return into


def _stage_seconds(steps: list[dict[str, Any]]) -> dict[str, float]:
    by_stage = {stage: 0.0 for stage in STEP_STAGES}
    by_stage["other"] = 0.0
    for step in steps:
        stage = next((name for name, ids in STEP_STAGES.items() if step["step"] in ids), "other")
        by_stage[stage] += step["seconds"]
    return {stage: round(seconds, 1) for stage, seconds in by_stage.items()}


def throughput(cycles: int = 3, questions: int = 24, *, baseline: str = BASELINE_COMMIT,
               settings: Sequence[str] = COMMON_SETTINGS) -> dict[str, Any]:
    """The same run with the code of ``baseline`` and with this code: wall time, seconds per stage,
    questions per minute and their ratio (one run each: they take minutes to hours)."""
    from kdflow.bench.runner import ROOT, run_cli

    extra = [arg for setting in settings for arg in ("--set", setting)]
    now_extra = extra + [arg for setting in NOW_SETTINGS for arg in ("--set", setting)]
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-throughput-") as tmp:
        work = Path(tmp)
        tree = baseline_worktree(ROOT, baseline, work / "baseline")
        try:
            # This code first: a failure of the new code shows in minutes, not after the slower baseline.
            now = run_cli(work / "store-now", "bench", cycles, questions, extra=now_extra)
            before = run_cli(work / "store-before", "bench", cycles, questions, code=tree / "include", extra=extra)
            runs = {"before": before, "now": now}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    asked = cycles * questions
    result: dict[str, Any] = {"cycles": cycles, "questions_per_cycle": questions, "baseline_commit": baseline,
                              "settings": list(settings), "now_settings": list(NOW_SETTINGS), "runs": 1,
                              "by_code": {}}
    for name, run in runs.items():
        result["by_code"][name] = {
            "command": run["command"], "wall_s": run["wall_s"], "load_avg_before": run["load_avg_before"],
            "load_avg_after": run["load_avg_after"], "questions_per_min": round(asked / (run["wall_s"] / 60), 2),
            "stages_s": _stage_seconds(run["steps"]),
        }
    before, now = result["by_code"]["before"], result["by_code"]["now"]
    result["speedup"] = round(now["questions_per_min"] / before["questions_per_min"], 2)
    return result
