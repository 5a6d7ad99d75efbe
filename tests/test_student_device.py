"""Device plan, memory release, model resolution and the shared prompt: no model is loaded."""

from __future__ import annotations

import json

import pytest

from kdflow.config import StudentConfig
from kdflow.student.device import GIB, DevicePlan, plan_device, read_free_gpu_bytes, release_memory
from kdflow.student.models import StudentModelError, check_adapter, resolve_student


def test_plan_reads_the_real_device_when_no_reading_is_given():
    free = read_free_gpu_bytes()
    plan = plan_device(StudentConfig(gpu_min_free_gib=10.0, cpu_dtype="float32"), "train")
    if free is None:  # no CUDA: the CPU plan, float32, plain LoRA
        assert (plan.device, plan.dtype, plan.quantization, plan.free_gpu_gib) == ("cpu", "float32", None, None)
        assert "no CUDA" in plan.reason
    else:
        assert plan.free_gpu_gib is not None and plan.device == ("cuda" if free >= 10 * GIB else "cpu")


@pytest.mark.parametrize(
    ("purpose", "free_gib", "load_in_4bit", "expected"),
    [
        ("train", 12.0, True, ("cuda", "bfloat16", "nf4")),
        ("train", 12.0, False, ("cuda", "bfloat16", None)),
        ("answer", 12.0, True, ("cuda", "bfloat16", None)),  # bnb 4-bit generation is slower than bf16
        ("train", 10.0, True, ("cuda", "bfloat16", "nf4")),  # at the threshold counts as enough
        ("train", 9.99, True, ("cpu", "float32", None)),
        ("answer", 0.5, True, ("cpu", "float32", None)),
    ],
)
def test_plan_from_faked_free_memory(purpose, free_gib, load_in_4bit, expected):
    cfg = StudentConfig(gpu_min_free_gib=10.0, load_in_4bit=load_in_4bit, cpu_dtype="float32")
    plan = plan_device(cfg, purpose, free_gpu_bytes=int(free_gib * GIB))
    assert (plan.device, plan.dtype, plan.quantization) == expected
    assert plan.free_gpu_gib == pytest.approx(free_gib, abs=0.01)
    assert plan.threshold_gib == 10.0
    assert str(plan.threshold_gib) in plan.reason
    assert DevicePlan.model_validate_json(plan.model_dump_json()) == plan  # recorded in step outputs


@pytest.mark.parametrize(("cpu_dtype", "native", "answer", "train"), [
    ("bfloat16", False, ("bfloat16", None), ("float32", "bfloat16")),  # train: float32 weights, bf16 autocast
    ("float32", True, ("float32", None), ("float32", None)),
    ("auto", True, ("bfloat16", None), ("float32", "bfloat16")),
    ("auto", False, ("float32", None), ("float32", None)),  # emulated bf16 is slower than float32
])
def test_cpu_plans_follow_cpu_dtype_and_the_cpu(monkeypatch, cpu_dtype, native, answer, train):
    import kdflow.student.device as device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    cfg = StudentConfig(cpu_dtype=cpu_dtype)
    for purpose, expected in (("answer", answer), ("train", train)):
        plan = plan_device(cfg, purpose, free_gpu_bytes=0)
        assert (plan.device, plan.dtype, plan.compute_dtype) == ("cpu", *expected)
        assert plan.free_gpu_gib == 0.0 and "below" in plan.reason


def test_native_bf16_is_read_from_the_cpu_flags():
    from pathlib import Path

    from kdflow.student.device import cpu_has_native_bf16

    flags = Path("/proc/cpuinfo").read_text()
    assert cpu_has_native_bf16() == ("amx_bf16" in flags or "avx512_bf16" in flags)


def test_plan_rejects_unknown_purpose():
    with pytest.raises(ValueError, match="purpose"):
        plan_device(StudentConfig(), "evaluate", free_gpu_bytes=0)


def test_release_memory_empties_the_model_even_if_still_referenced():
    import torch

    model = torch.nn.Linear(512, 512)
    report = release_memory(model)
    assert model.weight.numel() == 0 and model.bias.numel() == 0
    assert set(report) == {"before", "after"} and "rss_mb" in report["before"]


def test_resolve_local_folder_and_errors(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_student(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(StudentModelError, match="no config.json"):
        resolve_student(str(tmp_path.parent))
    with pytest.raises(StudentModelError, match="GGUF file not found"):
        resolve_student(str(tmp_path / "missing.gguf"))
    with pytest.raises(StudentModelError, match="folder not found"):
        resolve_student("./no/such/model")
    with pytest.raises(StudentModelError, match="neither"):
        resolve_student("not a/valid/id")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(StudentModelError, match="not in the local Hugging Face cache"):
        resolve_student("microsoft/phi-2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_student("microsoft/phi-2") == "microsoft/phi-2"  # hub ids stay strings


def test_adapter_for_another_base_is_refused(tmp_path):
    from transformers import PhiConfig

    cfg = PhiConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(StudentModelError, match="no adapter_config.json"):
        check_adapter(adapter, tmp_path / "tiny", cfg)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/x/other-model"}))
    with pytest.raises(StudentModelError, match="other-model"):
        check_adapter(adapter, tmp_path / "tiny", cfg)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/elsewhere/tiny"}))
    check_adapter(adapter, tmp_path / "tiny", cfg)  # same name in another cache folder: accepted
    (adapter / "kdflow_base.json").write_text(json.dumps({"model_type": "phi", "hidden_size": 128,
                                                          "num_hidden_layers": 2, "vocab_size": 512}))
    with pytest.raises(StudentModelError, match="hidden_size"):
        check_adapter(adapter, tmp_path / "tiny", cfg)
