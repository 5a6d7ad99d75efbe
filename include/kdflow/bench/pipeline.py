"""Benchmark of the whole pipeline and of each stage (issue 9): ``python -m kdflow.bench``.

Our machines are shared and noisy, so every measurement carries the load average taken beside
it, the cheap ones are medians of several runs, and comparisons (batched vs one-by-one, cold vs
warm) are ratios measured side by side in one process. Results go to ``results.json`` (merged
section by section, so an expensive section can be rerun alone) and ``results.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kdflow.bench.judge import render as render_judge_output
from kdflow.bench.runner import NO_READING, ROOT, load_average, run_cli
from kdflow.bench.throughput import goal_budget

DAGS = ROOT / "dags"
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
SECTIONS = ("parse", "load", "generation", "teacher_server", "judge_output", "e2e", "airflow", "throughput")
# Stages of the issue -> the runner's step ids that make them up (model loads count with the answers).
STAGES = {
    "held_out_questions": ("prepare_held_out_questions",),
    "teacher_questions": ("generate_questions",),
    "references": ("generate_reference_answers",),
    "baseline_answers": ("load_student_model", "generate_baseline_answers"),
    "evaluation": ("evaluate_baseline", "evaluate_finetuned"),
    "fine_tune": ("finetune_student",),
    "finetuned_answers": ("load_finetuned_model", "generate_finetuned_answers"),
}
# Stages -> the labels their teacher/judge usage ledgers are saved under (runs/<id>/usage/<scope>__<label>.json).
LEDGERS = {
    "held_out_questions": ("held_out_questions",), "teacher_questions": ("questions",),
    "references": ("references", "reference_judge"), "evaluation": ("judge_baseline", "judge_finetuned"),
}
BENCH_QUESTIONS = [
    "What is a Pod?", "What does a Service do?", "What is a PersistentVolume?", "How does a ClusterIP Service work?",
    "What is a StorageClass used for?", "What happens when a Pod's container crashes?", "What is a headless Service?",
    "How does a PersistentVolumeClaim bind to a volume?",
]


def timed_median(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Median, min and all wall times of ``repeats`` calls, with the load average before each."""
    times, loads = [], []
    for _ in range(repeats):
        loads.append(load_average())
        started = time.perf_counter()
        fn()
        times.append(round(time.perf_counter() - started, 4))
    return {"median_s": round(statistics.median(times), 4), "min_s": min(times), "runs_s": times, "load_avg": loads}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {
        "nproc": os.cpu_count(), "cpu_model": cpu, "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "load_avg": load_average(),
    }


def parse_time(repeats: int = 5, dags: Path = DAGS) -> dict[str, Any]:
    """DAG folder parse time: median of warm in-process DagBag fills (what the scheduler repeats)."""
    from airflow.dag_processing.dagbag import DagBag

    first = DagBag(dag_folder=str(dags))  # warm the imports; a parse error must not become a fast number
    if first.import_errors or not first.dag_ids:
        raise RuntimeError(f"DAG folder {dags} does not parse: {first.import_errors or 'no DAGs'}")
    return {"dags": list(first.dag_ids), **timed_median(lambda: DagBag(dag_folder=str(dags)), repeats)}


