"""The benchmark's cheap parts on real components: DAG parse time and a tiny-model generation
comparison, written to JSON and Markdown with the keys the committed results rely on."""

import json
import subprocess

import pytest

from kdflow.bench import pipeline as bench
from kdflow.bench.runner import STEP_LINE
from kdflow.pipeline.spec import DAG_ID

QUESTIONS = ["What is a Pod?", "What does a Service do?", "What is a PersistentVolume?", "What is a Node?"]


def test_cheap_sections_write_json_and_markdown(tiny_phi_dir, tmp_path):
    parse = bench.parse_time(repeats=2)
    assert sorted(parse["dags"]) == ["kdflow_export", DAG_ID]
    assert 0 < parse["median_s"] < 5 and len(parse["runs_s"]) == 2 and len(parse["load_avg"]) == 2

    gen = bench.generation_comparison(tiny_phi_dir, batch_sizes=(2, 4), questions=QUESTIONS,
                                      max_new_tokens=8, repeats=1)
    rows = gen["by_batch_size"]
    assert list(rows) == ["1", "2", "4"]  # one by one is always measured: it is the ratio's base
    assert rows["1"]["speedup_vs_one_by_one"] == 1.0
    assert all(row["tokens_per_s_median"] > 0 and len(row["tokens_per_s_runs"]) == 1 for row in rows.values())

    results = {"machine": bench.machine(), "measured_at": "now", "commands": ["make bench"],
               "parse": parse, "generation": gen}
    json_path, md_path = bench.write_results(results, tmp_path)
    stored = json.loads(json_path.read_text())
    assert {"machine", "parse", "generation", "commands"} <= set(stored)
    assert ("## Goals (issues 9 and 17)" in md_path.read_text()
            and "batched generation >= 3x one by one at batch 4" in md_path.read_text())
    assert {"nproc", "cpu_model", "memory_gib", "python", "torch", "load_avg"} <= set(stored["machine"])
    markdown = md_path.read_text()
    for heading in ("# kdflow benchmark results", "## Student generation: batched vs one by one", "## DAG parse time"):
        assert heading in markdown
    assert "`make bench`" in markdown and "| 4 |" in markdown

    # A later section-only run merges: earlier sections stay in the files.
    bench.write_results({"machine": stored["machine"], "measured_at": "later", "commands": [],
                         "notes": ["rerun"]}, tmp_path)
    merged = json.loads(json_path.read_text())
    assert merged["parse"] == parse and merged["notes"] == ["rerun"] and "## Notes" in md_path.read_text()


def test_step_lines_of_the_runner_are_parsed():
    lines = ["[3/61] load_knowledge_base: 41.0s", "[6/61] cycle 1 cycle_start: 0.0s", "noise"]
    parsed = [m.groups() for m in map(STEP_LINE.match, lines) if m]
    assert parsed == [("3", "61", None, "load_knowledge_base", "41.0"), ("6", "61", "1", "cycle_start", "0.0")]


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark section"):
        bench.run_benchmark(["parse", "gpu"], out_dir=tmp_path)


@pytest.mark.slow
def test_teacher_server_section_measures_every_layout_on_both_workloads_side_by_side(tmp_path):
    from kdflow.bench.teacher import teacher_servers
    from kdflow.config import load_config

    result = teacher_servers(repeats=1, calls=4, slots=4, max_tokens=16, judge_answers=2)
    assert set(result["by_workload"]) == {"references", "judge"}
    assert result["judge_calls_per_round"] == 2 * load_config(environ={}).evaluation.relevancy_strictness
    for block in result["by_workload"].values():
        by = block["by_server"]
        assert set(by) == {"pool", "llama_server", "llama_server_per_core"}
        assert (by["pool"]["processes"], by["llama_server"]["processes"], by["llama_server_per_core"]["processes"]) \
            == (2, 1, 2)
        assert by["llama_server_per_core"]["threads"] == 1 and by["llama_server_per_core"]["concurrency"] == 4
        assert all(row["runs"][0]["tokens"] > 0 and row["median_s"] > 0 for row in by.values())
        assert block["per_core_over_single"] == round(by["llama_server"]["median_s"]
                                                      / by["llama_server_per_core"]["median_s"], 2)
    (tmp_path / "results.json").write_text('{"teacher_pool": {"speedup": 1.0}}')
    json_path, md_path = bench.write_results({"machine": bench.machine(), "measured_at": "now", "commands": [],
                                              "teacher_server": result}, tmp_path)
    text = md_path.read_text()
    assert "## Embedded teacher: server layouts at the same threads" in text and "| judge: server |" in text
    assert "teacher_pool" not in json_path.read_text()  # the section it replaced is dropped, not shown twice


@pytest.mark.slow
def test_judge_output_section_times_the_judges_schema_calls_beside_the_same_calls_without_a_grammar(tmp_path):
    from kdflow.bench.judge import judge_output

    result = judge_output(rounds=1, answers=1)
    by = result["by_variant"]
    assert set(by) == {"json_schema", "unconstrained"} and result["calls_per_round"] == 3
    assert all(len(row["runs"]) == 1 and row["runs"][0]["tokens"] > 0 for row in by.values())
    assert result["unconstrained_over_schema_tokens_per_s"] == round(
        by["unconstrained"]["median_tokens_per_s"] / by["json_schema"]["median_tokens_per_s"], 2)
    _, md_path = bench.write_results({"machine": bench.machine(), "measured_at": "now", "commands": [],
                                      "judge_output": result}, tmp_path)
    text = md_path.read_text()
    assert "## Judge: grammar-constrained JSON vs decoding alone" in text and "| unconstrained |" in text


