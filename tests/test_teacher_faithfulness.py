"""The teacher-data gate on hand-made passages (issue #10; the data is in fixtures_teacher.py): a
question with an appended answer, an unanswerable question, a reference with one supported and one
unsupported sentence, a reference with nothing supported; each handled and recorded. Then the
report's gate section, and (slow) the embedded teacher end to end: every reference that would reach
training is supported."""

from __future__ import annotations

import pytest

from fixtures_teacher import GATE, PASSAGES, QUESTION, SUPPORTED, TEXTS, UNSUPPORTED, teacher
from kdflow.config import GateConfig
from kdflow.kb import split_sentences
from kdflow.teacher.faithfulness import PassageSentences
from kdflow.teacher.gate import DuplicateIndex, check_question
from kdflow.teacher.references import review_reference


@pytest.mark.parametrize(
    ("question", "reason"),
    [
        ("What does the kubelet do when a Pod fails its readiness probe? Answer: The kubelet will remove itself from "
         "the endpoints",
         "not exactly one question"),
        ("What does the kubelet do with a failing Pod. Answer: it removes it?", "appended answer"),
        ("Who painted the ceiling of the Sistine Chapel in Rome?", "not answerable from its passage"),
    ],
)
def test_bad_and_unanswerable_questions_are_rejected_with_reason_and_scores(question, reason):
    verdict = check_question(GateConfig(), question, PASSAGES[0], DuplicateIndex([], threshold=0.92))
    assert not verdict.ok and reason in verdict.reason
    if "answerable" in reason:
        assert verdict.scores["passage_similarity"] < GateConfig().passage_floor


def test_a_supported_reference_is_kept_as_written():
    draft = teacher(f"{SUPPORTED} The EndpointSlice only lists ready Pods that match the selector.")
    reviewed = review_reference(QUESTION, TEXTS, draft, GATE)
    assert reviewed.mode == "abstractive" and reviewed.gate["decision"] == "kept"
    assert draft.asked == [0] and len(split_sentences(reviewed.text)) == 2
    assert all(s["kept"] and s["support"] >= GATE.support_floor for s in reviewed.gate["drafts"][0]["sentences"])


def test_one_supported_and_one_unsupported_sentence_keeps_only_the_supported_one():
    reviewed = review_reference(QUESTION, TEXTS, teacher(f"{SUPPORTED} {UNSUPPORTED}"), GATE)
    assert reviewed.text == SUPPORTED and reviewed.mode == "abstractive"
    record = reviewed.gate
    assert record["decision"] == "rewritten" and "1 unsupported sentence(s) removed" in record["reason"]
    sentences = record["drafts"][0]["sentences"]
    assert [s["text"] for s in sentences] == [SUPPORTED, UNSUPPORTED]
    assert [s["kept"] for s in sentences] == [True, False]
    assert sentences[1]["support"] < GATE.support_floor <= sentences[0]["support"]
    assert {"semantic", "lexical"} <= set(sentences[1]) and record["drafts"][0]["kept_share"] == 0.5


def test_nothing_supported_is_regenerated_then_kept():
    draft = teacher("Bananas are rich in potassium. The Moon orbits the Earth.", SUPPORTED)
    reviewed = review_reference(QUESTION, TEXTS, draft, GATE)
    assert draft.asked == [0, 1] and reviewed.text == SUPPORTED
    assert reviewed.gate["decision"] == "regenerated" and reviewed.gate["attempts"] == 2
    assert reviewed.gate["drafts"][0]["kept_share"] == 0.0


def test_nothing_supported_after_the_bound_falls_back_to_an_extractive_reference():
    draft = teacher(UNSUPPORTED, "Bananas are rich in potassium.", SUPPORTED)
    reviewed = review_reference(QUESTION, TEXTS, draft, GATE)
    assert draft.asked == [0, 1]  # GATE.reference_attempts drafts, no more
    assert reviewed.mode == "extractive" and reviewed.gate["decision"] == "extractive"
    assert SUPPORTED in reviewed.text  # the passage sentence closest to the question
    assert all(s in PassageSentences(TEXTS).sentences for s in split_sentences(reviewed.text))
    assert reviewed.gate["scores"]["question_similarity"] >= GATE.extractive_floor
    assert "after 2 attempt(s)" in reviewed.gate["reason"]