def generation_comparison(model_path: Path | str, *, batch_sizes: Sequence[int] = (1, 4, 8),
                          questions: Sequence[str] = BENCH_QUESTIONS,
                          max_new_tokens: int = 64, repeats: int = 3, threads: int = 1) -> dict[str, Any]:
    """Tokens/s answering ``questions`` one by one vs in batches of each size, one model load,
    every round measuring each mode back to back; speedup = median batched / median one-by-one."""
    from kdflow.student.device import DevicePlan
    from kdflow.student.generate import generate_batch, set_torch_threads
    from kdflow.student.models import load_student
    from kdflow.student.prompt import build_prompt

    set_torch_threads(threads)
    model, tokenizer = load_student(model_path, DevicePlan.cpu(reason="benchmark"))
    prompts = [build_prompt(tokenizer, q, None) for q in questions]

    def rate(size: int) -> tuple[float, float]:
        load, started = load_average(), time.perf_counter()
        tokens = sum(count for start in range(0, len(prompts), size)
                     for _text, count in generate_batch(model, tokenizer,
                                                        prompts[start : start + size], max_new_tokens))
        return tokens / (time.perf_counter() - started), load

    sizes = sorted({1, *batch_sizes})
    rounds: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
    for _ in range(repeats):
        for size in sizes:
            rounds[size].append(rate(size))
    one_by_one = statistics.median(r for r, _ in rounds[1])
    results = {
        str(size): {"tokens_per_s_median": round(statistics.median(r for r, _ in runs), 2),
                    "tokens_per_s_runs": [round(r, 2) for r, _ in runs], "load_avg": [lo for _, lo in runs],
                    "speedup_vs_one_by_one": round(statistics.median(r for r, _ in runs) / one_by_one, 2)}
        for size, runs in rounds.items()
    }
    return {"model": str(model_path), "questions": len(prompts), "max_new_tokens": max_new_tokens, "repeats": repeats,
            "threads": threads, "by_batch_size": results}


def model_load(repeats: int = 3) -> dict[str, Any]:
    """Embedded student: cold (GGUF conversion into a fresh cache, then load) vs warm (cached folder)."""
    from kdflow.student.device import DevicePlan
    from kdflow.student.models import load_student, resolve_student

    plan = DevicePlan.cpu(reason="benchmark")
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-models-") as cache:
        load, started = load_average(), time.perf_counter()
        folder = resolve_student("embedded", cache_dir=cache)
        load_student(folder, plan)
        cold = {"seconds": round(time.perf_counter() - started, 3), "load_avg": load, "runs": 1}
        warm = timed_median(lambda: load_student(resolve_student("embedded", cache_dir=cache), plan), repeats)
    return {"cold": cold, "warm": warm, "cold_over_warm": round(cold["seconds"] / warm["median_s"], 1)}


def _usage(store: Path, run_id: str, since: float = 0.0) -> dict[str, dict[str, Any]]:
    """Teacher/judge ledgers of a run by task label (``cycle_1__questions`` ...), only those written
    after ``since`` (a task that opens no LLM session on a rerun leaves the first run's ledger)."""
    ledgers = sorted((store / "runs" / run_id / "usage").glob("*.json"))
    return {p.stem: json.loads(p.read_text())["total"] for p in ledgers if p.stat().st_mtime >= since}


def _stage_table(run: dict[str, Any], usage: dict[str, dict[str, Any]], store: Path, run_id: str) -> dict[str, Any]:
    """Per stage: seconds (summed over cycles), calls, cache hits and tokens/s (teacher tokens or student tokens)."""
    run_dir = store / "runs" / run_id
    pointers = [json.loads(p.read_text()) for p in (run_dir / "manifest").glob("*.json")]
    stages: dict[str, Any] = {}
    for stage, step_ids in STAGES.items():
        seconds = sum(s["seconds"] for s in run["steps"] if s["step"] in step_ids)
        ledgers = [row for label, row in usage.items() if label.split("__", 1)[-1] in LEDGERS.get(stage, ())]
        row: dict[str, Any] = {"seconds": round(seconds, 1), "calls": sum(r["calls"] for r in ledgers),
                               "cache_hits": sum(r["cache_hits"] for r in ledgers)}
        completion = sum(r["completion_tokens"] for r in ledgers)
        if completion:
            row["tokens_per_s"] = round(completion / max(sum(r["seconds"] for r in ledgers), 1e-9), 1)
        if stage.endswith("_answers"):
            rates = [p["summary"]["tokens_per_s"] for p in pointers
                     if str(p.get("key", "")).endswith(f"{stage}.jsonl") and "tokens_per_s" in p.get("summary", {})]
            if rates:
                row["tokens_per_s"] = round(statistics.median(rates), 1)
        if stage == "fine_tune":
            records = [json.loads(p.read_text()) for p in sorted(run_dir.glob("cycle_*/training.json"))]
            if records:
                row["tokens_per_s"] = round(statistics.median(r["tokens_per_s"] for r in records), 1)
                row["peak_memory_mb"] = max(r["peak_memory_mb"] for r in records)
                row["s_per_step"] = round(statistics.median(r["s_per_step"] for r in records), 2)
        stages[stage] = row
    known = {label for labels in LEDGERS.values() for label in labels}
    other = [row for label, row in usage.items() if label.split("__", 1)[-1] not in known]
    if other:  # a new LLM task nobody mapped: counted, not lost
        stages["other_llm_tasks"] = {"calls": sum(r["calls"] for r in other),
                                     "cache_hits": sum(r["cache_hits"] for r in other)}
    return stages


