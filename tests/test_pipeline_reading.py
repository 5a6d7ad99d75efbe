"""The pipeline's read_knowledge_base step on a tiny student and a real local store: the first run reads
the knowledge base (every weight trained) and keeps the model in the store; a later run reuses it without
training; the run's student steps load it, cycle 1's baseline also answers the gold set as the student was
before reading; a champion trained on another base is not started from; an export merges into the read
model; and a run that does not read records why."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from kdflow.pipeline.artifacts import (
    DONE_FILE,
    READ_SUFFIX,
    champion_key,
    current_champion,
    reading_cache_key,
    student_base,
    student_model_path,
)
from kdflow.pipeline.context import RunContext
from kdflow.pipeline.reading_steps import read_knowledge_base
from kdflow.pipeline.setup_steps import cycle_start
from kdflow.pipeline.student_steps import generate_baseline_answers
from kdflow.records import Question

GOLD = "tests/data/gold-small.jsonl"


def _context(store: str, run_id: str, student: str, enabled: bool | str = True) -> RunContext:
    return RunContext.create(run_id, {
        "store": {"url": store}, "seed": 5,
        "pipeline": {"topics": ["pods"], "cycles": 1, "questions_per_cycle": 1},
        "student": {"model": student, "max_length": 64, "batch_size": 8, "max_new_tokens": 6, "torch_threads": 1,
                    "kb_reading": {"enabled": enabled, "epochs": 1, "learning_rate": 1e-3}},
        "evaluation": {"metrics": ["rouge_l"], "gold_path": GOLD, "gold_max_new_tokens": 8,
                       "teacher_ceiling": False}})


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(next(iter(sorted(folder.glob("*.safetensors"))))))


@pytest.fixture(scope="module")
def first_reading(tmp_path_factory, tiny_phi_dir):
    store = str(tmp_path_factory.mktemp("store"))
    ctx = _context(store, "nightly_1", str(tiny_phi_dir))
    return ctx, read_knowledge_base(ctx, None)


def test_the_first_run_reads_the_knowledge_base_and_keeps_the_model(first_reading, tiny_phi_dir):
    ctx, _ = first_reading
    base = student_base(ctx)
    assert base["read"] is True and base["read_in_run"] == "nightly_1" and base["documents"] > 10
    assert base["base_model"] == f"{tiny_phi_dir}{READ_SUFFIX}{base['key']}" and base["topics"] == ["pods"]
    assert base["training"]["steps"] >= 1 and base["training"]["final_loss"] < base["training"]["initial_loss"]
    assert ctx.store.exists(reading_cache_key(str(tiny_phi_dir), base["key"]) + ".json")
    folder = student_model_path(ctx, base)
    assert (folder / DONE_FILE).exists() and (folder / "config.json").exists()
    read, shipped = _weights(folder), _weights(tiny_phi_dir)
    moved = [name for name, tensor in shipped.items() if not torch.equal(tensor, read[name].to(tensor.dtype))]
    assert len(moved) > len(shipped) // 2  # every weight trained, not an adapter


def test_a_later_run_reuses_the_reading_without_training(first_reading, tiny_phi_dir, monkeypatch):
    from kdflow.student import full_finetune

    ctx, pointer = first_reading
    monkeypatch.setattr(full_finetune, "train_full", lambda *a, **k: pytest.fail("the reading was trained again"))
    later = _context(ctx.store.url, "nightly_2", str(tiny_phi_dir))
    read_knowledge_base(later, None)
    first, again = student_base(ctx), student_base(later)
    assert again["read_in_run"] == "nightly_1" and again["model"] == first["model"]
    assert again["base_model"] == first["base_model"]
    # a rerun of the first run records the same checkpoint as its first try
    read_knowledge_base(ctx, None)
    assert ctx.store.read_json(ctx.checkpoint(None, "student_base.json")) == first


def test_the_baseline_answers_the_gold_set_before_and_after_reading(first_reading, tiny_phi_dir, monkeypatch):
    from kdflow.gold import load_gold
    from kdflow.student import generate

    ctx, _ = first_reading
    answered_with, answer = [], generate.answer_questions

    def spy(cfg, model_path, *args, **kwargs):
        answered_with.append(str(model_path))
        return answer(cfg, model_path, *args, **kwargs)

    monkeypatch.setattr(generate, "answer_questions", spy)
    items = load_gold(GOLD).for_topics(["pods"])
    ctx.publish(None, "gold.jsonl", ctx.stage_rows(None, "gold.jsonl", items))
    question = Question(id="pods-c1-1", topic="pods", question="What is a Pod in Kubernetes?",
                        passage_ids=["pods/pods#what-a-pod-is-1"], cycle=1)
    ctx.record(1, "questions.jsonl", ctx.store.write_jsonl(ctx.key(1, "questions.jsonl"), [question]))
    cycle_start(ctx, 1)
    rows = ctx.rows(generate_baseline_answers(ctx, 1))
    base = student_base(ctx)
    by_stage = {stage: [r for r in rows if r["stage"] == stage] for stage in ("baseline", "unread")}
    assert len(by_stage["baseline"]) == 1 + len(items) and len(by_stage["unread"]) == len(items)
    assert {r["model"] for r in by_stage["baseline"]} == {base["base_model"]}
    assert {r["model"] for r in by_stage["unread"]} == {str(tiny_phi_dir)}
    assert {r["split"] for r in by_stage["unread"]} == {"gold"}
    assert answered_with == [str(student_model_path(ctx)), str(tiny_phi_dir)]  # the read model, then the unread one


def test_a_champion_trained_on_another_base_is_not_started_from(first_reading, tiny_phi_dir):
    ctx, _ = first_reading
    record = {"run_id": "older", "cycle": 1, "base_model": str(tiny_phi_dir), "adapter": None}
    ctx.store.write_json(champion_key(str(tiny_phi_dir)), record)
    try:
        assert current_champion(ctx) is None  # trained on the student before it read the knowledge base
        ctx.store.write_json(champion_key(str(tiny_phi_dir)), {**record, "base_model": student_base(ctx)["base_model"]})
        assert current_champion(ctx)["run_id"] == "older"
    finally:
        ctx.store.delete_prefix(champion_key(str(tiny_phi_dir)))


def test_an_export_merges_into_the_model_the_run_read(first_reading, tiny_phi_dir):
    from kdflow.export.source import ExportSource

    ctx, _ = first_reading
    source = ExportSource(ctx, 1, {}, {"student": {"model": str(tiny_phi_dir)}}, champion=False)
    assert source.base_path() == student_model_path(ctx)
    other = _context(ctx.store.url, "not_read", str(tiny_phi_dir), enabled=False)
    read_knowledge_base(other, None)
    assert ExportSource(other, 1, {}, {"student": {"model": str(tiny_phi_dir)}}, champion=False).base_path() \
        == tiny_phi_dir


def test_a_run_that_does_not_read_records_why_and_loads_the_configured_student(tmp_path, tiny_phi_dir):
    ctx = _context(str(tmp_path / "store"), "plain", str(tiny_phi_dir), enabled=False)
    read_knowledge_base(ctx, None)
    base = student_base(ctx)
    assert base == {"read": False, "reason": "student.kb_reading.enabled is false", "base_model": str(tiny_phi_dir),
                    "model": None}
    assert student_model_path(ctx) == tiny_phi_dir
    assert not ctx.store.list_keys("cache/kb-reading")


def test_the_cycles_train_their_adapter_on_the_read_student_with_the_cycles_numbers(first_reading, tiny_phi_dir,
                                                                                   tmp_path):
    """finetune_student loads the read model and trains at kb_reading's cycles_* numbers (the reading itself is
    reused: those numbers are not part of its key)."""
    import json

    from kdflow.pipeline.student_steps import finetune_student
    from kdflow.student.dataset import write_dataset_folder
    from kdflow.student.tiny_models import TINY_PAIRS

    ctx, _ = first_reading
    gentle = RunContext.create("gentle", {**ctx.overrides, "student": {
        **ctx.overrides["student"], "kb_reading": {**ctx.overrides["student"]["kb_reading"],
                                                   "cycles_learning_rate": 1e-4, "cycles_epochs": 1}}})
    read_knowledge_base(gentle, None)
    assert student_base(gentle)["read_in_run"] == "nightly_1"
    cycle_start(gentle, 1)
    train = [{"question_id": f"q{i}", "cycle": 1, "topic": "pods", "prompt": q, "completion": a,
              "passage_ids": ["pods/pods#what-a-pod-is-1"]} for i, (q, a) in enumerate(TINY_PAIRS)]
    folder = write_dataset_folder(tmp_path / "dataset", {"train": train}, "card")
    gentle.record(1, "hf_dataset", gentle.store.upload_dir(folder, gentle.key(1, "hf_dataset")))
    adapter = finetune_student(gentle, 1)
    result = json.loads(gentle.store.folder_file(adapter, "train_result.json"))
    assert (result["profile"]["learning_rate"], result["profile"]["epochs"]) == (1e-4, 1)
    base = json.loads(gentle.store.folder_file(adapter, "kdflow_base.json"))
    assert base["name"] == student_model_path(gentle).name  # trained on the read folder, not the configured one


def test_a_second_fetch_on_the_same_machine_keeps_the_folder_in_place(first_reading, monkeypatch):
    """Two workers fetching the read student at once: the one that finishes second discards its copy instead of
    replacing the folder the first may be loading from."""
    ctx, _ = first_reading
    folder = student_model_path(ctx)
    marker = folder / "in-use"
    marker.write_text("a worker loads from here")
    monkeypatch.setattr(type(folder / DONE_FILE), "exists", lambda self: False)  # as if not yet in place
    assert student_model_path(ctx) == folder and marker.is_file()  # (exists is patched)
    assert not list(folder.parent.glob(f".{folder.name}.*.partial"))
    marker.unlink()


def test_the_embedded_student_is_named_by_its_content_in_the_key():
    """An upgraded embedded model (another GGUF) must not reuse the old model's reading."""
    from kdflow.pipeline.reading_steps import model_identity

    assert model_identity("embedded", "/home/a/.cache/kdflow/models/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e") == \
        "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e"
    assert model_identity("/models/x.gguf", "/cache/x-0123456789ab") == "x-0123456789ab"
    assert model_identity("microsoft/phi-2", "microsoft/phi-2") == "microsoft/phi-2"