def test_abstractive_mode_drops_what_the_gate_cannot_save():
    gate = GateConfig(reference_mode="abstractive", reference_attempts=1)
    reviewed = review_reference(QUESTION, TEXTS, teacher(UNSUPPORTED), gate)
    assert reviewed.gate["decision"] == "dropped" and reviewed.mode == "abstractive"
    assert "no draft kept 50% of its sentences" in reviewed.gate["reason"]


def test_an_unanswerable_question_is_dropped_even_in_hybrid_mode():
    question = "Who painted the ceiling of the Sistine Chapel in Rome?"
    reviewed = review_reference(question, TEXTS, teacher("The passages do not say.", "Michelangelo painted it."), GATE)
    assert reviewed.gate["decision"] == "dropped" and reviewed.text
    assert "no passage sentence answers the question" in reviewed.gate["reason"]


def test_extractive_mode_never_asks_the_teacher():
    draft = teacher()
    reviewed = review_reference(QUESTION, TEXTS, draft, GateConfig(reference_mode="extractive", extractive_sentences=1))
    assert draft.asked == [] and reviewed.text == SUPPORTED
    assert reviewed.gate["decision"] == "extractive" and reviewed.gate["reason"] == "reference_mode is extractive"


def test_the_llm_check_can_veto_a_sentence_the_scores_support():
    def judge(question, sentences, passages):
        assert question == QUESTION and passages == TEXTS
        return [0.0 if "EndpointSlice" in s else None for s in sentences]  # None: the judge abstains

    other = "The control plane keeps an EndpointSlice up to date with the ready Pods."
    reviewed = review_reference(QUESTION, TEXTS,
                                teacher(f"{SUPPORTED} {other}", "A Service selects its backend Pods."), GATE, judge)
    first = reviewed.gate["drafts"][0]["sentences"]
    assert [s["llm"] for s in first] == [0.0, 0.0] and not any(s["kept"] for s in first)
    assert reviewed.gate["decision"] == "regenerated" and "llm" not in reviewed.gate["drafts"][1]["sentences"][0]


def test_sentence_split_keeps_abbreviations_and_versions():
    assert split_sentences("Use a controller, e.g. a Deployment. Kubernetes v1.28 is the version! Done") == [
        "Use a controller, e.g. a Deployment.", "Kubernetes v1.28 is the version!", "Done"]


def test_report_shows_gate_counts_per_cycle_and_the_dropped_items(tmp_path):
    from kdflow.evaluation.report import build_report, render_tables
    from kdflow.records import ScoreRow

    dropped = {"question_id": "services-x", "split": "train", "question": "Who painted the Sistine Chapel?",
               "reason": "no passage <b>"}
    cycles = [{
        "cycle": n, "gate": {"questions_kept": 3, "references_rewritten": n, "references_dropped": n - 1},
        "gate_dropped": [dropped] if n == 2 else [],
        "scores": [ScoreRow(question_id="q", topic="pods", split="train", stage=s, cycle=n,
                            scores={"rouge_l": 0.5}).model_dump()
                   for s in ("baseline", "finetuned")],
    } for n in (1, 2)]
    results = {"run_id": "gate", "metrics": ["rouge_l"], "headline_metric": "rouge_l", "cycles": cycles}
    html = build_report(results, tmp_path)["html"].read_text()
    section = html.split("<h2>Teacher data quality gate</h2>")[1].split("<h2>")[0]
    assert "references rewritten" in section and "<td>2</td><td>3</td><td>2</td><td>1</td>" in section
    assert "Who painted the Sistine Chapel?" in section and "no passage &lt;b&gt;" in section
    text = render_tables(results)["improvement_statistics"]
    assert "teacher data quality gate" in text and "references dropped" in text