def end_to_end(store: Path | None = None, *, cycles: int = 2, questions: int = 3,
               run_id: str = "bench") -> dict[str, Any]:
    """The embedded default end to end (one run: it takes minutes), then the same run id again,
    which must be served from the store and the response cache: 0 teacher and 0 judge calls."""
    store = Path(store or tempfile.mkdtemp(prefix="kdflow-bench-store-"))
    first = run_cli(store, run_id, cycles, questions, extra=NO_READING)
    first_usage = _usage(store, run_id)
    stages = _stage_table(first, first_usage, store, run_id)
    rerun_started = time.time()
    rerun = run_cli(store, run_id, cycles, questions, extra=NO_READING)
    rerun_usage = _usage(store, run_id, since=rerun_started)
    return {
        "store": str(store), "run_id": run_id, "cycles": cycles, "questions": questions, "runs": 1,
        "first": first, "stages": stages,
        "rerun": {**{k: rerun[k] for k in ("wall_s", "steps_sum_s", "load_avg_before")},
                  "teacher_and_judge_calls": sum(r["calls"] for r in rerun_usage.values()),
                  "calls_by_task": {label: r["calls"] for label, r in rerun_usage.items() if r["calls"]},
                  "cache_hits": sum(r["cache_hits"] for r in rerun_usage.values()),
                  "first_run_calls": sum(r["calls"] for r in first_usage.values()),
                  "wall_ratio_vs_first": round(rerun["wall_s"] / first["wall_s"], 3)},
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    fmt = lambda v: "–" if v is None else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(fmt(v) for v in r) + " |" for r in rows), ""]


STANDING_NOTES = [
    "End to end and rerun are one run each (minutes per run); parse, load and generation numbers are medians.",
    "Two orchestration shares: the CLI runner's (its per-step times vs the process wall time: imports, process start, "
    "report) and Airflow's (the DAG run's wall time vs its task instances' durations: scheduling between tasks; "
    "per-task imports and model loads count inside the task durations).",
    "QLoRA 4-bit vs 16-bit LoRA on a GPU was not measured: no GPU was available to this session; "
    "the training numbers are CPU LoRA (the device plan's CPU branch: float32, or bf16 autocast where the CPU has "
    "bf16 in hardware, `student.cpu_dtype`).",
]


def goals(results: dict[str, Any]) -> list[list[Any]]:
    """The issue's goals against the measured numbers: [goal, measured, met]."""
    rows: list[list[Any]] = []
    if e2e := results.get("e2e"):
        wall, share = e2e["first"]["wall_s"], e2e["first"]["outside_steps_share"]
        rows += [["end to end under 6 min on 2 CPU cores (CLI runner)", f"{wall / 60:.1f} min", wall < 360],
                 ["orchestration under 10 % of wall time (CLI runner: outside steps)", f"{share:.1%}", share < 0.10],
                 ["rerun makes 0 teacher and 0 judge calls", e2e["rerun"]["teacher_and_judge_calls"],
                  e2e["rerun"]["teacher_and_judge_calls"] == 0]]
    if air := results.get("airflow"):
        rows += [["end to end under 6 min, under Airflow (`airflow dags test`)", f"{air['run_wall_s'] / 60:.1f} min",
                  air["run_wall_s"] < 360],
                 ["orchestration under 10 % of wall time (Airflow: run wall outside task instances)",
                  f"{air['outside_tasks_share']:.1%}", air["outside_tasks_share"] < 0.10]]
    if rate := results.get("throughput"):
        size = f"{rate['cycles']} x {rate['questions_per_cycle']}"
        rows.append([f"questions per minute >= 4x the code before issue 17 ({size}, side by side)",
                     f"{rate['speedup']}x", rate["speedup"] >= 4])
    if gen := results.get("generation"):
        top = max(gen["by_batch_size"], key=int)
        speedup = gen["by_batch_size"][top]["speedup_vs_one_by_one"]
        rows.append([f"batched generation >= 3x one by one at batch {top}", f"{speedup}x", speedup >= 3])
    return rows


