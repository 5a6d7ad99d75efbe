"""Reading the knowledge base (kdflow.student.kb_reading): when a student reads, and what names a reading."""

from __future__ import annotations

import pytest

from kdflow.config import StudentConfig
from kdflow.student import device
from kdflow.student.kb_reading import reading_key, reading_plan

GIB = 1024**3
DOCUMENTS = ["Pods: a Pod is the smallest deployable unit.", "Services: a Service exposes Pods."]


@pytest.fixture()
def gpu(monkeypatch):
    """A GPU worker with 40 GiB free, where QLoRA trains the student in 4-bit."""
    monkeypatch.setattr(device, "read_free_gpu_bytes", lambda: 40 * GIB)


def _cfg(enabled, **extra) -> StudentConfig:
    return StudentConfig(kb_reading={"enabled": enabled}, **extra)


def test_auto_reads_on_the_cpu_and_false_never_reads(monkeypatch):
    monkeypatch.setattr(device, "read_free_gpu_bytes", lambda: None)
    plan, why = reading_plan(_cfg("auto"))
    assert plan is not None and plan.device == "cpu" and plan.quantization is None and "auto" in why
    assert reading_plan(_cfg(False)) == (None, "student.kb_reading.enabled is false")


def test_auto_leaves_a_4bit_student_as_it_is_and_true_reads_it_unquantized(gpu):
    plan, why = reading_plan(_cfg("auto", load_in_4bit=True))
    assert plan is None and "trains in nf4" in why and "student.kb_reading.enabled=true" in why
    plan, why = reading_plan(_cfg(True, load_in_4bit=True))
    assert plan.device == "cuda" and plan.quantization is None and why == "student.kb_reading.enabled is true"
    plan, _ = reading_plan(_cfg("auto", load_in_4bit=False))
    assert plan.device == "cuda" and plan.quantization is None


def test_a_bad_setting_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="kb_reading.enabled"):
        _cfg("sometimes")


def test_the_key_names_the_student_the_passages_and_every_setting_that_changes_the_weights():
    cfg = _cfg("auto")
    key = reading_key("embedded", DOCUMENTS, cfg, 42)
    assert key == reading_key("embedded", list(DOCUMENTS), _cfg(True), 42)  # whether it reads is not what it reads
    others = [reading_key("microsoft/phi-2", DOCUMENTS, cfg, 42), reading_key("embedded", DOCUMENTS[:1], cfg, 42),
              reading_key("embedded", DOCUMENTS, cfg, 7),
              reading_key("embedded", DOCUMENTS, _cfg("auto").model_copy(update={"max_length": 256}), 42),
              reading_key("embedded", DOCUMENTS, StudentConfig(kb_reading={"epochs": 1}), 42),
              reading_key("embedded", DOCUMENTS, StudentConfig(kb_reading={"learning_rate": 3e-4}), 42)]
    assert len({key, *others}) == 7 and all(len(k) == 16 for k in others)


def test_the_cycles_train_gently_on_a_student_that_read_only_where_asked():
    """On a read student the cycles take kb_reading's cycles_* numbers, and the resolved training profile uses
    them (not the architecture's); a student that did not read, or settings without them, train as usual."""
    from types import SimpleNamespace

    from kdflow.student.kb_reading import cycles_settings
    from kdflow.student.profiles import resolve_profile

    gentle = StudentConfig(kb_reading={"cycles_learning_rate": 1e-4, "cycles_epochs": 1})
    llama = SimpleNamespace(model_type="llama", max_position_embeddings=2048)
    read = resolve_profile(cycles_settings(gentle, True), llama)
    assert (read.learning_rate, read.epochs) == (1e-4, 1)
    assert cycles_settings(gentle, False) is gentle
    usual = resolve_profile(cycles_settings(gentle, False), llama)
    assert (usual.learning_rate, usual.epochs) != (1e-4, 1)
    usual = StudentConfig(kb_reading={"cycles_learning_rate": None, "cycles_epochs": None})  # null: as usual
    assert cycles_settings(usual, True) is usual
