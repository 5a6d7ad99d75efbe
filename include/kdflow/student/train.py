"""LoRA fine-tuning of the student on question/answer pairs (QLoRA when the plan says NF4),
with the loss on the answer tokens only, in a plain PyTorch loop.

Always on a freshly loaded model: on CPU, training a 4-bit model object that has already run
``generate()`` trains silently wrong (loss 3.92 -> 3.68 instead of -> 1.35, with a
``gemv_4bit`` autograd warning). Cycle k+1 continues from cycle k's adapter.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kdflow.student.device import DevicePlan, cpu_bf16, memory_snapshot, release_memory
from kdflow.student.generate import set_torch_threads
from kdflow.student.models import BASE_INFO_FILE, StudentModelError, base_info, load_student
from kdflow.student.profiles import StudentProfile, linear_layer_names, resolve_profile
from kdflow.student.prompt import build_prompt, completion_text

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
RESULT_FILE = "train_result.json"
# Fault drills and tests: a CUDA out-of-memory error is raised when the batch is larger than this.
SIMULATE_OOM_ENV = "KDFLOW_SIMULATE_OOM_ABOVE_BATCH"
PROGRESS_EVERY_S = 60.0  # a progress line at most this often inside an epoch (long CPU runs)


class TrainResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    losses: list[float]  # mean loss of each optimizer step
    initial_loss: float  # mean loss on all pairs before the first step (where training started)
    final_loss: float  # mean loss on all pairs after the last step
    steps: int
    epochs: int
    pairs: int
    train_tokens: int  # answer tokens the loss was computed on, per epoch
    wall_s: float
    s_per_step: float
    tokens_per_s: float  # all tokens (prompt + answer) processed per second
    peak_memory_mb: float  # peak CUDA allocation on the GPU, peak process RSS on the CPU
    plan: DevicePlan
    init_adapter: str | None
    target_modules: list[str]  # layer names (the last part: "all-linear" resolves to full paths)
    lora_r: int
    lora_alpha: int
    seed: int
    adapter_bytes: int
    memory: dict[str, dict[str, float]] = {}
    oom_fallback: dict[str, Any] | None = None  # what the one retry after a CUDA out-of-memory changed
    profile: StudentProfile | None = None  # architecture, learning rate, epochs, max length it ran with


def pairs_dataset(pairs: Sequence[tuple[str, str]] | Any) -> Any:
    """Training pairs as a ``datasets.Dataset`` with ``prompt`` and ``completion`` columns: a dataset
    as given (the pipeline's published Parquet), (question, answer) tuples converted."""
    import datasets

    if isinstance(pairs, datasets.Dataset):
        return pairs
    pairs = list(pairs)
    return datasets.Dataset.from_dict({"prompt": [q for q, _ in pairs], "completion": [a for _, a in pairs]})


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]] | Any, max_length: int,
                 system_prompt: str | None = None) -> list[dict[str, list[int]]]:
    """Token ids and labels per pair (``datasets`` ``.map``), the prompt masked with -100 so only the
    answer is learned. Too long examples lose the end of the answer; an example with no answer token
    left is dropped."""
    data = pairs_dataset(pairs)

    def encode(row: dict[str, str]) -> dict[str, list[int]]:
        prompt_ids = tokenizer(build_prompt(tokenizer, row["prompt"], system_prompt),
                               add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(completion_text(tokenizer, row["completion"]), add_special_tokens=False)["input_ids"]
        return {"input_ids": (prompt_ids + answer_ids)[:max_length],
                "labels": ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]}

    encoded = data.map(encode, remove_columns=data.column_names, keep_in_memory=True, load_from_cache_file=False)
    examples = []
    for row, example in zip(data, encoded, strict=True):
        if all(label == IGNORE_INDEX for label in example["labels"]):
            log.warning("dropping a pair whose prompt fills student.max_length=%d: %.60s", max_length, row["prompt"])
            continue
        examples.append({"input_ids": example["input_ids"], "labels": example["labels"]})
    return examples


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    """Plain documents as training examples, no chat turn: every token is learned (continued
    pretraining on the knowledge base's text), each document ended by the eos token and cut at
    ``max_length``."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    examples = []
    for text in texts:
        ids = (tokenizer(text.strip(), add_special_tokens=False)["input_ids"] + eos)[:max_length]
        if len(ids) > 1:
            examples.append({"input_ids": ids, "labels": list(ids)})
    return examples


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded batch tensors; padding is masked out of attention and loss."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    pad = [width - len(e["input_ids"]) for e in examples]
    return {
        "input_ids": torch.tensor([e["input_ids"] + [pad_id] * p for e, p in zip(examples, pad, strict=True)]),
        "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * p
                                        for e, p in zip(examples, pad, strict=True)]),
        "labels": torch.tensor([e["labels"] + [IGNORE_INDEX] * p for e, p in zip(examples, pad, strict=True)]),
    }


def _attach_lora(cfg: Any, model: Any, profile: StudentProfile) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=profile.target_modules,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        if "not found in the base model" not in str(exc):
            raise
        raise StudentModelError(f"student.target_modules {profile.target_modules} match no layer of this "
                                f"{profile.model_type} model; its linear layers: {linear_layer_names(model)}") from None


def _loss(model: Any, batch: dict[str, Any], plan: DevicePlan) -> Any:
    import torch

    batch = {k: v.to(model.device) for k, v in batch.items()}
    if plan.device == "cuda":
        with torch.autocast("cuda", dtype=getattr(torch, plan.dtype)):
            return model(**batch).loss
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.compute_dtype == "bfloat16"):
        return model(**batch).loss


def length_grouped_batches(examples: list[dict[str, list[int]]], batch_size: int, rng: random.Random,
                           window_batches: int = 8) -> list[list[dict[str, list[int]]]]:
    """One epoch's batches: a seeded shuffle, sorted by length inside windows of ``window_batches``
    batches, then the batches shuffled (Hugging Face's ``group_by_length``). Pairs of similar length
    share a batch, so less of each batch is padding, while every epoch still sees a new order."""
    shuffled = rng.sample(examples, len(examples))
    window = batch_size * window_batches
    batches = []
    for start in range(0, len(shuffled), window):
        chunk = sorted(shuffled[start : start + window], key=lambda e: len(e["input_ids"]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _mean_loss(model: Any, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int,
               plan: DevicePlan) -> float:
    """Mean loss over all answer tokens (no gradients): batches of similar length, so little padding."""
    import torch

    model.eval()
    total, count = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e["input_ids"]))
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            batch = collate(ordered[start : start + batch_size], pad_id)
            tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(_loss(model, batch, plan)) * tokens
            count += tokens
    model.train()
    return total / max(count, 1)


def _peak_mb(plan: DevicePlan, rss_peak: float) -> float:
    import torch

    if plan.device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(rss_peak, 1)


@dataclass
class Fit:
    """What one training loop did: the numbers every trained student records, LoRA or full."""

    losses: list[float]
    initial_loss: float
    final_loss: float
    epochs: int
    examples: list[dict[str, list[int]]]
    tokens: int  # all tokens (prompt + answer) processed
    wall_s: float
    rss_peak_mb: float

    def summary(self) -> dict[str, Any]:
        """The ``TrainResult`` fields this loop decides."""
        return {"losses": self.losses, "initial_loss": round(self.initial_loss, 5),
                "final_loss": round(self.final_loss, 5), "steps": len(self.losses), "epochs": self.epochs,
                "pairs": len(self.examples),
                "train_tokens": sum(sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in self.examples),
                "wall_s": round(self.wall_s, 3), "s_per_step": round(self.wall_s / max(len(self.losses), 1), 3),
                "tokens_per_s": round(self.tokens / self.wall_s, 1)}


def fit_examples(model: Any, examples: list[dict[str, list[int]]], pad_id: int, cfg: Any, profile: StudentProfile,
                 plan: DevicePlan, seed: int) -> Fit:
    """nanoGPT's plain loop over every parameter that requires grad (the LoRA weights, or the whole
    model when it is fully fine-tuned): AdamW at the profile's learning rate, length-grouped batches,
    gradient accumulation, clipping at 1.0, a progress line per epoch and at most once a minute."""
    import torch

    if not examples:
        raise ValueError(f"no training pair fits student.max_length={profile.max_length}")
    initial_loss = _mean_loss(model, examples, pad_id, cfg.batch_size, plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=profile.learning_rate)
    accumulate = cfg.gradient_accumulation_steps
    order = random.Random(seed)
    losses: list[float] = []
    tokens = 0
    rss_peak = memory_snapshot()["rss_mb"]
    started = last_report = time.perf_counter()
    total_steps = profile.epochs * math.ceil(math.ceil(len(examples) / cfg.batch_size) / accumulate)
    for epoch in range(profile.epochs):
        if epoch:  # progress on long CPU runs: one line per epoch
            log.info("student training: epoch %d/%d done, %d steps, last loss %.3f, %.0f s", epoch, profile.epochs,
                     len(losses), losses[-1], time.perf_counter() - started)
        batches = length_grouped_batches(examples, cfg.batch_size, order)
        for first in range(0, len(batches), accumulate):
            group = batches[first : first + accumulate]
            step_loss = 0.0
            for chunk in group:
                batch = collate(chunk, pad_id)
                tokens += int(batch["attention_mask"].sum())
                loss = _loss(model, batch, plan) / len(group)
                loss.backward()
                step_loss += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(step_loss, 5))
            rss_peak = max(rss_peak, memory_snapshot()["rss_mb"])
            if time.perf_counter() - last_report >= PROGRESS_EVERY_S:  # and within an epoch, once a minute
                last_report = time.perf_counter()
                elapsed = last_report - started
                log.info("student training: step %d/%d (epoch %d/%d), loss %.3f, %.0f s, about %.0f s left",
                         len(losses), total_steps, epoch + 1, profile.epochs, losses[-1], elapsed,
                         elapsed / len(losses) * (total_steps - len(losses)))
    wall = time.perf_counter() - started
    final_loss = _mean_loss(model, examples, pad_id, cfg.batch_size, plan)
    return Fit(losses=losses, initial_loss=initial_loss, final_loss=final_loss, epochs=profile.epochs,
               examples=examples, tokens=tokens, wall_s=wall, rss_peak_mb=rss_peak)


def train_adapter(
    cfg: Any,
    model_path: Path | str,
    pairs: list[tuple[str, str]],
    out_dir: Path | str,
    *,
    init_adapter_dir: Path | str | None = None,
    plan: DevicePlan,
    seed: int,
    system_prompt: str | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``pairs`` (question, answer) and save it with ``train_result.json``
    into ``out_dir``. Starts from ``init_adapter_dir`` when given (the previous cycle's adapter)."""
    import torch

    if not pairs:
        raise ValueError("train_adapter needs at least one (question, answer) pair, got none")
    set_torch_threads(cfg.torch_threads)
    random.seed(seed)
    torch.manual_seed(seed)
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, tokenizer = load_student(model_path, plan, init_adapter_dir, trainable=True)
    try:
        _simulated_oom(cfg.batch_size)
        profile = resolve_profile(cfg, model.config)
        if init_adapter_dir is None:
            model = _attach_lora(cfg, model, profile)
        examples = encode_pairs(tokenizer, pairs, profile.max_length, system_prompt)
        fit = fit_examples(model, examples, tokenizer.pad_token_id, cfg, profile, plan, seed)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir))
        (out_dir / BASE_INFO_FILE).write_text(json.dumps(base_info(model_path,
                                                                   model.get_base_model().config), indent=2))
        peak = _peak_mb(plan, fit.rss_peak_mb)
        lora = model.peft_config["default"]
    finally:
        memory = release_memory(model)
        del model
    adapter_bytes = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    result = TrainResult(
        **fit.summary(), peak_memory_mb=peak, plan=plan,
        init_adapter=str(init_adapter_dir) if init_adapter_dir else None,
        target_modules=sorted({name.rsplit(".", 1)[-1] for name in lora.target_modules}), lora_r=lora.r,
        lora_alpha=lora.lora_alpha, seed=seed,
        adapter_bytes=adapter_bytes, memory=memory, profile=profile,
    )
    (out_dir / RESULT_FILE).write_text(result.model_dump_json(indent=2))
    log.info("student trained %d steps in %.1f s: loss %.3f -> %.3f", result.steps, result.wall_s,
             result.initial_loss, result.final_loss)
    return result


