"""The teacher-data gate through the pipeline steps (issue #10), on a local store holding two
cycles of checkpoints whose references carry real gate records (:func:`review_reference` on the
hand-made passages of fixtures_teacher.py): training uses only gated pairs and says
what it dropped, evaluation never scores against a dropped reference, and the report's gate
counts come from the checkpoints."""

from __future__ import annotations

import pytest

from fixtures_reliability import SMALL_GOLD, smallest_overrides
from fixtures_teacher import GATE, PASSAGES, QUESTION, SUPPORTED, TEXTS, UNSUPPORTED, teacher
from kdflow.config import GateConfig
from kdflow.gold import load_gold
from kdflow.pipeline import execute
from kdflow.pipeline.context import RunContext
from kdflow.records import Answer, Question, Reference, TrainingPair
from kdflow.teacher.references import review_reference

RUN = "manual__gate"
ALSO_SUPPORTED = "The EndpointSlice only lists ready Pods that match the selector."
UNANSWERABLE = "Who painted the ceiling of the Sistine Chapel in Rome?"
KB_PASSAGE = "services/services#endpointslices-0"  # a real passage: the coverage counts the KB's own
HELD_OUT_QUESTION = "How do EndpointSlices treat Pods that are not ready?"
NEAR_GOLD = "Which interface does the kubelet use to ask the container runtime to create a Pod sandbox?"
# question id -> (question, teacher drafts, gate, expected decision); c1/c2: trained in cycle 1/2, held: held-out
ITEMS = {
    "services-c1-kept": (QUESTION, [f"{SUPPORTED} {ALSO_SUPPORTED}"], GATE, "kept"),
    "services-c1-extractive": (QUESTION, [UNSUPPORTED, "Bananas are rich in potassium."], GATE, "extractive"),
    "services-c1-dropped": (UNANSWERABLE, ["The passages do not say.", "Michelangelo painted it."], GATE, "dropped"),
    "services-c2-rewritten": (QUESTION, [f"{SUPPORTED} {UNSUPPORTED}"], GATE, "rewritten"),
    "services-c2-dropped": (QUESTION, [UNSUPPORTED],
                            GateConfig(reference_mode="abstractive", reference_attempts=1), "dropped"),
    # a training question 0.95 (MiniLM cosine) from gold item pods-01's: decontamination keeps it out of training
    "services-c2-near-gold": (NEAR_GOLD, [SUPPORTED], GATE, "kept"),
    # the held-out question differs from the trained ones (cosine 0.58), or decontamination would remove them all
    "services-held-kept": (HELD_OUT_QUESTION, [SUPPORTED], GATE, "kept"),
    "services-held-dropped": (UNANSWERABLE, ["Michelangelo.", "Michelangelo painted it."], GATE, "dropped"),
}  # fmt: skip


def _question(qid: str) -> Question:
    split = "held_out" if "-held-" in qid else "train"
    cycle = None if split == "held_out" else int(qid.split("-")[1][1])
    # the cycle-1 kept question needed a second draft: one rejection recorded by the question gate
    rejected = [{"question": "What is it? Answer: a Pod",
                 "reason": "appended answer"}] if qid == "services-c1-kept" else []
    gate = {"decision": "kept", "attempts": 1 + len(rejected), "rejected": rejected}
    return Question(id=qid, topic="services", question=ITEMS[qid][0], passage_ids=[KB_PASSAGE], split=split,
                    cycle=cycle, gate=gate)


def _reference(qid: str) -> Reference:
    question, drafts, gate, decision = ITEMS[qid]
    reviewed = review_reference(question, TEXTS, teacher(*drafts), gate)
    assert reviewed.gate["decision"] == decision, (qid, reviewed.gate)
    return Reference(question_id=qid, question=question, reference=reviewed.text,
                     mode=reviewed.mode, gate=reviewed.gate,
                     passages=[{"id": p.id, "text": p.text} for p in PASSAGES])


