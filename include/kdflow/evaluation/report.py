"""The run report: ``report.html`` (self-contained, PNGs embedded as base64), ``report.json``
(the same numbers), ``report.md`` (a short summary) and ``plots/*.png``, plus the plain-text
tables the DAG's "Display ..." tasks log.

Every number is computed here from the per-question scores in ``results`` (schema in
:mod:`kdflow.evaluation.results`); nothing is typed in. All three outputs format numbers with
the same functions (:data:`FORMATTERS`), so a value reads the same in each.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdflow.evaluation import plots
from kdflow.evaluation.aggregate import aggregate, compare_all, compare_cycle, select, statistics_options
from kdflow.evaluation.results import RunResults, parse_results
from kdflow.evaluation.verdict import gold_verdict
from kdflow.llm.cache import TaskUsage

TEMPLATE = "report.html.j2"
SAMPLES_PER_CYCLE = 3
GATE_DROPPED_SHOWN = 20  # dropped items listed in report.md and the logged tables
DASH = "-"
OVERALL_NOTE = ("held_out compares the same teacher-written held-out questions at the model the run started from and "
                "at the last adapter, paired by question. The trained questions differ from cycle to cycle, so they "
                "get no overall row; each cycle's own table compares its questions before and after.")
VERDICT_NOTE = ("Paired by question: mean delta with a seeded bootstrap interval, Wilcoxon signed-rank p, and the "
                "minimum detectable effect (MDE: the true delta found 80 % of the time at this n). 'improved' only "
                "when the interval's lower bound is above 0, 'regressed' when its upper bound is below 0.")


def fmt_score(x: float | None) -> str:
    return DASH if x is None else f"{x:.3f}"


def fmt_signed(x: float | None) -> str:
    return DASH if x is None else f"{x:+.3f}"


def fmt_pct(x: float | None) -> str:
    return DASH if x is None else f"{x:+.1f}%"


def fmt_share(x: float | None) -> str:
    return DASH if x is None else f"{x * 100:.0f}%"


def fmt_seconds(x: float | None) -> str:
    return DASH if x is None else f"{x:.1f} s"


def fmt_usd(x: float | None) -> str:
    return DASH if x is None else f"${x:.4f}"


def fmt_rate(x: float | None) -> str:
    return DASH if x is None else f"{x:.0f}"


def fmt_count(x: int | None) -> str:
    return DASH if x is None else str(x)


def fmt_p(x: float | None) -> str:
    return DASH if x is None else (f"{x:.3f}" if x >= 0.001 else "<0.001")


def fmt_interval(low: float | None, high: float | None) -> str:
    return DASH if low is None or high is None else f"[{low:+.3f}, {high:+.3f}]"


def fmt_share_interval(low: float | None, high: float | None) -> str:
    return DASH if low is None or high is None else f"[{low * 100:.0f}%, {high * 100:.0f}%]"


FORMATTERS = {
    "score": fmt_score, "signed": fmt_signed, "pct": fmt_pct, "share": fmt_share,
    "secs": fmt_seconds, "usd": fmt_usd, "rate": fmt_rate, "whole": fmt_count, "pvalue": fmt_p,
}


def _usage_table(usage: dict[str, TaskUsage]) -> dict[str, dict[str, Any]]:
    rows = {task: dataclasses.asdict(entry) for task, entry in sorted(usage.items()) if task != "total"}
    if rows:
        rows["total"] = {f.name: sum(r[f.name] for r in rows.values()) for f in dataclasses.fields(TaskUsage)}
    return rows


def _samples(parsed: RunResults, per_cycle: int) -> list[dict[str, Any]]:
    """Sample Q&A of every cycle (train questions, plus one held-out question when there is one),
    with both stages' scores attached."""
    samples = []
    for cycle in parsed.cycles:
        scores = {(r.question_id, r.split, r.stage): r for r in cycle.scores}
        ordered = sorted(cycle.answers, key=lambda a: (a.split != "train", a.topic, a.question_id))
        held = [a for a in ordered if a.split == "held_out"][:1] if per_cycle > 1 else []
        picked = [a for a in ordered if a.split == "train"][: per_cycle - len(held)] + held
        picked += [a for a in ordered if a not in picked][: per_cycle - len(picked)]
        for qa in picked:
            entry = {"cycle": cycle.cycle, **qa.model_dump()}
            for stage in ("baseline", "finetuned"):
                row = scores.get((qa.question_id, qa.split, stage))
                entry[f"{stage}_scores"] = dict(row.scores) if row else {}
                entry[f"{stage}_failures"] = dict(row.failures) if row else {}
            samples.append(entry)
    return samples


