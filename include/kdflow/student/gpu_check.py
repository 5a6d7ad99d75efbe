"""The student's GPU path, checked end to end on a CUDA machine in a few minutes, offline.

``scripts/gpu-check.sh`` (``python -m kdflow student gpu-check [--out FILE]``) runs, on tiny
random-weight models of the production architectures (Phi-2 scaled down, Qwen3, Llama-3.2; built
from their config classes, nothing downloaded): the device plan from the real free memory, 4-bit
NF4 QLoRA training, bf16 batched answering with the adapter, the out-of-memory fallback on a real
CUDA out-of-memory error (the process's CUDA memory capped between the peaks of batch b and 2b, so
batch 2b fails and the retry at b fits; then capped below anything, so the retry moves to the CPU),
and that each step gives its GPU memory back. It prints one Markdown table and exits 1 when a row
failed. Without CUDA it prints one line and exits 0; without bitsandbytes the 4-bit rows say so and
the bf16 rows still run.
"""

from __future__ import annotations

import importlib
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SKIPPED_NO_CUDA = "gpu-check skipped: no CUDA device"
NO_BITSANDBYTES = "4-bit: skipped, bitsandbytes missing"
CHECK_FAMILIES = ("phi-2", "qwen3", "llama-3.2")
OOM_FAMILY = "llama-3.2"
OOM_VOCAB = 32768  # a large output layer: the loss's logits grow with the batch, so batch 2b needs far more than b
OOM_BATCH = 8
CHECKED_DEVICE = "cuda"  # where the training and answering rows must have run (tests run the rows on "cpu")
RELEASED_MAX_MB = 8.0  # CUDA memory still allocated after a step's release that counts as released
QUESTIONS = [
    "What is a Pod?", "What does a Service do?", "What is a PersistentVolume?", "How does a Deployment roll out?",
    "What is a ConfigMap for?", "What does a StatefulSet guarantee?", "What is a liveness probe?",
    "How are Pods scheduled?",
]


@dataclass
class Row:
    step: str
    model: str
    status: str  # ok, FAILED or skipped
    detail: str
    seconds: float = 0.0


def check_settings() -> Any:
    """Student settings for the tiny models: explicit numbers (no profile lookup), a high learning rate
    so a few steps show, and a GPU threshold any CUDA card meets."""
    from kdflow.config import StudentConfig

    return StudentConfig(lora_r=8, lora_alpha=16, lora_dropout=0.0, epochs=4, learning_rate=3e-2, max_length=256,
                         batch_size=4, max_new_tokens=24, generation_batch_size=8, gpu_min_free_gib=0.5,
                         torch_threads=None, cpu_dtype="float32")


def bitsandbytes_missing() -> str | None:
    """Why 4-bit cannot run here (None when bitsandbytes imports)."""
    try:
        importlib.import_module("bitsandbytes")
    except Exception as exc:  # noqa: BLE001 - a missing package or a broken CUDA build: both mean no 4-bit
        return f"{NO_BITSANDBYTES} ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    return None


def train_plan_for(plan: Any, missing_4bit: str | None) -> Any:
    """The training plan this machine can run: the NF4 plan, or bf16 LoRA without bitsandbytes."""
    if missing_4bit and plan.quantization:
        return plan.model_copy(update={"quantization": None, "reason": f"{plan.reason}; {NO_BITSANDBYTES}"})
    return plan


def oom_cap_bytes(peak_small: int, peak_large: int) -> int:
    """A CUDA memory cap between the peak of batch b and of batch 2b: the larger batch fails, the smaller fits."""
    if peak_large <= peak_small:
        raise ValueError(f"batch 2b peaked at {peak_large} bytes, not above batch b's {peak_small}: no cap between")
    return (peak_small + peak_large) // 2


def kb_pairs(count: int, words: int = 150) -> list[tuple[str, str]]:
    """Long (question, answer) pairs from the packaged KB's text, so activations dominate memory."""
    from kdflow.kb import BUILTIN_KB

    text = " ".join(p.read_text(encoding="utf-8") for p in sorted(BUILTIN_KB.glob("*.md"))).split()
    return [(f"What does part {n} of the documentation say?", " ".join(text[n * words:(n + 1) * words]))
            for n in range(count)]


