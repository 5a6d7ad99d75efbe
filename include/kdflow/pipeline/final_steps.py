"""Final steps: compare all cycles, the promotion gate, the report, and the "Display/Show" boxes
that log its tables. Every number comes from the published per-question scores."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import tempfile
from pathlib import Path
from typing import Any

from kdflow.pipeline.artifacts import (
    BATCH_TASK_PREFIX,
    champion_dir,
    champion_history_key,
    champion_key,
    current_champion,
    cycle_scores,
    describe_start,
    run_gold,
    run_questions,
    start_model,
    statistics_of,
    stored_champion,
    student_base,
)
from kdflow.pipeline.context import CheckpointError, RunContext
from kdflow.pipeline.review import read_decision, run_decisions
from kdflow.records import ScoreRow, gate_drop_reason
from kdflow.store import run_key

log = logging.getLogger(__name__)

TEACHER_TASKS = ("held_out_questions", "questions", "references", "gold_ceiling")


def completed_cycles(ctx: RunContext) -> list[int]:
    """The cycles this run asked for that finished. Only those: a rerun that asks for fewer cycles
    than an earlier try must not report the earlier try's later cycles, still in the store."""
    return [n for n in range(1, ctx.config.pipeline.cycles + 1) if ctx.has_checkpoint(n, "results.json")]


def _all_scores(ctx: RunContext, cycles: list[int]) -> dict[int, list[ScoreRow]]:
    return {n: cycle_scores(ctx, n, "baseline") + cycle_scores(ctx, n, "finetuned") for n in cycles}


def compare_all_cycles(ctx: RunContext, cycle: None) -> dict[str, Any]:
    """The per-cycle table, the held-out trend and overall change, and the verdict on the gold set."""
    from kdflow.evaluation.aggregate import compare_all
    from kdflow.evaluation.verdict import gold_verdict

    cycles = completed_cycles(ctx)
    if not cycles:
        raise CheckpointError(f"run {ctx.run_id} has no completed cycle to compare")
    comparisons = [ctx.store.read_json(ctx.checkpoint(n, "comparison.json")) for n in cycles]
    scores, stats = _all_scores(ctx, cycles), statistics_of(ctx)
    across = compare_all(comparisons, scores, **stats)
    across["gold"] = gold_verdict(scores, ctx.config.evaluation.gold_metrics, ceiling=_gold_ceiling(ctx) or None,
                                  start_model=start_model(ctx), **stats)
    lead = across["gold"] and across["gold"]["overall"][across["gold"]["lead_metric"]]
    summary = {"cycles": cycles, "gold_verdict": lead and lead["verdict"], "gold_delta": lead and lead["mean_delta"]}
    return ctx.stage_json(None, "all_cycles.json", across, summary=summary).to_xcom()


def calculate_overall_improvement(ctx: RunContext, cycle: None) -> dict[str, Any]:
    """The model the run started from -> the last adapter, paired on the same questions: the gold
    set per metric (with the share of the gap to the open-book teacher closed) and the held-out set."""
    across = ctx.store.read_json(ctx.pointer("compare_all_cycles"))
    overall = dict(across["overall"])
    if across.get("gold"):
        overall["gold"] = across["gold"]["overall"]
    summary = {f"{split}.{metric}": f"{values.get('verdict')} ({values.get('mean_delta') or 0:+.3f})"
               for split, metrics in overall.items() for metric, values in metrics.items()}
    for key, value in summary.items():
        log.info("overall improvement %s: %s", key, value)
    return ctx.stage_json(None, "overall.json", overall, summary=summary).to_xcom()