def render_markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables, with the machine and the commands that produced them."""
    m = results["machine"]
    lines = [
        "# kdflow benchmark results", "",
        f"Measured {results['measured_at']} on {m['nproc']} CPU cores ({m['cpu_model']}), {m['memory_gib']} GiB "
        f"memory, Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, GPU: "
        f"{m['gpu'] or 'none'}. The machine is shared with other engineers: load averages (1 min) are noted beside "
        "each number; compare ratios measured side by side rather than absolute seconds.", "",
        "Commands: " + "; ".join(f"`{c}`" for c in results["commands"]), "",
    ]
    if verdicts := goals(results):
        lines += ["## Goals (issues 9 and 17)", ""]
        lines += _table(["goal", "measured", "met"], [[g, m, "yes" if ok else "**no**"] for g, m, ok in verdicts])
    if e2e := results.get("e2e"):
        first, rerun = e2e["first"], e2e["rerun"]
        lines += ["## End to end", "", f"Embedded default, {e2e['cycles']} cycles x {e2e['questions']} questions, "
                  f"one run (minutes each; not a median): `{first['command']}`.", ""]
        lines += _table(["measure", "value", "load avg"], [
            ["wall time (fresh process, empty store)", f"{first['wall_s']} s", first["load_avg_before"]],
            ["sum of step times", f"{first['steps_sum_s']} s", None],
            ["share outside step compute (imports, process start, report)",
             f"{first['outside_steps_share']:.1%}", None],
            ["rerun of the same run id: wall time",
             f"{rerun['wall_s']} s ({rerun['wall_ratio_vs_first']:.0%} of first)", rerun["load_avg_before"]],
            ["rerun: teacher + judge calls (first run)",
             f"{rerun['teacher_and_judge_calls']} ({rerun['first_run_calls']})", None],
            ["rerun: cache hits", rerun["cache_hits"], None],
            ["rerun: tasks that still called the teacher/judge", rerun.get("calls_by_task") or None, None],
        ])
        lines += ["## Per stage", "", "Seconds summed over the cycles (student stages include their model-load check "
                  "step); tokens/s is teacher completion tokens per second of LLM time, student new tokens per second, "
                  "or training tokens per second.", ""]
        lines += _table(["stage", "seconds", "tokens/s", "calls", "cache hits", "extra"], [
            [name, row.get("seconds"), row.get("tokens_per_s"), row.get("calls"), row.get("cache_hits"),
             ", ".join(f"{k}={row[k]}" for k in ("peak_memory_mb", "s_per_step") if k in row) or None]
            for name, row in e2e["stages"].items()])
    if air := results.get("airflow"):
        lines += ["## End to end under Airflow", "", f"`{air['command']}`: the DAG run through `airflow dags test` "
                  "(what `make run` does); task durations from the run's metadata database.", ""]
        lines += _table(["measure", "value", "load avg"], [
            ["wall time (script: db migrate, run, report)", f"{air['wall_s']} s", air["load_avg_before"]],
            ["DAG run wall time (first task scheduled to last task done)", f"{air['run_wall_s']} s", None],
            [f"sum of the {air['task_instances']} task instance durations", f"{air['task_sum_s']} s", None],
            ["share of the run outside task instances", f"{air['outside_tasks_share']:.1%}", None],
            ["slowest tasks (s)", air["slowest_tasks"], None]])
    if gen := results.get("generation"):
        lines += ["## Student generation: batched vs one by one", "",
                  f"{gen['questions']} questions, {gen['max_new_tokens']} new tokens max, greedy, {gen['threads']} "
                  f"torch thread, median of {gen['repeats']} rounds, each round measuring every batch size back to "
                  f"back. Model: `{Path(gen['model']).name}`.", ""]
        lines += _table(["batch size", "tokens/s (median)", "speedup vs one by one", "runs", "load avg"], [
            [size, row["tokens_per_s_median"], f"{row['speedup_vs_one_by_one']}x",
             row["tokens_per_s_runs"], row["load_avg"]]
            for size, row in gen["by_batch_size"].items()])
    if rate := results.get("throughput"):
        before, now = rate["by_code"]["before"], rate["by_code"]["now"]
        lines += ["## Throughput: questions per minute, before issue 17 and now", "",
                  f"The same run, {rate['cycles']} cycles x {rate['questions_per_cycle']} questions plus the gold set "
                  f"(settings {', '.join(rate['settings']) or 'none'}), with the code of commit "
                  f"`{rate['baseline_commit'][:10]}` (before) and this code (now), back to back, fresh stores, one "
                  f"run each: `{now['command']}`.", ""]
        lines += _table(["measure", "before", "now", "now / before"], [
            ["wall time (s)", before["wall_s"], now["wall_s"], round(now["wall_s"] / before["wall_s"], 2)],
            ["questions per minute", before["questions_per_min"], now["questions_per_min"], f"{rate['speedup']}x"],
            *[[f"{stage} (s)", before["stages_s"].get(stage), now["stages_s"].get(stage),
               round(now["stages_s"][stage] / before["stages_s"][stage], 2)
               if before["stages_s"].get(stage) and stage in now["stages_s"] else None]
              for stage in now["stages_s"]],
            ["load average before / after", f"{before['load_avg_before']} / {before['load_avg_after']}",
             f"{now['load_avg_before']} / {now['load_avg_after']}", None]])
        lines += [f"Speed-up in questions per minute: {rate['speedup']}x (goal: 4x).", ""]
        need = goal_budget(rate)
        reach = (f"everything else ({need['rest_s']} s now: teacher, judge, bookkeeping) would have to get "
                 f"{need['rest_speedup_needed']}x faster in the {need['left_s']} s left"
                 if need["rest_speedup_needed"] else
                 "the student's stages alone exceed it, so no teacher or judge speed-up can reach the goal without "
                 "the student's own work getting faster too")
        lines += [f"What {need['goal']:g}x asks: this run within {need['budget_s']} s (the baseline's wall time / "
                  f"{need['goal']:g}). The student's own stages (answers and training, the work being measured) took "
                  f"{need['student_s']} s of the run now; {reach}.", ""]
    if server := results.get("teacher_server"):
        lines += ["## Embedded teacher: server layouts at the same threads", "",
                  f"Through the real client with an empty cache, {server['threads']} threads in all on each side, "
                  f"median of {server['repeats']} rounds, each round measuring every layout back to back: "
                  f"{server['calls_per_round']} free-text reference calls ({server['max_tokens']} tokens max, greedy), "
                  f"and {server['judge_calls_per_round']} RAGAS answer-relevancy judge calls with the judge's JSON "
                  "schema (3 draws of each answer in sequence, temperature 0.7). `teacher.embedded_server`, "
                  "`teacher.embedded_servers`.", ""]
        for workload, block in server.get("by_workload", {}).items():
            lines += _table([f"{workload}: server", "processes x threads", "concurrency", "seconds (median)",
                             "tokens/s", "runs", "load avg"], [
                [name, f"{row['processes']} x {row['threads']}", row["concurrency"], row["median_s"],
                 [r["tokens_per_s"] for r in row["runs"]], [r["seconds"] for r in row["runs"]],
                 [r["load_avg"] for r in row["runs"]]]
                for name, row in block["by_server"].items()])
            lines += [f"{workload}: one llama-server per core is {block['per_core_over_single']}x one llama-server of "
                      f"{server['threads']} threads, {block['per_core_over_pool']}x the pool.", ""]
    if judge := results.get("judge_output"):
        lines += render_judge_output(judge)
    if load := results.get("load"):
        lines += ["## Student model load", ""]
        lines += _table(["load", "seconds", "runs", "load avg"], [
            ["cold (GGUF conversion + load)", load["cold"]["seconds"], 1, load["cold"]["load_avg"]],
            ["warm (cached safetensors folder)", load["warm"]["median_s"], load["warm"]["runs_s"],
             load["warm"]["load_avg"]],
            ["cold / warm", f"{load['cold_over_warm']}x", None, None]])
    if parse := results.get("parse"):
        lines += ["## DAG parse time", ""]
        lines += _table(["measure", "median s", "runs", "load avg"],
                        [["DagBag fill of dags/", parse["median_s"], parse["runs_s"], parse["load_avg"]]])
    lines += ["## Notes", "", *(f"- {n}" for n in [*STANDING_NOTES, *results.get("notes", [])]), ""]
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: Path | str = DEFAULT_OUT) -> tuple[Path, Path]:
    """Merge ``results`` into ``results.json`` (sections not rerun are kept) and rewrite ``results.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    merged = json.loads(json_path.read_text()) if json_path.is_file() else {}
    merged.pop("teacher_pool", None)  # replaced by teacher_server (issue 17)
    merged.update(results)
    json_path.write_text(json.dumps(merged, indent=2) + "\n")
    md_path.write_text(render_markdown(merged))
    return json_path, md_path