def _released(memory: dict[str, dict[str, float]]) -> tuple[bool, str]:
    before = memory.get("before", {}).get("cuda_allocated_mb", 0.0)
    after = memory.get("after", {}).get("cuda_allocated_mb", 0.0)
    return after <= RELEASED_MAX_MB, f"CUDA allocated {before} -> {after} MiB"


def _timed(rows: list[Row], step: str, model: str, action: Callable[[], tuple[str, str]]) -> None:
    """Run one check; its exception becomes a FAILED row, so one broken step does not hide the others."""
    started = time.perf_counter()
    try:
        status, detail = action()
    except Exception as exc:  # noqa: BLE001 - reported in the table
        status, detail = "FAILED", f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    rows.append(Row(step, model, status, detail, round(time.perf_counter() - started, 1)))


def _check_family(rows: list[Row], family: str, work: Path, cfg: Any, missing_4bit: str | None) -> None:
    from kdflow.student.device import plan_device
    from kdflow.student.generate import answer_questions
    from kdflow.student.tiny_models import TINY_PAIRS, build_tiny_student

    model_dir = build_tiny_student(family, work / family)
    adapter = work / f"{family}-adapter"
    plan = train_plan_for(plan_device(cfg, "train"), missing_4bit)
    if missing_4bit:
        rows.append(Row("4-bit NF4 QLoRA training", family, "skipped", missing_4bit))
    trained: dict[str, Any] = {}

    def train() -> tuple[str, str]:
        from kdflow.student.train import train_adapter

        result = train_adapter(cfg, model_dir, list(TINY_PAIRS), adapter, plan=plan, seed=0)
        trained["result"] = result
        learned = result.final_loss < result.initial_loss
        return ("ok" if learned and result.plan.device == CHECKED_DEVICE else "FAILED",
                f"{result.plan.device} {result.plan.quantization or result.plan.dtype}: loss {result.initial_loss:.2f}"
                f" -> {result.final_loss:.2f} in {result.steps} steps, peak {result.peak_memory_mb} MiB")

    _timed(rows, "bf16 LoRA training" if missing_4bit else "4-bit NF4 QLoRA training", family, train)
    if "result" in trained:
        ok, detail = _released(trained["result"].memory)
        rows.append(Row("memory released after training", family, "ok" if ok else "FAILED", detail))
    if not adapter.is_dir():
        return
    answered: dict[str, Any] = {}

    def answer() -> tuple[str, str]:
        answer_plan = plan_device(cfg, "answer")
        batched = answer_questions(cfg, model_dir, QUESTIONS, adapter_dir=adapter, plan=answer_plan)
        single = answer_questions(cfg.model_copy(update={"generation_batch_size": 1}), model_dir, QUESTIONS[:3],
                                  adapter_dir=adapter, plan=answer_plan)
        answered["stats"] = batched.stats
        same = sum(a.text == b.text for a, b in zip(batched, single, strict=False))
        ok = answer_plan.device == CHECKED_DEVICE and answer_plan.dtype == "bfloat16" and batched.stats.new_tokens > 0
        stats = batched.stats
        return ("ok" if ok else "FAILED", f"{len(batched)} questions in batches of {cfg.generation_batch_size}: "
                f"{stats.new_tokens} tokens, {stats.tokens_per_s} tokens/s; {same}/3 equal to one by one")

    _timed(rows, "bf16 batched answers with the adapter", family, answer)
    if "stats" in answered:
        ok, detail = _released(answered["stats"].memory)
        rows.append(Row("memory released after answering", family, "ok" if ok else "FAILED", detail))