def _cycle_result(ctx: RunContext, n: int) -> dict[str, Any]:

    gold = run_gold(ctx)
    questions = {q.id: q for q in [*run_questions(ctx, n), *(item.as_question() for item in gold)]}
    references = {r["question_id"]: r for r in ctx.rows(ctx.checkpoint(n, "references.jsonl"))}
    references |= {q.id: {"question_id": q.id, "reference": item.answer}
                   for item, q in ((item, item.as_question()) for item in gold)}
    answers: dict[str, dict[str, Any]] = {}
    for stage in ("baseline", "finetuned"):
        for a in ctx.rows(ctx.checkpoint(n, f"{stage}_answers.jsonl")):
            q = questions[a["question_id"]]
            entry = answers.setdefault(a["question_id"], {
                "question_id": q.id, "topic": q.topic, "split": q.split, "question": q.question,
                "reference": references.get(q.id, {}).get("reference", "")})
            entry[f"{a['stage']}_answer"] = a["answer"]  # cycle 1's baseline file may hold "unread" answers too
    training = ctx.store.read_json(ctx.checkpoint(n, "training.json"))
    dataset = ctx.checkpoint(n, "dataset.jsonl").summary or {}
    cycle_questions = [q for q in questions.values() if q.split == "train"]
    # reference counts are over this cycle's training questions (held-out references recur every cycle)
    decisions = [references.get(q.id, {}).get("gate", {}).get("decision") for q in cycle_questions]
    gate = {
        "questions_kept": len(cycle_questions),
        "questions_regenerated": sum(1 for q in cycle_questions if q.gate.get("attempts", 1) > 1),
        "questions_rejected": sum(len(q.gate.get("rejected", [])) for q in cycle_questions),
        **{f"references_{d}": decisions.count(d)
           for d in ("kept", "rewritten", "regenerated", "extractive", "dropped")},
    }
    dropped = [
        {"question_id": qid, "split": questions[qid].split if qid in questions else "train", "question": r["question"],
         "reason": reason}
        for qid, r in references.items() if (reason := gate_drop_reason(r)) is not None
    ]
    return {
        "cycle": n,
        "scores": [s.model_dump() for s in cycle_scores(ctx, n, "baseline") + cycle_scores(ctx, n, "finetuned")],
        "training": {k: training.get(k) for k in ("losses", "wall_s", "tokens_per_s", "steps")},
        "answers": list(answers.values()),
        "gate": gate,
        "gate_dropped": dropped,
        "coverage": dataset.get("coverage") or {},
        "decontaminated": dataset.get("decontaminated") or [],
    }


def _usage(ctx: RunContext) -> dict[str, dict[str, Any]]:
    from kdflow.llm.cache import UsageLedger

    teacher, judge, batch = UsageLedger(), UsageLedger(), UsageLedger()
    requested = {"run", *(f"cycle_{n}" for n in range(1, ctx.config.pipeline.cycles + 1))}
    for key in ctx.store.list_keys(run_key(ctx.run_id, "usage")):
        scope, _, task = key.rsplit("/", 1)[-1].removesuffix(".json").partition("__")
        if scope not in requested:  # a later cycle of an earlier, longer try of this run
            continue
        # Batched calls (teacher.batch) were answered by the batch, at its price; the steps then ran from the cache.
        ledger = batch if task.startswith(BATCH_TASK_PREFIX) else teacher if task in TEACHER_TASKS else judge
        ledger.merge(ctx.store.read_json(key))
    rows = [("teacher", teacher), ("judge", judge)] + ([("batch API", batch)] if batch.tasks else [])
    return {name: dataclasses.asdict(ledger.total()) for name, ledger in rows}


def promotion_gate(ctx: RunContext, last_cycle: int) -> dict[str, Any]:
    """The promotion gate's verdict on the run's last adapter, without acting on it: its paired gold-set
    delta against the model the run started from (held-out without a gold set) must have its interval's
    lower bound above the margin, with no topic regressing. The promotion review shows it to a person."""
    from kdflow.evaluation.promotion import decide_promotion

    cfg = ctx.config.promotion
    split = "gold" if ctx.has_checkpoint(None, "gold.jsonl") else "held_out"
    candidate = [s for s in cycle_scores(ctx, last_cycle, "finetuned") if s.split == split]
    # The incumbent is the model cycle 1 started from (the champion, or the base model when there is
    # none), scored in this run on the same questions; where the student read the knowledge base first with no
    # champion of the read base, the base model as it was before reading (stage "unread"): what a user had.
    start = [s for s in cycle_scores(ctx, 1, "baseline") if s.split == split]
    unread = [s for s in start if s.stage == "unread"]
    incumbent = unread or [s for s in start if s.stage == "baseline"]
    decision = decide_promotion(candidate, incumbent, cfg, metric=cfg.metric, split=split, **statistics_of(ctx))
    decision["incumbent"] = describe_start(current_champion(ctx)) + (" before reading the knowledge base"
                                                                     if unread else "")
    return decision


