"""The report renders from hand-made results, every number in it is one of report.json's, the
plots are valid PNGs, and model text is escaped."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import pytest

from kdflow.evaluation.report import (
    FORMATTERS,
    OVERALL_NOTE,
    build_report,
    fmt_interval,
    fmt_share_interval,
    render_tables,
)
from kdflow.records import ScoreRow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = ["answer_relevancy", "semantic_similarity", "rouge_l"]
EVIL = "<script>alert('x')</script>"
DROPPED = {"question_id": "services-x", "split": "train", "question": "Who painted the\nSistine Chapel?",
           "reason": "no passage sentence answers the question (best cosine 0.12 < 0.35)"}


def scores(cycle: int, split: str, stage: str, qid: str, topic: str, base: float, failed: bool = False) -> ScoreRow:
    values = {"answer_relevancy": None if failed else base, "semantic_similarity": base + 0.1, "rouge_l": base / 2}
    failures = {"answer_relevancy": "InstructorRetryException: judge reply not JSON"} if failed else {}
    return ScoreRow(question_id=qid, topic=topic, split=split, stage=stage, cycle=cycle,
                    scores=values, failures=failures)


def make_results() -> dict:
    cycles = []
    for cycle, (lift, losses) in enumerate([(0.2, [2.4, 1.9, 1.5]), (0.1, [1.6, 1.2, 0.9])], start=1):
        rows, answers = [], []
        for i, topic in enumerate(["pods", "services", "storage"]):
            qid, hid = f"{topic}-c{cycle}", f"{topic}-held"
            start = 0.3 + 0.1 * i + 0.1 * (cycle - 1)
            rows += [scores(cycle, "train", "baseline", qid, topic, start),
                     scores(cycle, "train", "finetuned", qid, topic, start + lift,
                                                                                   failed=(cycle == 2 and i == 0))]
            rows += [scores(cycle, "held_out", "baseline", hid, topic, start - 0.05),
                     scores(cycle, "held_out", "finetuned", hid, topic, start - 0.05 + lift / 2)]
            answers.append({"question_id": qid, "topic": topic, "split": "train",
                            "question": f"What is a {topic} thing {cycle}?",
                            "reference": f"The teacher's reference about {topic}.",
                            "baseline_answer": f"I think {topic} {EVIL}",
                            "finetuned_answer": f"A {topic} object does X."})
            answers.append({"question_id": hid, "topic": topic, "split": "held_out",
                            "question": f"What is a held-out {topic} thing?",
                            "reference": "Held-out reference.", "baseline_answer": "No idea.",
                            "finetuned_answer": "It does Y."})
        rows += gold_rows(cycle)
        cycles.append({"cycle": cycle, "scores": [r.model_dump() for r in rows], "answers": answers,
                       "gate": {"kept": 3, "dropped": cycle - 1}, "gate_dropped": [DROPPED] * (cycle - 1),
                       "training": {"losses": losses, "wall_s": 30.0 + cycle, "tokens_per_s": 512.4, "steps": 3}})
    return {
        "run_id": "manual__test", "metrics": METRICS, "success_threshold": 0.5, "cycles": cycles,
        "usage": {"teacher": {"calls": 12, "cache_hits": 3, "prompt_tokens": 5000,
                              "completion_tokens": 1200, "cost_usd": 0.00147},
                  "judge": {"calls": 36, "cache_hits": 0, "prompt_tokens": 18000,
                            "completion_tokens": 900, "cost_usd": 0.00324}},
        "promotion": {"promote": True, "reason": "beats the model the run started from", "metric": "key_fact_recall"},
        "gold_metrics": GOLD_METRICS, "statistics": {"resamples": 2000, "confidence": 0.95, "seed": 1},
        "gold_ceiling": {f"gold-g{i}": {"key_fact_recall": 0.9, "rouge_l": 0.5} for i in range(GOLD_N)},
        "start_model": "base model",
        "roles": [{"role": "teacher", "model": "SmolLM2-135M-Instruct.Q4_1", "provider": "embedded llama.cpp",
                   "where": "local", "family": "smollm2-135m"},
                  {"role": "judge", "model": "SmolLM2-135M-Instruct.Q4_1", "provider": "embedded llama.cpp",
                   "where": "local", "family": "smollm2-135m"},
                  {"role": "student", "model": "SmolLM2-135M-Instruct.Q4_1", "provider": "transformers",
                   "where": "local", "family": "smollm2-135m"}],
    }


GOLD_METRICS = ["key_fact_recall", "rouge_l"]
GOLD_N = 12


def gold_rows(cycle: int) -> list[ScoreRow]:
    """Gold answers: the start (cycle 1's baseline) at 0.2 key-fact recall, +0.3 after cycle 1 (every
    question, a little spread), no change in cycle 2; rouge_l moves 0.1 up and 0.1 down alternately."""
    def row(i: int, stage: str, kfr: float, rouge: float) -> ScoreRow:
        return ScoreRow(question_id=f"gold-g{i}", topic=["pods", "services", "storage"][i % 3],
                        split="gold", stage=stage, cycle=cycle, scores={"key_fact_recall": kfr, "rouge_l": rouge})
    wobble = [0.02 * ((i % 3) - 1) for i in range(GOLD_N)]
    rows = [row(i, "baseline", 0.2, 0.3) for i in range(GOLD_N)] if cycle == 1 else []
    rows += [row(i, "finetuned", 0.5 + wobble[i], 0.3 + (0.1 if i % 2 else -0.1)) for i in range(GOLD_N)]
    return rows


class _Cells(HTMLParser):
    """Collects the text of every numeric <td> (class "text" cells hold labels)."""

    def __init__(self):
        super().__init__()
        self.cells, self._in, self._text = [], False, []

    def handle_starttag(self, tag, attrs):
        if tag == "td" and ("class", "text") not in attrs:
            self._in, self._text = True, []

    def handle_endtag(self, tag):
        if tag == "td" and self._in:
            self.cells.append("".join(self._text).strip())
            self._in = False

    def handle_data(self, data):
        if self._in:
            self._text.append(data)


def _json_numbers(node) -> list[float]:
    if isinstance(node, bool):
        return []
    if isinstance(node, int | float):
        return [node]
    if isinstance(node, dict):
        return [n for v in node.values() for n in _json_numbers(v)]
    if isinstance(node, list):
        return [n for v in node for n in _json_numbers(v)]
    return []


def _dicts(node) -> list[dict]:
    if isinstance(node, dict):
        return [node, *(d for v in node.values() for d in _dicts(v))]
    if isinstance(node, list):
        return [d for v in node for d in _dicts(v)]
    return []


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report(make_results(), out), out


def test_report_files_and_plots_are_valid_pngs(report):
    paths, out = report
    assert {"html", "json", "md", "scores_per_cycle", "before_after", "loss_curves", "held_out_trend"} <= paths.keys()
    from matplotlib.image import imread

    for name, path in paths.items():
        assert path.is_file() and path.stat().st_size > 0, name
        if path.suffix == ".png":
            assert path.parent == out / "plots" and path.read_bytes().startswith(PNG_MAGIC)
            assert imread(path).shape[0] > 100
    html = paths["html"].read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == sum(1 for p in paths.values() if p.suffix == ".png")
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in embedded)
    assert "src=\"http" not in html and "<link" not in html  # self-contained


def test_every_number_in_the_html_is_in_the_json(report):
    paths, _ = report
    data = json.loads(paths["json"].read_text())
    allowed = {f(n) for n in _json_numbers(data) for f in FORMATTERS.values()} | {str(n)
                                                                                  for n in _json_numbers(data)} | {"-"}
    intervals = [(d["ci_low"], d["ci_high"]) for d in _dicts(data) if "ci_low" in d]  # paired deltas, gap shares
    allowed |= {f(low, high) for low, high in intervals for f in (fmt_interval, fmt_share_interval)}
    parser = _Cells()
    parser.feed(paths["html"].read_text())
    assert len(parser.cells) > 60
    stray = [c for c in parser.cells if c not in allowed]
    assert stray == []
    sample_scores = re.findall(r"(answer_relevancy|semantic_similarity|rouge_l) (\d\.\d{3})", paths["html"].read_text())
    assert sample_scores and all(s in allowed for _, s in sample_scores)


def test_report_numbers_are_computed_from_the_scores(report):
    paths, _ = report
    data = json.loads(paths["json"].read_text())
    c1 = data["cycles"][0]["splits"]["train"]["answer_relevancy"]
    assert c1["baseline_mean"] == pytest.approx(0.4) and c1["finetuned_mean"] == pytest.approx(0.6)
    assert c1["rel_improvement_pct"] == pytest.approx(50.0) and c1["improved_share"] == 1.0
    c2 = data["cycles"][1]["splits"]["train"]["answer_relevancy"]
    assert c2["finetuned_count"] == 2 and c2["failures"] == 1 and c2["finetuned_mean"] == pytest.approx(0.65)
    overall = data["across"]["overall"]["held_out"]["answer_relevancy"]
    assert overall["first_baseline_mean"] == pytest.approx(0.35)
    assert overall["last_finetuned_mean"] == pytest.approx(0.5)
    assert data["cycles"][1]["training"]["final_loss"] == 0.9
    assert data["usage"]["total"]["calls"] == 48 and data["usage"]["total"]["cost_usd"] == pytest.approx(0.00471)
    html = paths["html"].read_text()
    for shown in ["+0.200", "0.600", "$0.0047", "31.0 s", "0.900", "Promoted to champion"]:
        assert shown in html
    assert len(data["samples"]) == 6 and {s["cycle"] for s in data["samples"]} == {1, 2}
    assert [s["split"] for s in data["samples"]] == ["train", "train", "held_out"] * 2
    held = data["samples"][2]
    assert held["question_id"] == "pods-held" and held["finetuned_scores"]["answer_relevancy"] == pytest.approx(0.35)


def test_failures_and_topics_are_listed(report):
    paths, _ = report
    data = json.loads(paths["json"].read_text())
    assert data["failures"] == [{"cycle": 2, "split": "train", "stage": "finetuned", "question_id": "pods-c2",
                                 "metric": "answer_relevancy",
                                 "reason": "InstructorRetryException: judge reply not JSON"}]
    html = paths["html"].read_text()
    assert "Metric failures (1)" in html and "judge reply not JSON" in html
    by_topic = data["cycles"][0]["aggregates"]["by_topic"]
    assert by_topic["held_out"]["finetuned"]["storage"]["answer_relevancy"]["mean"] == pytest.approx(0.55)
    assert re.search(r"<td>1</td><td class=\"text\">storage</td><td>0.450</td><td>0.550</td>", html)


def test_model_text_is_escaped(report):
    paths, _ = report
    html = paths["html"].read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html


def test_markdown_summary_and_text_tables(report):
    paths, _ = report
    md = paths["md"].read_text()
    assert "# kdflow run manual__test" in md
    assert "| held_out | answer_relevancy | 3 | 0.350 | 0.500 | +0.150 | [+0.150, +0.150] | 0.102 | improved |" in md
    # what the overall rows compare is said beside them (train: different questions at each end, so no row)
    assert OVERALL_NOTE in md and OVERALL_NOTE.replace("'", "&#39;") in paths["html"].read_text()
    assert "| train |" not in md.split("## Held-out set")[1].split("##")[1]
    tables = render_tables(make_results())
    assert set(tables) == {"final_results", "performance_comparison", "improvement_statistics", "sample_qa"}
    assert "PROMOTED" in tables["final_results"] and "+0.200" in tables["final_results"]
    assert "0.350" in tables["performance_comparison"] and "+0.150" in tables["performance_comparison"]
    assert "100%" in tables["improvement_statistics"] and "$0.0047" in tables["improvement_statistics"]
    assert tables["sample_qa"].count("Q: What is a") == 6 and EVIL in tables["sample_qa"]  # plain text: not escaped
    # the gate: counts per cycle, then each dropped item with its reason (one line, newlines folded)
    item = ("cycle 2 train: Who painted the Sistine Chapel? - "
            "no passage sentence answers the question (best cosine 0.12 < 0.35)")
    gate = md.split("## Teacher data quality gate")[1].split("##")[0]
    assert "| cycle | kept | dropped |" in gate and "| 1 | 3 | 0 |" in gate and "| 2 | 3 | 1 |" in gate
    assert f"Dropped by the gate:\n\n- {item}\n" in gate and gate.count("\n- ") == 1
    assert f"dropped by the gate\n{item}" in tables["improvement_statistics"]


def test_the_dropped_list_is_short_and_says_when_nothing_was_dropped():
    from kdflow.evaluation.report import compute_report, gate_dropped_lines

    results = make_results()
    results["cycles"][1]["gate_dropped"] = [DROPPED] * 3
    lines = gate_dropped_lines(compute_report(results), limit=2)
    assert len(lines) == 3 and lines[-1] == "... and 1 more (see report.html)"
    for cycle in results["cycles"]:
        cycle["gate_dropped"] = []
    assert gate_dropped_lines(compute_report(results)) == []
    assert "dropped by the gate\nnothing" in render_tables(results)["improvement_statistics"]


def test_bad_results_name_the_field():
    bad = make_results()
    del bad["cycles"][0]["cycle"]
    with pytest.raises(ValueError, match=r"cycles\.0\.cycle"):
        render_tables(bad)


def test_the_verdict_on_the_gold_set_comes_first(report):
    """Every output opens with the gold verdict: start -> last paired with n, interval, p and MDE;
    per cycle; the open-book ceiling and the share of the gap closed; the roles and the warning
    that the judge is the student's own base model."""
    paths, _ = report
    data = json.loads(paths["json"].read_text())
    verdict = data["verdict"]
    lead = verdict["overall"]["key_fact_recall"]
    assert verdict["items"] == GOLD_N and lead["n"] == GOLD_N
    assert lead["before_mean"] == pytest.approx(0.2) and lead["after_mean"] == pytest.approx(0.5)
    assert lead["ci_low"] > 0 and lead["verdict"] == "improved" and lead["mde"] > 0 and lead["p_value"] < 0.01
    assert verdict["overall"]["rouge_l"]["verdict"] == "no detectable change"  # +0.1 / -0.1 alternately
    assert [c["cycle"] for c in verdict["per_cycle"]] == [1, 2]
    assert verdict["per_cycle"][0]["metrics"]["key_fact_recall"]["verdict"] == "improved"
    assert verdict["per_cycle"][1]["metrics"]["key_fact_recall"]["verdict"] == "no detectable change"
    assert lead["gap_closed"]["ceiling_mean"] == pytest.approx(0.9) and lead["gap_closed"]["n"] == GOLD_N
    assert lead["gap_closed"]["share"] == pytest.approx(0.3 / 0.7)  # (0.5 - 0.2) / (0.9 - 0.2)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    text = render_tables(make_results())["final_results"]
    headline = ("VERDICT: Gold set (12 questions), key_fact_recall: base model 0.200 -> 0.500 after cycle 2, "
                "delta +0.300")
    assert md.split("\n\n")[2].startswith(headline) and text.startswith(headline)
    assert html.index("Verdict on the gold set") < html.index("Promotion decision") < html.index("Metrics per cycle")
    assert "Share of the gap to the open-book teacher (0.900) closed by distillation: 43%" in md
    assert "is the student's own base model" in md and 'id="roles-warning"' in html
    assert md.index("## Verdict") < md.index("## Held-out set") < md.index("## Per cycle")