def _check_oom_fallback(rows: list[Row], work: Path, cfg: Any, missing_4bit: str | None) -> None:
    """A real CUDA out-of-memory error: first the batch halves, then (batch 1) the CPU takes over."""
    import torch

    from kdflow.student.device import plan_device
    from kdflow.student.tiny_models import build_tiny_student
    from kdflow.student.train import train_adapter, train_with_oom_fallback

    model_dir = build_tiny_student(OOM_FAMILY, work / "oom-model", vocab_size=OOM_VOCAB)
    pairs = kb_pairs(4 * OOM_BATCH)
    base = cfg.model_copy(update={"epochs": 1, "batch_size": OOM_BATCH})
    plan = train_plan_for(plan_device(cfg, "train"), missing_4bit)
    total = torch.cuda.get_device_properties(0).total_memory

    def peak(batch: int) -> int:
        train_adapter(base.model_copy(update={"batch_size": batch}), model_dir, pairs, work / f"oom-{batch}",
                      plan=plan, seed=0)
        return int(torch.cuda.max_memory_reserved())

    def halve() -> tuple[str, str]:
        small, large = peak(OOM_BATCH), peak(2 * OOM_BATCH)
        cap = oom_cap_bytes(small, large)
        torch.cuda.set_per_process_memory_fraction(cap / total)
        try:
            result = train_with_oom_fallback(base.model_copy(update={"batch_size": 2 * OOM_BATCH}), model_dir,
                                             pairs, work / "oom-halved", plan=plan, seed=0)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        fallback = result.oom_fallback or {}
        ok = fallback.get("change") == f"batch_size {2 * OOM_BATCH} -> {OOM_BATCH}" and result.plan.device == "cuda"
        return ("ok" if ok else "FAILED",
                f"peaks {small >> 20}/{large >> 20} MiB at batch {OOM_BATCH}/{2 * OOM_BATCH}, cap {cap >> 20} MiB: "
                f"{fallback.get('change')} ({str(fallback.get('error'))[:70]})")

    def to_cpu() -> tuple[str, str]:
        torch.cuda.set_per_process_memory_fraction(min(1.0, 2**20 / total))  # 1 MiB: nothing fits
        try:
            result = train_with_oom_fallback(base.model_copy(update={"batch_size": 1}), model_dir, pairs[:2],
                                             work / "oom-cpu", plan=plan, seed=0)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        fallback = result.oom_fallback or {}
        ok = fallback.get("change") == "device cuda -> cpu" and result.plan.device == "cpu"
        return "ok" if ok else "FAILED", f"{fallback.get('change')} ({str(fallback.get('error'))[:70]})"

    _timed(rows, "real OOM: batch halved", OOM_FAMILY, halve)
    _timed(rows, "real OOM at batch 1: CPU fallback", OOM_FAMILY, to_cpu)


def run_check(work: Path) -> list[Row]:
    """All rows; the caller has checked that CUDA is there."""
    import torch

    from kdflow.student.device import plan_device

    cfg = check_settings()
    missing_4bit = bitsandbytes_missing()
    rows: list[Row] = []

    def device_plan() -> tuple[str, str]:
        train, answer = plan_device(cfg, "train"), plan_device(cfg, "answer")
        ok = train.device == answer.device == "cuda" and train.quantization == "nf4" and answer.dtype == "bfloat16"
        return ("ok" if ok else "FAILED", f"train: {train.device} {train.quantization}, answer: {answer.device} "
                f"{answer.dtype}; {train.reason}")

    _timed(rows, "device plan", torch.cuda.get_device_name(0), device_plan)
    for family in CHECK_FAMILIES:
        _check_family(rows, family, work, cfg, missing_4bit)
    _check_oom_fallback(rows, work, cfg, missing_4bit)
    return rows


def versions() -> str:
    found = []
    for name in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            found.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:  # noqa: BLE001 - a missing package is a fact of the table, not an error
            found.append(f"{name} missing")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def format_table(rows: list[Row]) -> str:
    lines = ["| step | model | status | detail | s |", "|---|---|---|---|---|"]
    lines += [f"| {r.step} | {r.model} | {r.status} | {r.detail.replace('|', '/')} | {r.seconds} |" for r in rows]
    return "\n".join(lines)


def run_gpu_check(out: str | None = None) -> int:
    """The whole check: print the table (and write it to ``out``); 0 when every row passed or without CUDA."""
    import torch

    if not torch.cuda.is_available():
        print(SKIPPED_NO_CUDA)
        return 0
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="kdflow-gpu-check-"))
    try:
        rows = run_check(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in rows if r.status == "FAILED"]
    report = (f"{torch.cuda.get_device_name(0)}; {versions()}; {time.perf_counter() - started:.0f} s, "
              f"{len(failed)} failed\n\n{format_table(rows)}\n")
    print(report)
    if out:
        Path(out).write_text(report, encoding="utf-8")
    return 1 if failed else 0