def with_review(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """The gate's ``decision`` after the promotion review (``review.promotion``): a promotion the gate
    proposes happens only when a reviewer approved it (or the timeout default is ``promote``); with no
    recorded answer it fails closed and keeps the champion."""
    if not ctx.config.review.promotion or not decision["promote"]:
        return decision
    review = read_decision(ctx.store, ctx.run_id, "promotion")
    if review is None:
        return {**decision, "promote": False, "reason": f"no promotion review was answered; kept the champion "
                                                        f"(the gate: {decision['reason']})"}
    reviewed = {**decision, "review": {**review.model_dump(mode="json"), "reason": review.reason}}
    if review.outcome == "promoted":
        return reviewed
    return {**reviewed, "promote": False, "reason": f"{review.reason} (the gate: {decision['reason']})"}


def _promotion(ctx: RunContext, last_cycle: int) -> dict[str, Any]:
    """Decide whether the run's last adapter becomes the champion of its student model (the gate, then the
    review when ``review.promotion`` is on), and record it (the champion it replaces goes to that model's
    history)."""
    cfg = ctx.config.promotion
    champion = current_champion(ctx)
    decision = with_review(ctx, promotion_gate(ctx, last_cycle))
    split = decision["split"]
    if decision["promote"]:
        model, base = ctx.config.student.model, student_base(ctx)
        replaced = stored_champion(ctx)
        if replaced is not None:  # kept before it is replaced: no promotion loses a champion
            ctx.store.write_json(champion_history_key(model, replaced), replaced)
        previous = champion
        if champion is not None:  # keep the chain short: the history folder holds the older ones
            previous = {k: v for k, v in champion.items() if k != "previous"}
        ctx.store.write_json(champion_key(model), {
            # the adapter belongs to the run's student base: the configured model, or its reading of the KB
            # (whose folder the export merges into: "student_base")
            "run_id": ctx.run_id, "cycle": last_cycle, "base_model": base["base_model"],
            "student_base": base.get("model"),
            # the champion's own copy: never retired by a rerun of this run (copy_dir)
            "adapter": ctx.store.copy_dir(ctx.checkpoint(last_cycle, "adapter"),
                                          f"{champion_dir(model)}/adapter").to_xcom(),
            "held_out_scores": ctx.checkpoint(last_cycle, "finetuned_scores.jsonl").key, "metric": cfg.metric,
            "split": split, "mean": decision.get("candidate_mean"), "promoted_at": dt.datetime.now(dt.UTC).isoformat(),
            "previous": previous})
    outcome = "PROMOTED" if decision["promote"] else "kept the current champion"
    log.info("promotion: %s (%s)", outcome, decision["reason"])
    return decision


def _gold_ceiling(ctx: RunContext) -> dict[str, dict[str, float | None]]:
    """Question id -> metric -> the teacher's open-book score on the gold set ({} when not measured)."""
    if not ctx.has_checkpoint(None, "gold_ceiling.jsonl"):
        return {}
    return {row["question_id"]: row["scores"] for row in ctx.rows(ctx.checkpoint(None, "gold_ceiling.jsonl"))}


def _roles(ctx: RunContext) -> list[dict[str, str]]:
    """Teacher, judge and student: model, provider, local or remote, and a family name to tell when
    the judge is the student's own base model."""
    teacher = ctx.config.teacher
    if teacher.provider == "embedded":
        teacher_row = {"model": teacher.served_model, "provider": "embedded llama.cpp", "where": "local (127.0.0.1)"}
    else:
        provider = "openai-compatible" + (f" at {teacher.base_url}" if teacher.base_url else "")
        teacher_row = {"model": teacher.served_model, "provider": provider,
                       "where": "local" if teacher.is_local else "remote"}
    student_row = {"model": ctx.config.student.served_model, "provider": "transformers + peft",
                   "where": "local (this worker)"}
    rows = [{"role": "teacher", **teacher_row}, {"role": "judge", **teacher_row}, {"role": "student", **student_row}]
    return [{**row, "family": model_family(row["model"])} for row in rows]


def model_family(name: str) -> str:
    """``HuggingFaceTB/SmolLM2-135M-Instruct`` and ``smollm2-135m-instruct-q8_0`` are one family."""
    import re

    stem = name.rsplit("/", 1)[-1].lower().removesuffix(".gguf")
    return re.sub(r"([-_.](instruct|chat|it|q\d\w*|f16|bf16|fp16|gguf))+$", "", stem)


def tracking_health(ctx: RunContext) -> list[str]:
    """The report's health lines about experiment tracking; reading them must not fail the report."""
    from kdflow.tracking import health_lines

    try:
        return health_lines(ctx)
    except Exception as exc:  # noqa: BLE001 - the store records are advisory
        return [f"MLflow tracking status unknown ({type(exc).__name__})."]


def teacher_health(ctx: RunContext) -> list[str]:
    """The report's line about a teacher model kdflow has no profile for (what it sent, what the cost
    means), or nothing. The embedded server is always known."""
    from kdflow.llm.profiles import resolve_teacher

    if ctx.config.teacher.provider != "openai":
        return []
    note = resolve_teacher(ctx.config.teacher).note()
    return [note] if note else []


def save_pipeline_results(ctx: RunContext, cycle: None) -> dict[str, Any]:
    from kdflow.evaluation.report import build_report

    all_cycles = ctx.publish(None, "all_cycles.json", ctx.pointer("compare_all_cycles"))
    ctx.publish(None, "overall.json", ctx.pointer("calculate_overall_improvement"))
    cycles = completed_cycles(ctx)
    results = {
        "run_id": ctx.run_id,
        "metrics": list(ctx.config.evaluation.metrics),
        "headline_metric": ctx.config.evaluation.metrics[0],
        "success_threshold": ctx.config.evaluation.success_threshold,
        "cycles": [_cycle_result(ctx, n) for n in cycles],
        "usage": _usage(ctx),
        "promotion": _promotion(ctx, cycles[-1]),
        "gold_metrics": list(ctx.config.evaluation.gold_metrics) if ctx.has_checkpoint(None, "gold.jsonl") else [],
        "gold_ceiling": _gold_ceiling(ctx),
        "gold_set_items": len(run_gold(ctx)),
        "start_model": start_model(ctx),
        "statistics": statistics_of(ctx),
        "roles": _roles(ctx),
        "health": tracking_health(ctx) + teacher_health(ctx),
        "reviews": run_decisions(ctx.store, ctx.run_id, cycles),
        "reading": {k: v for k, v in student_base(ctx).items() if k != "model"},
    }
    results = ctx.mask(results)  # the report is rendered from these: a base URL's credentials never reach it
    ctx.publish_json(None, "results.json", results)
    with tempfile.TemporaryDirectory(prefix="kdflow-report-") as tmp:
        files = build_report(results, Path(tmp))
        report = ctx.store.upload_dir(tmp, ctx.key(None, "report"))
    html_url = ctx.store.url_of(ctx.store.folder_key(report, files["html"].relative_to(tmp).as_posix()))
    ctx.record(None, "report", report)
    summary = {"report_html": html_url, "cycles": cycles, "promoted": results["promotion"]["promote"],
               "all_cycles": all_cycles.url, "student": ctx.config.student.model}
    log.info("report: %s", html_url)
    return report.model_copy(update={"summary": summary}).to_xcom()


def pipeline_complete(ctx: RunContext, cycle: None) -> dict[str, Any]:
    """Record the run as complete (beside run.json, which stays as start_pipeline wrote it)."""
    started = ctx.store.read_json(ctx.checkpoint(None, "run.json"))
    record = {**started, "finished_at": dt.datetime.now(dt.UTC).isoformat(), "status": "complete",
              "report": ctx.pointer("save_pipeline_results")["summary"]["report_html"]}
    return ctx.publish_json(None, "completion.json", record, summary={"report": record["report"]}).to_xcom()


def _show(ctx: RunContext, table: str) -> dict[str, Any]:
    """Log one table of the report, readable in the task log."""
    from kdflow.evaluation.report import render_tables

    text = render_tables(ctx.store.read_json(ctx.checkpoint(None, "results.json")))[table]
    log.info("%s\n%s", table.replace("_", " ").title(), text)
    report = ctx.pointer("save_pipeline_results")["summary"]["report_html"]
    return {"table": table, "report": report, "lines": text.count("\n") + 1}


def display_final_results(ctx: RunContext, cycle: None) -> dict[str, Any]:
    return _show(ctx, "final_results")


def show_performance_comparison(ctx: RunContext, cycle: None) -> dict[str, Any]:
    return _show(ctx, "performance_comparison")


def display_improvement_statistics(ctx: RunContext, cycle: None) -> dict[str, Any]:
    return _show(ctx, "improvement_statistics")


def show_sample_qa_pairs(ctx: RunContext, cycle: None) -> dict[str, Any]:
    return _show(ctx, "sample_qa")