def test_a_ceiling_on_a_sample_says_so():
    """`make run` asks the teacher for a stratified sample of the gold set: the gap is measured on those."""
    from kdflow.evaluation.report import compute_report, verdict_headline

    results = make_results()
    results["gold_ceiling"] = {f"gold-g{i}": {"key_fact_recall": 0.9} for i in range(3)}
    report = compute_report(results)
    assert report["verdict"]["overall"]["key_fact_recall"]["gap_closed"]["n"] == 3
    assert "(0.900, on a stratified sample of 3 of 12 questions) closed by distillation" in verdict_headline(report)


def test_a_verdict_on_a_sample_of_the_gold_set_says_so():
    """`make run` scores the student on 24 gold questions per topic (evaluation.gold_per_topic): the headline
    names the sample and the set it was drawn from; a run that scored every item says only how many."""
    from kdflow.evaluation.report import compute_report, verdict_headline

    results = make_results()
    results["gold_set_items"] = 30
    assert verdict_headline(compute_report(results)).startswith(
        "Gold set (a stratified sample of 12 of its 30 questions), key_fact_recall:")
    results["gold_set_items"] = 12
    assert verdict_headline(compute_report(results)).startswith("Gold set (12 questions), key_fact_recall:")


def test_without_a_gold_set_the_report_says_so():
    results = make_results()
    results["gold_metrics"] = []
    for cycle in results["cycles"]:
        cycle["scores"] = [r for r in cycle["scores"] if r["split"] != "gold"]
    assert render_tables(results)["final_results"].startswith("VERDICT: No gold set was scored in this run")