def _failures(parsed: RunResults) -> list[dict[str, Any]]:
    """Every recorded metric failure (judge output unusable, missing reference ...), with its reason."""
    return [
        {"cycle": c.cycle, "split": r.split, "stage": r.stage, "question_id": r.question_id,
         "metric": metric, "reason": reason}
        for c in parsed.cycles for r in c.scores for metric, reason in sorted(r.failures.items())
    ]


def compute_report(results: dict[str, Any] | RunResults, *,
                   samples_per_cycle: int = SAMPLES_PER_CYCLE) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data (this is ``report.json``)."""
    parsed = parse_results(results)
    stats = statistics_options(**parsed.statistics)
    cycles = []
    for cycle in parsed.cycles:
        training = cycle.training.model_dump() if cycle.training else None
        comparison = compare_cycle(
            select(cycle.scores, stage="baseline"), select(cycle.scores, stage="finetuned"),
            training=training, success_threshold=parsed.success_threshold, **stats,
        )
        comparison["cycle"] = cycle.cycle
        comparison["aggregates"] = aggregate(cycle.scores)
        comparison["gate"] = dict(cycle.gate)
        comparison["gate_dropped"] = list(cycle.gate_dropped)
        comparison["coverage"] = dict(cycle.coverage)
        comparison["decontaminated"] = list(cycle.decontaminated)
        cycles.append(comparison)
    scores = {c.cycle: c.scores for c in parsed.cycles}
    verdict = gold_verdict(scores, parsed.gold_metrics, ceiling=parsed.gold_ceiling or None,
                           start_model=parsed.start_model, **stats) if parsed.gold_metrics else None
    if verdict:  # scored on a stratified sample (evaluation.gold_per_topic) when fewer than the set holds
        verdict["set_items"] = parsed.gold_set_items or verdict["items"]
    return {
        "verdict": verdict,
        "roles": list(parsed.roles),
        "statistics": stats,
        "run_id": parsed.run_id,
        "metrics": list(parsed.metrics),
        "headline_metric": parsed.headline_metric,
        "success_threshold": parsed.success_threshold,
        "cycles": cycles,
        "across": compare_all(cycles, scores, **stats),
        "usage": _usage_table(parsed.usage),
        "promotion": parsed.promotion,
        "samples": _samples(parsed, samples_per_cycle),
        "failures": _failures(parsed),
        "health": list(parsed.health),
        "reviews": list(parsed.reviews),
        "reading": parsed.reading,
    }


def _draw_plots(parsed: RunResults, report: dict[str, Any], plot_dir: Path) -> dict[str, Path]:
    metric, table = parsed.headline_metric, report["across"]["table"]
    pairs: dict[int, list[tuple[float, float]]] = {}
    for cycle in parsed.cycles:
        base = {(r.question_id, r.split): r.scores.get(metric) for r in select(cycle.scores, stage="baseline")}
        pairs[cycle.cycle] = [
            (b, v) for r in select(cycle.scores, stage="finetuned")
            if (v := r.scores.get(metric)) is not None and (b := base.get((r.question_id, r.split))) is not None
        ]
    losses = {c["cycle"]: (c["training"] or {}).get("losses", []) for c in report["cycles"]}
    metrics = [m for m in parsed.metrics if any(row["metric"] == m for row in table)]
    out = {
        "scores_per_cycle": plots.scores_per_cycle(table, metrics, "train", plot_dir / "scores_per_cycle.png"),
        "before_after": plots.before_after(pairs, metric, plot_dir / "before_after.png"),
        "loss_curves": plots.loss_curves(losses, plot_dir / "loss_curves.png"),
    }
    if any(row["split"] == "held_out" for row in table):
        out["held_out_scores_per_cycle"] = plots.scores_per_cycle(table, metrics, "held_out",
                                                                  plot_dir / "held_out_scores_per_cycle.png")
        out["held_out_trend"] = plots.held_out_trend(report["across"]["held_out_trend"],
                                                     plot_dir / "held_out_trend.png")
    return out


def _render_html(report: dict[str, Any], images: dict[str, str]) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("kdflow", "templates"), autoescape=select_autoescape(default=True),
        undefined=StrictUndefined
    )
    env.filters.update(FORMATTERS)
    tables = {"overall": _overall_rows(report), "coverage": coverage_rows(report), "roles": roles_rows(report)}
    if report["verdict"]:
        tables.update(verdict=verdict_rows(report), ceiling=ceiling_rows(report))
    return env.get_template(TEMPLATE).render(
        report=report, images=images, overall_note=OVERALL_NOTE, verdict_note=VERDICT_NOTE, tables=tables,
        headline=verdict_headline(report), roles_warning=roles_warning(report), reading=reading_line(report),
        interval=fmt_interval)


def build_report(results: dict[str, Any] | RunResults, out_dir: Path) -> dict[str, Path]:
    """Write report.html, report.json, report.md and plots/*.png under ``out_dir``; returns
    ``{"html", "json", "md", <plot name>...}`` -> path (the pipeline uploads the folder)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parsed = parse_results(results)
    report = compute_report(parsed)
    plot_paths = _draw_plots(parsed, report, out_dir / "plots")
    images = {name: base64.b64encode(path.read_bytes()).decode("ascii") for name, path in plot_paths.items()}
    paths = {"html": out_dir / "report.html", "json": out_dir / "report.json", "md": out_dir / "report.md"}
    paths["html"].write_text(_render_html(report, images), encoding="utf-8")
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    paths["md"].write_text(_markdown(report), encoding="utf-8")
    return {**paths, **plot_paths}


# -- plain-text and Markdown tables ------------------------------------------------------------
def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = lambda r: "| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"  # noqa: E731
    return "\n".join([cells(header), cells(["---"] * len(header)), *(cells(r) for r in rows)])


def _metric_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["cycle", "split", "metric", "baseline", "fine-tuned", "delta", "95% CI", "p", "verdict",
              "improved", "n", "failed"]
    rows = [
        [str(r["cycle"]), r["split"], r["metric"], fmt_score(r["baseline_mean"]), fmt_score(r["finetuned_mean"]),
         fmt_signed(r["mean_delta"]), fmt_interval(r["ci_low"], r["ci_high"]), fmt_p(r["p_value"]), r["verdict"],
         fmt_share(r["improved_share"]), str(r["paired"]), str(r["failures"])]
        for r in report["across"]["table"]
    ]
    return header, rows


def _overall_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["split", "metric", "n", "first baseline", "last fine-tuned", "delta", "95% CI", "p", "verdict"]
    rows = [
        [split, metric, str(o["n"]), fmt_score(o["first_baseline_mean"]), fmt_score(o["last_finetuned_mean"]),
         fmt_signed(o["mean_delta"]), fmt_interval(o["ci_low"], o["ci_high"]), fmt_p(o["p_value"]), o["verdict"]]
        for split, per_metric in report["across"]["overall"].items() for metric, o in per_metric.items()
    ]
    return header, rows


VERDICT_HEADER = ["comparison", "metric", "n", "before", "after", "delta", "95% CI", "p", "MDE", "verdict"]


def _verdict_row(label: str, metric: str, c: dict[str, Any]) -> list[str]:
    return [label, metric, str(c["n"]), fmt_score(c["before_mean"]), fmt_score(c["after_mean"]),
            fmt_signed(c["mean_delta"]),
            fmt_interval(c["ci_low"], c["ci_high"]), fmt_p(c["p_value"]), fmt_score(c["mde"]), c["verdict"]]


def verdict_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The gold verdict: start -> last per metric, then each cycle against the one before."""
    verdict = report["verdict"]
    last = f"{verdict['start_model']} -> after cycle {verdict['last_cycle']}"
    rows = [_verdict_row(last, m, c) for m, c in verdict["overall"].items()]
    for step in verdict["per_cycle"]:
        rows += [_verdict_row(f"{step.get('step') or 'cycle ' + str(step['cycle'])}: {step['from']} -> {step['to']}",
                              m, c)
                 for m, c in step["metrics"].items()]
    rows += [_verdict_row(f"topic {topic}: start -> after cycle {verdict['last_cycle']}", verdict["lead_metric"], c)
             for topic, c in verdict["by_topic"].items()]
    return VERDICT_HEADER, rows


def ceiling_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "n", "start", "after last cycle", "teacher open book", "gap closed", "95% CI"]
    rows = []
    for metric, c in report["verdict"]["overall"].items():
        gap = c.get("gap_closed") or {}
        rows.append([metric, fmt_count(gap.get("n")), fmt_score(gap.get("start_mean")), fmt_score(gap.get("end_mean")),
                     fmt_score(gap.get("ceiling_mean")),
                     fmt_share(gap.get("share")), fmt_share_interval(gap.get("ci_low"), gap.get("ci_high"))])
    return header, rows


def verdict_headline(report: dict[str, Any]) -> str:
    """One sentence: the lead gold metric's verdict, its numbers, and the share of the gap closed."""
    verdict = report["verdict"]
    if not verdict:
        return "No gold set was scored in this run (evaluation.gold_path is null): no verdict on independent questions."
    lead = verdict["lead_metric"]
    c = verdict["overall"][lead]
    total = verdict.get("set_items", verdict["items"])
    scored = (f"{verdict['items']} questions" if total == verdict["items"]
              else f"a stratified sample of {verdict['items']} of its {total} questions")
    text = (f"Gold set ({scored}), {lead}: {verdict['start_model']} {fmt_score(c['before_mean'])} "
            f"-> {fmt_score(c['after_mean'])} after cycle {verdict['last_cycle']}, delta {fmt_signed(c['mean_delta'])} "
            f"{fmt_interval(c['ci_low'], c['ci_high'])}, p {fmt_p(c['p_value'])}, MDE {fmt_score(c['mde'])}: "
            f"{c['verdict'].upper()}.")
    gap = c.get("gap_closed") or {}
    if gap.get("share") is not None:
        interval = "" if gap.get("ci_low") is None else " " + fmt_share_interval(gap["ci_low"], gap["ci_high"])
        sample = "" if gap["n"] == c["n"] else f", on a stratified sample of {gap['n']} of {c['n']} questions"
        by = "reading the knowledge base and distillation" if verdict.get("read") else "distillation"
        text += (f" Share of the gap to the open-book teacher ({fmt_score(gap.get('ceiling_mean'))}{sample}) closed by "
                 f"{by}: {fmt_share(gap['share'])}{interval}.")
    return text


def roles_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["role", "model", "provider", "where"]
    return header, [[r.get("role", ""), r.get("model", ""), r.get("provider", ""), r.get("where", "")]
                    for r in report["roles"]]


def reading_line(report: dict[str, Any]) -> str | None:
    """One sentence on what the student started from: the knowledge base read first (by this run or an
    earlier one, reused), or why not. None for a run from before the reading step."""
    reading = report.get("reading")
    if not reading:
        return None
    if not reading.get("read"):
        return f"The student did not read the knowledge base before cycle 1 ({reading.get('reason')})."
    who = ("in this run" if reading.get("read_in_run") == report["run_id"]
           else f"by run {reading.get('read_in_run')}, reused")
    training = reading.get("training") or {}
    loss = (f", loss {training['initial_loss']:.3f} -> {training['final_loss']:.3f}"
            if training.get("initial_loss") is not None and training.get("final_loss") is not None else "")
    return (f"Before cycle 1 the student read the knowledge base: {reading.get('documents')} passages of "
            f"{', '.join(reading.get('topics') or [])} as plain text, every weight, {reading.get('learning_rate')} x "
            f"{reading.get('epochs')} epochs ({who}{loss}); cycle 1 starts from that student.")


def roles_warning(report: dict[str, Any]) -> str | None:
    """A judge that is the student's own base model grades its own kind: say so beside the scores."""
    by_role = {r.get("role"): r for r in report["roles"]}
    judge, student = by_role.get("judge"), by_role.get("student")
    if judge and student and judge.get("family") and judge.get("family") == student.get("family"):
        return (f"The judge ({judge['model']}) is the student's own base model: judge-scored metrics "
                "(answer_relevancy) are weak evidence here; the gold verdict above needs no judge.")
    return None


def coverage_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["cycle", "passages covered", "passages", "coverage", "decontaminated"]
    rows = [[str(c["cycle"]), fmt_count(c["coverage"].get("passages_covered")),
             fmt_count(c["coverage"].get("passages")),
             fmt_share(c["coverage"].get("share")), str(len(c["decontaminated"]))] for c in report["cycles"]]
    return header, rows


def _training_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["cycle", "train time", "steps", "tokens/s", "final loss"]
    rows = []
    for c in report["cycles"]:
        t = c["training"] or {}
        rows.append([str(c["cycle"]), fmt_seconds(t.get("wall_s")), fmt_count(t.get("steps")),
                     fmt_rate(t.get("tokens_per_s")), fmt_score(t.get("final_loss"))])
    return header, rows


def gate_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Teacher-data gate counts, one row per cycle; columns are every count any cycle recorded."""
    columns = list(dict.fromkeys(k for c in report["cycles"] for k in c["gate"]))
    rows = [[str(c["cycle"]), *(fmt_count(c["gate"].get(k)) for k in columns)] for c in report["cycles"]]
    return ["cycle", *(k.replace("_", " ") for k in columns)], rows


def gate_dropped_lines(report: dict[str, Any], limit: int = GATE_DROPPED_SHOWN, width: int = 160) -> list[str]:
    """One line per item the gate dropped (cycle, split, question, reason); at most ``limit``,
    then how many more (report.html and report.json list them all)."""
    clip = lambda s: " ".join(str(s).split())[:width]  # noqa: E731
    items = [(c["cycle"], d) for c in report["cycles"] for d in c["gate_dropped"]]
    lines = [f"cycle {n} {d.get('split', 'train')}: {clip(d.get('question') or d.get('question_id'))} - "
             f"{clip(d.get('reason'))}"
             for n, d in items[:limit]]
    if len(items) > limit:
        lines.append(f"... and {len(items) - limit} more (see report.html)")
    return lines


def review_lines(report: dict[str, Any]) -> list[str]:
    """One line per answered review: who decided what, when (or that the timeout took the default)."""
    return [review["reason"] for review in report.get("reviews") or []]


def _usage_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "calls", "cache hits", "errors", "prompt tokens", "completion tokens", "cost"]
    rows = [[task, str(u["calls"]), str(u["cache_hits"]), str(u["errors"]), str(u["prompt_tokens"]),
             str(u["completion_tokens"]), fmt_usd(u["cost_usd"])] for task, u in report["usage"].items()]
    return header, rows


def _sample_text(sample: dict[str, Any], width: int = 400) -> str:
    clip = lambda s: " ".join(str(s).split())[:width]  # noqa: E731
    scores = lambda stage: ", ".join(  # noqa: E731
        f"{m}={fmt_score(v)}" for m, v in sample[f"{stage}_scores"].items()) or DASH
    return "\n".join([
        f"[cycle {sample['cycle']} | {sample['split']} | {sample['topic']} | {sample['question_id']}]",
        f"Q: {clip(sample['question'])}",
        f"baseline ({scores('baseline')}): {clip(sample['baseline_answer'])}",
        f"fine-tuned ({scores('finetuned')}): {clip(sample['finetuned_answer'])}",
        f"reference: {clip(sample['reference'])}",
    ])


def render_tables(results: dict[str, Any] | RunResults) -> dict[str, str]:
    """Plain-text tables for the DAG's "Display ..." tasks, computed like the report."""
    report = compute_report(results)
    promotion = report["promotion"]
    decision = ""
    if promotion:
        outcome = "PROMOTED" if promotion.get("promote") else "kept champion"
        decision = f"\n\npromotion: {outcome} - {promotion.get('reason', '')}"
    success_header = ["cycle", "split", "metric", "improved", "above thr before", "above thr after", "paired"]
    success_rows = [
        [str(r["cycle"]), r["split"], r["metric"], fmt_share(r["improved_share"]),
         fmt_share(r["baseline_above_threshold_share"]),
         fmt_share(r["finetuned_above_threshold_share"]), str(r["paired"])]
        for r in report["across"]["table"]
    ]
    return {
        "final_results": "\n\n".join(verdict_text(report)) + "\n\n" + text_table(*_metric_rows(report)) + decision
                         + "".join(f"\nhealth: {line}" for line in report["health"]),
        "performance_comparison": ("held-out set: start -> last fine-tuned, paired\n"
                                   + text_table(*_overall_rows(report))),
        "improvement_statistics": "\n\n".join([
            f"success threshold {report['success_threshold']}\n" + text_table(success_header, success_rows),
            text_table(*_training_rows(report)),
            "teacher data quality gate\n" + text_table(*gate_rows(report)),
            "dropped by the gate\n" + ("\n".join(gate_dropped_lines(report)) or "nothing"),
            text_table(*_usage_rows(report)) if report["usage"] else "no teacher/judge usage recorded",
        ]),
        "sample_qa": "\n\n".join(_sample_text(s) for s in report["samples"]) or "no answers recorded",
    }


def verdict_text(report: dict[str, Any], table=text_table) -> list[str]:  # noqa: ANN001 - a table renderer
    """The verdict block, first in every output: headline, gold verdict and ceiling, the roles."""
    parts = ["VERDICT: " + verdict_headline(report)]
    if line := reading_line(report):
        parts.append(line)
    if report["verdict"]:
        parts += ["gold set, paired by question\n" + table(*verdict_rows(report)), VERDICT_NOTE]
        if report["verdict"]["has_ceiling"]:
            parts.append("ceiling: the teacher answering the gold questions open book\n" + table(*ceiling_rows(report)))
    if report["roles"]:
        parts.append("roles\n" + table(*roles_rows(report)))
        if warning := roles_warning(report):
            parts.append("WARNING: " + warning)
    return parts


def _markdown(report: dict[str, Any]) -> str:
    promotion, dropped = report["promotion"], gate_dropped_lines(report)
    parts = [
        f"# kdflow run {report['run_id']}",
        "## Verdict", *verdict_text(report, _markdown_table),
        f"Headline metric of the teacher-written sets: **{report['headline_metric']}**; success threshold "
        f"{report['success_threshold']}.",
        "## Held-out set (teacher-written): start -> last fine-tuned, paired",
        _markdown_table(*_overall_rows(report)), OVERALL_NOTE,
        "## Knowledge-base coverage and decontamination", _markdown_table(*coverage_rows(report)),
        "## Per cycle", _markdown_table(*_metric_rows(report)),
        "## Training", _markdown_table(*_training_rows(report)),
        "## Teacher data quality gate", _markdown_table(*gate_rows(report)),
        ("Dropped by the gate:\n\n" + "\n".join(f"- {line}" for line in dropped)
         if dropped else "The gate dropped nothing."),
    ]
    if report["usage"]:
        parts += ["## Teacher and judge usage", _markdown_table(*_usage_rows(report))]
    if promotion:
        parts += ["## Promotion",
                  f"{'Promoted' if promotion.get('promote') else 'Not promoted'}: {promotion.get('reason', '')}"]
    if report["reviews"]:
        parts += ["## Reviews (a person in the loop)", "\n".join(f"- {line}" for line in review_lines(report))]
    parts.append("Full report with plots and sample answers: report.html")
    return "\n\n".join(parts) + "\n"
