"""The benchmark's cheap parts on real components: DAG parse time and a tiny-model generation
comparison, written to JSON and Markdown with the keys the committed results rely on."""

import json

import pytest

from kdflow.bench import pipeline as bench
from kdflow.pipeline.spec import DAG_ID

QUESTIONS = ["What is a Pod?", "What does a Service do?", "What is a PersistentVolume?", "What is a Node?"]


def test_cheap_sections_write_json_and_markdown(tiny_phi_dir, tmp_path):
    parse = bench.parse_time(repeats=2)
    assert parse["dags"] == [DAG_ID]
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
    assert ("## Goals of issue 9" in md_path.read_text()
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
    parsed = [m.groups() for m in map(bench._STEP_LINE.match, lines) if m]
    assert parsed == [("3", "61", None, "load_knowledge_base", "41.0"), ("6", "61", "1", "cycle_start", "0.0")]


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark section"):
        bench.run_benchmark(["parse", "gpu"], out_dir=tmp_path)


@pytest.mark.slow
def test_teacher_pool_section_measures_both_pools_on_the_real_server(tmp_path):
    from kdflow.bench.teacher import teacher_pool

    pool = teacher_pool(repeats=1)
    assert set(pool["by_servers"]) == {"1", "2"}
    assert all(row["runs"][0]["tokens"] > 0 and row["median_s"] > 0 for row in pool["by_servers"].values())
    assert pool["speedup"] == round(pool["by_servers"]["1"]["median_s"] / pool["by_servers"]["2"]["median_s"], 2)
    _, md_path = bench.write_results({"machine": bench.machine(), "measured_at": "now", "commands": [],
                                      "teacher_pool": pool}, tmp_path)
    assert "## Embedded teacher: one llama.cpp server vs a pool" in md_path.read_text()


def test_the_benchmarks_find_the_repository_from_their_package():
    """The benchmarks live in include/kdflow/bench/: their paths still lead to the repository's folders."""
    from kdflow.bench import airflow

    assert bench.DAGS.is_dir() and bench.DEFAULT_OUT.is_dir() and (bench.DEFAULT_OUT / "results.json").is_file()
    assert airflow.RUN_DAG.is_file()