def test_the_answered_reviews_are_in_the_report(tmp_path):
    """Issue 21: who decided what about the run's data and promotion, and a timeout's default, as recorded."""
    reviews = [{"review": "dataset", "cycle": 1, "outcome": "dropped", "option": "Drop the chosen pairs",
                "dropped": ["pods-c1"], "by": "alice (1)", "at": "2026-12-03T08:00:00+00:00", "timed_out": False,
                "reason": "cycle 1 dataset review: dropped pods-c1 (alice (1), 2026-12-03T08:00:00+00:00)"},
               {"review": "promotion", "cycle": None, "outcome": "kept", "option": "Keep the champion", "dropped": [],
                "by": None, "at": "2026-12-04T08:00:00+00:00", "timed_out": True,
                "reason": "promotion review: kept the current champion (the review timed out; default taken, "
                          "2026-12-04T08:00:00+00:00)"}]
    paths = build_report({**make_results(), "reviews": reviews}, tmp_path)
    html, md = paths["html"].read_text(), paths["md"].read_text()
    for review in reviews:
        assert f"<li>{review['reason']}</li>" in html and f"- {review['reason']}" in md
    assert json.loads(paths["json"].read_text())["reviews"] == reviews
    assert 'id="reviews"' not in build_report(make_results(), tmp_path / "none")["html"].read_text()