def _publish(ctx: RunContext, cycle: int | None, name: str, schema: str, rows) -> None:
    ctx.publish(cycle, name, ctx.stage_rows(cycle, name, rows), schema=schema)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two cycles published as the teacher and student steps would, then scored by the real
    evaluation steps (reference metrics only: no judge). Every answer repeats its reference
    word for word, so a dropped reference that were scored would score 1.0."""
    overrides = smallest_overrides(str(tmp_path_factory.mktemp("gate") / "store"), "unused",
                                   pipeline={"topics": ["services"]},
                                   evaluation={"metrics": ["rouge_l", "bleu"]})
    ctx = RunContext.create(RUN, overrides)
    references = {qid: _reference(qid) for qid in ITEMS}
    held_out = [_question(qid) for qid in ITEMS if "-held-" in qid]
    _publish(ctx, None, "held_out.jsonl", "held_out", held_out)
    ctx.publish(None, "gold.jsonl", ctx.stage_rows(None, "gold.jsonl", load_gold(SMALL_GOLD).items))
    for n in (1, 2):
        questions = [_question(qid) for qid in ITEMS if qid.split("-")[1] == f"c{n}"]
        _publish(ctx, n, "questions.jsonl", "questions", questions)
        _publish(ctx, n, "references.jsonl", "references", [references[q.id] for q in questions + held_out])
        for stage in ("baseline", "finetuned"):
            answers = [Answer(question_id=q.id, question=q.question, answer=references[q.id].reference, stage=stage,
                              split=q.split, model="student", new_tokens=8) for q in questions + held_out]
            _publish(ctx, n, f"{stage}_answers.jsonl", "answers", answers)
            staged = execute(f"evaluate_{stage}", run_id=RUN, overrides=overrides, cycle=n)
            ctx.publish(n, f"{stage}_scores.jsonl", staged, schema="scores")
        ctx.publish_json(n, "training.json", {"losses": [1.5, 0.75], "wall_s": 2.0, "tokens_per_s": 40.0, "steps": 2})
    return ctx, overrides, references


def test_training_uses_only_gated_pairs_of_every_cycle_and_says_what_it_dropped(run):
    ctx, overrides, references = run
    pointer = execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=2)
    pairs = [TrainingPair.model_validate(r) for r in ctx.rows(pointer)]
    assert [(p.question_id, p.cycle) for p in pairs] == [("services-c1-kept", 1), ("services-c1-extractive", 1),
                                                         ("services-c2-rewritten", 2)]
    assert all(p.completion == references[p.question_id].reference and p.prompt == QUESTION for p in pairs)
    assert pairs[2].completion == SUPPORTED  # the unsupported sentence was cut before training
    summary = pointer["summary"]
    reasons = {qid: references[qid].gate["reason"] for qid in ("services-c1-dropped", "services-c2-dropped")}
    assert summary["pairs"] == 3 and summary["dropped"] == 2
    assert summary["dropped_reasons"] == {reasons["services-c1-dropped"]: 1, reasons["services-c2-dropped"]: 1}
    assert "no passage sentence answers the question" in reasons["services-c1-dropped"]
    assert "no draft kept 50% of its sentences" in reasons["services-c2-dropped"]
    assert [(d["cycle"], d["question_id"], d["reason"]) for d in summary["dropped_items"]] == [
        (1, "services-c1-dropped", reasons["services-c1-dropped"]),
        (2, "services-c2-dropped", reasons["services-c2-dropped"])]
    assert ctx.checkpoint(2, "dataset.jsonl").sha256 == pointer["sha256"]
    # the planted near-duplicate of a gold question was gated in, then kept out of training, and said so
    [removed] = summary["decontaminated"]
    assert (removed["question_id"], removed["cycle"]) == ("services-c2-near-gold", 2) and removed["similarity"] >= 0.8
    assert removed["closest"] == load_gold(SMALL_GOLD).items[0].question
    # every trained question cites the same KB passage: 1 of the services topic's 68 passages is covered
    assert summary["coverage"] == {"passages_covered": 1, "passages": 68, "share": pytest.approx(1 / 68)}
    # cycle 1 alone: its own pairs only; the held-out questions (one kept, one dropped) never enter nor count
    first = execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=1)
    assert [r["question_id"] for r in ctx.rows(first)] == ["services-c1-kept", "services-c1-extractive"]
    assert first["summary"]["dropped"] == 1 and not any("held" in d["question_id"]
                                                        for d in first["summary"]["dropped_items"])


def test_decontamination_protects_gold_items_the_student_is_not_scored_on(run):
    """`make run` scores a sample of the gold set (evaluation.gold_per_topic); a training question close to a
    gold question outside the sample is still kept out: a later run may score that item."""
    from kdflow.config import deep_merge, load_config
    from kdflow.gold import scored_gold

    ctx, overrides, _ = run
    sampled = deep_merge(overrides, {"evaluation": {"gold_per_topic": 1}})
    items = load_gold(SMALL_GOLD).items
    assert items[0] not in scored_gold(load_config(sampled, environ={}), items)  # pods-01 is not scored
    pointer = execute("prepare_training_dataset", run_id=RUN, overrides=sampled, cycle=2)
    [removed] = pointer["summary"]["decontaminated"]
    assert removed["question_id"] == "services-c2-near-gold" and removed["closest"] == items[0].question
    assert "services-c2-near-gold" not in {r["question_id"] for r in ctx.rows(pointer)}


def test_a_dropped_reference_is_no_ground_truth_for_evaluation(run):
    from kdflow.evaluation.aggregate import aggregate
    from kdflow.pipeline.artifacts import cycle_scores

    ctx, _, references = run
    rows = {r.question_id: r for r in cycle_scores(ctx, 1, "baseline")}
    assert set(rows) == {"services-c1-kept", "services-c1-extractive", "services-c1-dropped", "services-held-kept",
                         "services-held-dropped"}
    for qid in ("services-c1-dropped", "services-held-dropped"):
        why = f"reference dropped by the quality gate: {references[qid].gate['reason']}"
        assert rows[qid].scores == {"rouge_l": None,
                                    "bleu": None} and rows[qid].failures == {"rouge_l": why, "bleu": why}
    for qid in ("services-c1-kept", "services-c1-extractive", "services-held-kept"):
        assert rows[qid].failures == {} and rows[qid].scores["rouge_l"] == pytest.approx(1.0)
    summary = aggregate(list(rows.values()))["by_split_stage"]  # counted as failures, left out of the means
    train, held = summary["train"]["baseline"]["rouge_l"], summary["held_out"]["baseline"]["bleu"]
    assert (train["count"], train["failures"], held["count"], held["failures"]) == (2, 1, 1, 1)
    assert train["mean"] == pytest.approx(1.0)


def test_report_gate_counts_and_dropped_items_come_from_the_checkpoints(run):
    from kdflow.evaluation.report import compute_report, gate_dropped_lines, render_tables
    from kdflow.pipeline.final_steps import _cycle_result

    ctx, _, references = run
    results = {"run_id": RUN, "metrics": ["rouge_l", "bleu"], "headline_metric": "rouge_l",
               "cycles": [_cycle_result(ctx, n) for n in (1, 2)]}
    report = compute_report(results)
    zero = dict.fromkeys(["references_kept", "references_rewritten", "references_regenerated",
                          "references_extractive"], 0)
    assert [c["gate"] for c in report["cycles"]] == [
        {"questions_kept": 3, "questions_regenerated": 1, "questions_rejected": 1,
         **zero, "references_kept": 1, "references_extractive": 1, "references_dropped": 1},
        {"questions_kept": 3, "questions_regenerated": 0, "questions_rejected": 0,
         **zero, "references_kept": 1, "references_rewritten": 1, "references_dropped": 1},
    ]
    assert [len(c["decontaminated"]) for c in report["cycles"]] == [0, 1]  # the near-gold question, counted
    # dropped items: this cycle's train questions and the held-out ones (each cycle scores them again)
    assert [[(d["question_id"], d["split"]) for d in c["gate_dropped"]] for c in report["cycles"]] == [
        [("services-c1-dropped", "train"), ("services-held-dropped", "held_out")],
        [("services-c2-dropped", "train"), ("services-held-dropped", "held_out")],
    ]
    reason = references["services-c2-dropped"].gate["reason"]
    lines = gate_dropped_lines(report)
    assert len(lines) == 4 and lines[2] == f"cycle 2 train: {QUESTION} - {reason}"
    assert lines[2] in render_tables(results)["improvement_statistics"]
    held = report["cycles"][0]["splits"]["held_out"]["rouge_l"]
    assert held["finetuned_count"] == 1 and held["failures"] == 2  # the dropped held-out reference, both stages


def test_passage_pairs_add_each_cited_passage_once(run):
    """student.passage_pairs: the KB passage every trained question cites joins the dataset once, in its own words."""
    from kdflow.kb import load_knowledge_base

    ctx, overrides, _ = run
    with_passages = {**overrides, "student": {**overrides["student"], "passage_pairs": True}}
    pointer = execute("prepare_training_dataset", run_id=RUN, overrides=with_passages, cycle=2)
    pairs = [TrainingPair.model_validate(r) for r in ctx.rows(pointer)]
    [extra] = [p for p in pairs if p.question_id.startswith("passage:")]
    passage = load_knowledge_base().by_id(KB_PASSAGE)
    assert (extra.question_id, extra.cycle, extra.completion) == (f"passage:{KB_PASSAGE}", 1, passage.text)
    assert extra.prompt == "What does the Kubernetes v1.28 documentation say about EndpointSlices?"
    assert len(pairs) == 4 and pointer["summary"]["coverage"]["passages_covered"] == 1
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=2)  # leave the module's run as it was


def test_passage_form_sentences_cuts_a_cited_passage_into_two_sentence_answers(run):
    """student.passage_form: sentences - the cited passage joins as pairs of two of its sentences each (in
    order, every sentence once), under the same section question, each citing the passage in the
    published dataset."""
    import io

    import pyarrow.parquet as pq

    from kdflow.kb import load_knowledge_base, split_sentences

    ctx, overrides, _ = run
    cut = {**overrides, "student": {**overrides["student"], "passage_pairs": "cited", "passage_form": "sentences"}}
    pointer = execute("prepare_training_dataset", run_id=RUN, overrides=cut, cycle=2)
    pairs = [TrainingPair.model_validate(r) for r in ctx.rows(pointer)]
    extra = [p for p in pairs if p.question_id.startswith("passage:")]
    sentences = split_sentences(load_knowledge_base().by_id(KB_PASSAGE).text)
    assert len(sentences) > 2 and len(extra) == (len(sentences) + 1) // 2
    assert [p.question_id for p in extra] == [f"passage:{KB_PASSAGE}@{k}" for k in range(1, len(extra) + 1)]
    assert [p.completion for p in extra] == [" ".join(sentences[i:i + 2]) for i in range(0, len(sentences), 2)]
    assert {p.prompt for p in extra} == {"What does the Kubernetes v1.28 documentation say about EndpointSlices?"}
    data = ctx.store.folder_file(ctx.checkpoint(2, "hf_dataset"), "train.parquet")
    cites = {row["question_id"]: row["passage_ids"] for row in pq.read_table(io.BytesIO(data)).to_pylist()}
    assert all(cites[p.question_id] == [KB_PASSAGE] for p in extra)
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=2)  # leave the module's run as it was


def test_passage_pairs_all_add_every_passage_of_the_selected_topics(run):
    """student.passage_pairs: all - every passage of the run's topics joins the dataset once (the cited
    one too, not twice), and coverage counts them; true still means cited."""
    from kdflow.config import load_config
    from kdflow.kb import load_knowledge_base

    ctx, overrides, _ = run
    everything = {**overrides, "student": {**overrides["student"], "passage_pairs": "all"}}
    pointer = execute("prepare_training_dataset", run_id=RUN, overrides=everything, cycle=2)
    pairs = [TrainingPair.model_validate(r) for r in ctx.rows(pointer)]
    extra = [p.question_id.removeprefix("passage:") for p in pairs if p.question_id.startswith("passage:")]
    kb = load_knowledge_base()
    selected = [p.id for topic in ctx.config.pipeline.topics for p in kb.passages_for(topic)]
    assert sorted(extra) == sorted(selected) and KB_PASSAGE in extra
    assert pointer["summary"]["coverage"]["passages_covered"] == 1  # coverage counts what the teacher's pairs cite
    assert load_config({"student": {"passage_pairs": True}}).student.passage_pairs == "cited"
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=2)  # leave the module's run as it was


def test_with_training_pairs_new_a_cycle_trains_on_its_own_pairs_only(run):
    """pipeline.training_pairs: new: cycle 2's dataset holds cycle 2's gated pairs, not cycle 1's again; the box says
    how many (the design's default, all, counts every cycle so far)."""
    from kdflow.config import load_config
    from kdflow.pipeline.registry import ALL_STEPS, display_name

    ctx, overrides, _ = run
    new = {**overrides, "pipeline": {**overrides.get("pipeline", {}), "training_pairs": "new"}}
    pointer = execute("prepare_training_dataset", run_id=RUN, overrides=new, cycle=2)
    pairs = [TrainingPair.model_validate(r) for r in ctx.rows(pointer)]
    assert [(p.question_id, p.cycle) for p in pairs] == [("services-c2-rewritten", 2)]
    assert [d["cycle"] for d in pointer["summary"]["dropped_items"]] == [2]
    spec, q = ALL_STEPS["prepare_training_dataset"], load_config(overrides).pipeline.questions_per_cycle
    assert display_name(spec, load_config(new), 2) == f"Prepare Training Dataset {q} Q&A Pairs Total"
    assert display_name(spec, load_config(overrides), 2) == f"Prepare Training Dataset {2 * q} Q&A Pairs Total"
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=2)  # leave the module's run as it was
