"""scripts/gpu-check.sh: skips in one line without CUDA; the parts of the check that need no GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kdflow.student import gpu_check
from kdflow.student.device import DevicePlan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_without_cuda_the_script_skips_in_one_line_and_succeeds():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: scripts/gpu-check.sh runs the check itself")
    done = subprocess.run([os.path.join(REPO, "scripts", "gpu-check.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (0, "gpu-check skipped: no CUDA device\n"), done.stderr


def test_without_bitsandbytes_the_4bit_rows_say_so_and_train_in_bf16(monkeypatch):
    real_import = gpu_check.importlib.import_module

    def no_bitsandbytes(name, *args):
        if name == "bitsandbytes":
            raise ModuleNotFoundError("No module named 'bitsandbytes'")
        return real_import(name, *args)

    monkeypatch.setattr(gpu_check.importlib, "import_module", no_bitsandbytes)
    missing = gpu_check.bitsandbytes_missing()
    assert missing.startswith("4-bit: skipped, bitsandbytes missing")
    nf4 = DevicePlan(device="cuda", dtype="bfloat16", quantization="nf4", threshold_gib=1.0, reason="12 GiB free")
    plan = gpu_check.train_plan_for(nf4, missing)
    assert (plan.device, plan.dtype, plan.quantization) == ("cuda", "bfloat16", None)
    assert gpu_check.train_plan_for(nf4, None) == nf4


def test_the_oom_cap_lies_between_the_two_batch_peaks():
    assert gpu_check.oom_cap_bytes(100 << 20, 300 << 20) == 200 << 20
    with pytest.raises(ValueError, match="not above batch b's"):
        gpu_check.oom_cap_bytes(300, 300)


def test_the_pairs_are_long_enough_to_make_the_batch_dominate_memory():
    pairs = gpu_check.kb_pairs(16)
    assert len(pairs) == 16 and len({a for _, a in pairs}) == 16
    assert all(len(answer.split()) == 150 for _, answer in pairs)


def test_the_table_is_markdown_with_one_row_per_check():
    rows = [gpu_check.Row("device plan", "H200", "ok", "train: cuda nf4", 0.1),
            gpu_check.Row("4-bit NF4 QLoRA training", "qwen3", "skipped", "4-bit: skipped, a|b")]
    assert gpu_check.format_table(rows).splitlines() == [
        "| step | model | status | detail | s |", "|---|---|---|---|---|",
        "| device plan | H200 | ok | train: cuda nf4 | 0.1 |",
        "| 4-bit NF4 QLoRA training | qwen3 | skipped | 4-bit: skipped, a/b | 0.0 |"]


def test_a_model_s_rows_run_through_kdflow_s_functions(monkeypatch, tmp_path):
    """The training and answering rows of one model, on CPU plans standing in for the GPU's (bf16 answers),
    as a machine without bitsandbytes runs them: the 4-bit row says so, training runs in 16-bit LoRA."""
    import kdflow.student.device

    monkeypatch.setattr(kdflow.student.device, "plan_device",
                        lambda cfg, purpose, **_: DevicePlan.cpu(purpose=purpose, bf16=True, reason="test"))
    monkeypatch.setattr(gpu_check, "CHECKED_DEVICE", "cpu")
    cfg = gpu_check.check_settings().model_copy(update={"torch_threads": 1, "epochs": 2, "max_new_tokens": 8})
    rows: list[gpu_check.Row] = []
    gpu_check._check_family(rows, "phi-2", tmp_path, cfg, gpu_check.NO_BITSANDBYTES)
    assert [(r.step, r.status) for r in rows] == [
        ("4-bit NF4 QLoRA training", "skipped"), ("bf16 LoRA training", "ok"), ("memory released after training", "ok"),
        ("bf16 batched answers with the adapter", "ok"), ("memory released after answering", "ok")]
    assert rows[1].detail.startswith("cpu float32: loss ") and "8 questions in batches of 8" in rows[3].detail