def test_a_run_whose_student_read_the_knowledge_base_measures_the_reading_first():
    """Cycle 1's baseline file holds the gold answers from before reading (stage "unread") beside the read
    student's: the verdict starts there, its first step is the reading, the cycles follow, and the
    headline and the reading line say the run (not distillation alone) closed the gap."""
    from kdflow.evaluation.report import compute_report, reading_line, verdict_headline

    results = make_results()
    unread = [ScoreRow(question_id=f"gold-g{i}", topic=["pods", "services", "storage"][i % 3], split="gold",
                       stage="unread", cycle=1, scores={"key_fact_recall": 0.05 + 0.01 * (i % 2), "rouge_l": 0.3})
              for i in range(GOLD_N)]
    results["cycles"][0]["scores"] += [r.model_dump() for r in unread]
    results["reading"] = {"read": True, "reason": "student.kb_reading.enabled is auto and every weight trains",
                          "base_model": "embedded+kb-reading:abc", "documents": 202,
                          "topics": ["pods", "services", "storage"], "learning_rate": 1e-4, "epochs": 5,
                          "read_in_run": "nightly_1", "training": {"initial_loss": 2.9, "final_loss": 0.24}}
    report = compute_report(results)
    verdict = report["verdict"]
    lead = verdict["overall"]["key_fact_recall"]
    assert verdict["read"] and lead["before_mean"] == pytest.approx(0.055) and lead["after_mean"] == pytest.approx(0.5)
    steps = [(c["step"], c["from"], c["to"]) for c in verdict["per_cycle"]]
    assert steps == [("reading", "before reading", "after reading the knowledge base"),
                     ("cycle 1", "after reading the knowledge base", "after cycle 1"),
                     ("cycle 2", "after cycle 1", "after cycle 2")]
    reading = verdict["per_cycle"][0]["metrics"]["key_fact_recall"]
    assert reading["mean_delta"] == pytest.approx(0.2 - 0.055) and reading["verdict"] == "improved"
    # the cycle's aggregates keep the two models apart
    gold = report["cycles"][0]["aggregates"]["by_split_stage"]["gold"]
    assert gold["unread"]["key_fact_recall"]["mean"] == pytest.approx(0.055)
    assert gold["baseline"]["key_fact_recall"]["mean"] == pytest.approx(0.2)
    headline = verdict_headline(report)
    assert headline.startswith("Gold set (12 questions), key_fact_recall: base model before reading the knowledge "
                               "base 0.055 -> 0.500 after cycle 2")
    assert "closed by reading the knowledge base and distillation" in headline
    assert reading_line(report) == (
        "Before cycle 1 the student read the knowledge base: 202 passages of pods, services, storage as plain text, "
        "every weight, 0.0001 x 5 epochs (by run nightly_1, reused, loss 2.900 -> 0.240); cycle 1 starts from that "
        "student.")
    text = render_tables(results)["final_results"]
    assert "reading: before reading -> after reading the knowledge base" in text
    assert text.index("Before cycle 1 the student read") < text.index("gold set, paired by question")
    results["reading"] = {"read": False, "reason": "student.kb_reading.enabled is false", "base_model": "embedded"}
    assert reading_line(compute_report(results)) == ("The student did not read the knowledge base before cycle 1 "
                                                     "(student.kb_reading.enabled is false).")