def _simulated_oom(batch_size: int) -> None:
    limit = os.environ.get(SIMULATE_OOM_ENV)
    if limit and batch_size > int(limit):
        import torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated by {SIMULATE_OOM_ENV}={limit}, batch "
                                          f"{batch_size})")


def train_with_oom_fallback(cfg: Any, model_path: Path | str, pairs: list[tuple[str, str]], out_dir: Path | str, *,
                            plan: DevicePlan, **kw: Any) -> TrainResult:
    """:func:`train_adapter`, retried once after a CUDA out-of-memory error: with half the batch
    (and twice the accumulation, so the effective batch stays) while the batch can shrink, else on
    the CPU plan. The retry is recorded in the result's ``oom_fallback``; a second OOM is raised."""
    import torch

    try:
        return train_adapter(cfg, model_path, pairs, out_dir, plan=plan, **kw)
    except torch.cuda.OutOfMemoryError as exc:
        first_error = " ".join(str(exc).split())[:300]
    shutil.rmtree(out_dir, ignore_errors=True)
    if cfg.batch_size > 1:
        retry_cfg = cfg.model_copy(update={"batch_size": cfg.batch_size // 2,
                                           "gradient_accumulation_steps": cfg.gradient_accumulation_steps * 2})
        retry_plan, change = plan, f"batch_size {cfg.batch_size} -> {retry_cfg.batch_size}"
    else:
        retry_cfg, retry_plan = cfg, DevicePlan.cpu(plan.threshold_gib, "CPU fallback after CUDA out of memory",
                                                    purpose="train", bf16=cpu_bf16(cfg))
        change = f"device {plan.device} -> cpu"
    log.warning("student training ran out of GPU memory (%s); retrying once with %s", first_error, change)
    result = train_adapter(retry_cfg, model_path, pairs, out_dir, plan=retry_plan, **kw)
    fallback = {"error": first_error, "change": change, "batch_size": retry_cfg.batch_size,
                "gradient_accumulation_steps": retry_cfg.gradient_accumulation_steps, "plan": retry_plan.model_dump()}
    result = result.model_copy(update={"oom_fallback": fallback})
    (Path(out_dir) / RESULT_FILE).write_text(result.model_dump_json(indent=2))
    return result