def run_benchmark(sections: Sequence[str] = SECTIONS, *, out_dir: Path | str = DEFAULT_OUT, store: Path | None = None,
                  repeats: int = 3, max_new_tokens: int = 64, throughput_size: tuple[int, int] = (3, 24)
                  ) -> dict[str, Any]:
    """Run the chosen sections (cheap ones first) and write the results; returns what was measured."""
    from kdflow.bench.airflow import airflow_run
    from kdflow.bench.judge import judge_output
    from kdflow.bench.teacher import teacher_servers
    from kdflow.bench.throughput import throughput
    from kdflow.student.models import resolve_student

    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown benchmark section(s) {unknown}; choose from {list(SECTIONS)}")
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, Any] = {"machine": machine(),
                               "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "commands": ["make bench", "python -m kdflow.bench --sections " + ",".join(sections)],
                               "notes": []}  # hand-written findings belong to the measurement they describe
    measure: dict[str, Callable[[], Any]] = {
        "parse": lambda: parse_time(repeats=max(repeats, 5)),
        "load": lambda: model_load(repeats),
        "generation": lambda: generation_comparison(resolve_student("embedded"), repeats=repeats,
                                                    max_new_tokens=max_new_tokens),
        "teacher_server": lambda: teacher_servers(repeats),
        "judge_output": lambda: judge_output(rounds=2),
        "e2e": lambda: end_to_end(store),
        "airflow": airflow_run,
        "throughput": lambda: throughput(*throughput_size),
    }
    for section in SECTIONS:  # cheap ones first; written after each, so a late failure keeps the rest
        if section in sections:
            results[section] = measure[section]()
            write_results(results, out_dir)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdflow.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for results.json and results.md")
    parser.add_argument("--store", default=None,
                        help="store folder for the end-to-end runs (default: a fresh temporary one)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cheap measurement (medians)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="new tokens per answer in the generation comparison")
    parser.add_argument("--throughput-size", default="3x24", metavar="CYCLESxQUESTIONS",
                        help="size of the throughput section's two runs (default 3x24)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    try:
        cycles, questions = (int(n) for n in args.throughput_size.lower().split("x"))
    except ValueError:
        parser.error(f"--throughput-size {args.throughput_size!r}: expected CYCLESxQUESTIONS, e.g. 3x24")
    run_benchmark(sections, out_dir=args.out, store=Path(args.store) if args.store else None,
                  repeats=args.repeats, max_new_tokens=args.max_new_tokens, throughput_size=(cycles, questions))
    print(Path(args.out) / "results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