def test_the_benchmarks_find_the_repository_from_their_package():
    """The benchmarks live in include/kdflow/bench/: their paths still lead to the repository's folders."""
    from kdflow.bench import airflow

    assert bench.DAGS.is_dir() and bench.DEFAULT_OUT.is_dir() and (bench.DEFAULT_OUT / "results.json").is_file()
    assert airflow.RUN_DAG.is_file()


def test_a_clone_without_the_baseline_commit_is_told_what_to_do(tmp_path):
    from kdflow.bench.throughput import baseline_worktree

    with pytest.raises(RuntimeError, match="does not have .*git fetch --unshallow"):
        baseline_worktree(bench.ROOT, "0" * 40, tmp_path / "tree")


@pytest.mark.slow
def test_throughput_runs_the_baseline_commit_and_this_code_side_by_side(tiny_phi_dir, tmp_path):
    """Both sides really run (the baseline from its own worktree, which is removed after), on the
    smallest pipeline: one question on pods, the tiny student, the 6-item gold set."""
    from fixtures_reliability import SMALL_GOLD
    from kdflow.bench.throughput import BASELINE_COMMIT, throughput

    settings = (f"student.model={tiny_phi_dir}", "pipeline.topics=[pods]", "pipeline.held_out_per_topic=0",
                f"evaluation.gold_path={SMALL_GOLD}", "evaluation.teacher_ceiling=false",
                "evaluation.metrics=[rouge_l]", "student.epochs=1", "student.max_new_tokens=8",
                "student.lora_r=4", "student.lora_alpha=8", "student.max_length=128", "teacher.max_tokens=160")
    result = throughput(1, 1, settings=settings)
    before, now = result["by_code"]["before"], result["by_code"]["now"]
    assert result["baseline_commit"] == BASELINE_COMMIT
    # the same gold work on both sides, and no reading of the knowledge base first (the code before has none)
    assert result["now_settings"] == ["evaluation.gold_per_topic=24", "student.kb_reading.enabled=false"]
    for side in (before, now):
        assert side["wall_s"] > 0 and side["questions_per_min"] == round(1 / (side["wall_s"] / 60), 2)
        assert side["stages_s"]["teacher references"] > 0 and side["stages_s"]["training"] > 0
    assert result["speedup"] == round(now["questions_per_min"] / before["questions_per_min"], 2)
    worktrees = subprocess.run(["git", "-C", str(bench.ROOT), "worktree", "list"], capture_output=True, text=True)
    assert "kdflow-bench-throughput" not in worktrees.stdout
    _, md_path = bench.write_results({"machine": bench.machine(), "measured_at": "now", "commands": [],
                                      "throughput": result}, tmp_path)
    assert "## Throughput: questions per minute, before issue 17 and now" in md_path.read_text()
    assert "questions per minute >= 4x the code before issue 17 (1 x 1, side by side)" in md_path.read_text()


def test_the_throughput_section_says_what_the_goal_asks_of_the_stages_left_to_speed_up(tmp_path):
    """4x of a 2,487 s baseline is 622 s: when the student's own stages already take more, the section
    says no teacher or judge speed-up reaches it; otherwise how much faster the rest must get."""
    from kdflow.bench.throughput import goal_budget

    stages = {"teacher questions (+ held-out, gold ceiling)": 175.6, "teacher references": 298.0,
              "student answers (+ gold set)": 295.7, "judge": 475.3, "training": 349.5, "other": 16.7}
    side = {"command": "python -m kdflow run", "load_avg_before": 1.0, "load_avg_after": 1.0}
    rate = {"cycles": 3, "questions_per_cycle": 24, "settings": [], "baseline_commit": "ba153f4acf", "speedup": 1.53,
            "by_code": {"before": {**side, "wall_s": 2487.3, "questions_per_min": 1.74, "stages_s": stages},
                        "now": {**side, "wall_s": 1615.6, "questions_per_min": 2.67, "stages_s": stages}}}
    need = goal_budget(rate)
    assert need == {"goal": 4.0, "budget_s": 621.8, "student_s": 645.2, "rest_s": 970.4, "left_s": -23.4,
                    "rest_speedup_needed": None}
    text = bench.render_markdown({"machine": bench.machine(), "measured_at": "now", "commands": [], "throughput": rate})
    assert "this run within 621.8 s" in text and "the student's stages alone exceed it" in text
    slower_baseline = {**rate["by_code"]["before"], "wall_s": 4000.0}  # 4x: within 1,000 s, 354.8 s left
    by_code = {**rate["by_code"], "before": slower_baseline}
    reachable = bench.render_markdown({"machine": bench.machine(), "measured_at": "now", "commands": [],
                                       "throughput": {**rate, "by_code": by_code}})
    assert "would have to get 2.7x faster in the 354.8 s left" in reachable
    assert goal_budget(rate, goal=2.0) == {"goal": 2.0, "budget_s": 1243.7, "student_s": 645.2, "rest_s": 970.4,
                                           "left_s": 598.5, "rest_speedup_needed": 1.6}  # 970.4 s into 598.5 s