@pytest.mark.slow
def test_embedded_teacher_references_reaching_training_are_supported(embedded_endpoint, tmp_path):
    """One topic end to end with the real SmolLM2 teacher and the default gate (hybrid)."""
    from kdflow.config import load_config
    from kdflow.kb import load_knowledge_base
    from kdflow.llm import UsageLedger, make_client
    from kdflow.pipeline.student_steps import trainable_references
    from kdflow.retrieval import Retriever
    from kdflow.store import ArtifactStore
    from kdflow.teacher import generate_questions, generate_references

    cfg = load_config(environ={}).teacher.model_copy(update={"max_tokens": 160})  # quick on 2 shared cores
    gate = cfg.gate
    kb, store = load_knowledge_base(), ArtifactStore(str(tmp_path))
    client = make_client(embedded_endpoint, store, UsageLedger(), task="gate")
    questions = generate_questions(client, embedded_endpoint, cfg, kb, "storage", 2, existing=[], seed=11, cycle=1)
    assert all(q.gate["decision"] == "kept" and "rejected" in q.gate for q in questions)
    references = generate_references(client, embedded_endpoint, cfg, Retriever(kb, store), questions, top_k=3)
    assert [r.question_id for r in references] == [q.id for q in questions]
    for ref in references:
        record = ref.gate
        assert record["decision"] in {"kept", "rewritten", "regenerated", "extractive", "dropped"} and record["reason"]
        assert (ref.mode == "extractive") == (record["decision"] == "extractive") or record["decision"] == "dropped"
    # the selection prepare_training_dataset makes; a gate that drops everything would train on nothing
    trained, dropped = trainable_references(references, {q.id for q in questions})
    assert trained, f"every reference was dropped: {dropped}"
    for ref in trained:
        support = PassageSentences([p["text"] for p in ref.passages]).score(split_sentences(ref.reference))
        assert support and all(s.support >= gate.support_floor for s in support), (ref.reference, support)


@pytest.mark.slow
def test_ragas_faithfulness_judge_gives_one_vote_per_sentence(embedded_endpoint, tmp_path):
    """The LLM hook against the real judge: one score in [0, 1] or an abstention per sentence, counted as
    judge usage."""
    from kdflow.config import load_config
    from kdflow.llm import UsageLedger
    from kdflow.store import ArtifactStore
    from kdflow.teacher.faithfulness import ragas_sentence_judge

    ledger = UsageLedger()
    judge = ragas_sentence_judge(load_config(environ={}).evaluation, embedded_endpoint,
                                 store=ArtifactStore(str(tmp_path)), ledger=ledger)
    votes = judge(QUESTION, [SUPPORTED, UNSUPPORTED], TEXTS)
    assert len(votes) == 2 and all(v is None or 0.0 <= v <= 1.0 for v in votes)
    assert ledger.as_dict()["tasks"]["judge"]["calls"] >= 2


def test_a_teacher_reply_cut_at_max_tokens_is_a_failed_draft_not_a_failed_task(tmp_path, fake_completion_server):
    """SmolLM2 sometimes loops until max_tokens: every draft unusable -> extractive reference, recorded."""
    from kdflow.config import load_config
    from kdflow.kb import load_knowledge_base
    from kdflow.llm import Endpoint, UsageLedger, make_client
    from kdflow.records import Question
    from kdflow.retrieval import Retriever
    from kdflow.store import ArtifactStore
    from kdflow.teacher.references import generate_reference

    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "services.md").write_text("# Services\n\n## Endpoints\n\n" + PASSAGES[0].text + "\n")
    kb = load_knowledge_base(str(tmp_path / "kb"))
    endpoint = Endpoint(fake_completion_server(content='{"answer": "A Pod that fails'), "fake", "x",
                        "json_object_schema")
    store = ArtifactStore(str(tmp_path / "store"))
    client = make_client(endpoint, store, UsageLedger(), task="references", max_retries=0)
    question = Question(id="services-q", topic="services", question=QUESTION, passage_ids=[kb.passages[0].id])
    reference = generate_reference(client, endpoint, load_config(environ={}).teacher,
                                   Retriever(kb, store), question, top_k=1)
    assert reference.mode == "extractive" and reference.gate["decision"] == "extractive"
    assert [d["draft"] for d in reference.gate["drafts"]] == ["", ""] and SUPPORTED in reference.reference
    assert fake_completion_server.server.requests == 6  # 2 drafts x 3 JSON attempts, then no more
