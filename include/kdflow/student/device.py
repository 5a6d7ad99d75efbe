"""Where a student step runs, decided from the free GPU memory right before the step.

At or above ``student.gpu_min_free_gib`` free: the GPU (NF4 4-bit QLoRA for training, bf16 for
answering, because bitsandbytes 4-bit generation is slower than 16-bit). Below it, or with no
CUDA device: the CPU with plain LoRA, in bfloat16 where the CPU computes it natively
(``student.cpu_dtype: auto``: AMX or AVX512-BF16; answers with bf16 weights, trains float32 weights
under bf16 autocast), else float32. Measured on this project's 2-core Xeon (AMX): generation 83-87 ->
171-181 tokens/s, a LoRA step 3.9 -> 2.2-2.7 s, one thread each (docs/benchmarks/results.md).
The plan is recorded in each step's output.
"""

from __future__ import annotations

import gc
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

GIB = 1024**3
Purpose = Literal["answer", "train"]


class DevicePlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["cuda", "cpu"]
    dtype: Literal["float32", "bfloat16", "float16"]  # of the loaded weights
    # What the CPU computes in under autocast while the weights stay ``dtype`` (training keeps float32
    # weights, so the LoRA parameters and AdamW's state stay float32).
    compute_dtype: Literal["bfloat16"] | None = None
    quantization: Literal["nf4"] | None = None
    free_gpu_gib: float | None = None
    threshold_gib: float
    reason: str

    @classmethod
    def cpu(cls, threshold_gib: float = 0.0, reason: str = "CPU requested", *, purpose: Purpose = "answer",
            bf16: bool = False) -> DevicePlan:
        """The CPU plan: float32, or with ``bf16`` bf16 weights to answer and bf16 autocast to train."""
        if not bf16:
            return cls(device="cpu", dtype="float32", threshold_gib=threshold_gib, reason=reason)
        if purpose == "train":
            return cls(device="cpu", dtype="float32", compute_dtype="bfloat16", threshold_gib=threshold_gib,
                       reason=reason)
        return cls(device="cpu", dtype="bfloat16", threshold_gib=threshold_gib, reason=reason)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (Intel AMX or AVX512-BF16; Linux flags). Without it
    torch emulates bf16 and is slower than float32."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_bf16(cfg: Any) -> bool:
    """``student.cpu_dtype`` resolved: bfloat16, float32, or auto (bf16 where the CPU has it natively)."""
    choice = getattr(cfg, "cpu_dtype", "float32")
    return choice == "bfloat16" or (choice == "auto" and cpu_has_native_bf16())


def read_free_gpu_bytes() -> int | None:
    """Free memory on the current CUDA device, or None when there is no usable CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def plan_device(cfg: Any, purpose: Purpose, *, free_gpu_bytes: int | None = None) -> DevicePlan:
    """Plan one student step from a free-memory reading (read now when ``free_gpu_bytes`` is None).

    ``cfg`` is a :class:`kdflow.config.StudentConfig`. Passing ``free_gpu_bytes`` plans as if a
    GPU with that much free memory were present, which is how the GPU branch is tested on CPU.
    """
    if purpose not in ("answer", "train"):
        raise ValueError(f"purpose must be 'answer' or 'train', got {purpose!r}")
    threshold = float(cfg.gpu_min_free_gib)
    if free_gpu_bytes is None:
        free_gpu_bytes = read_free_gpu_bytes()
    if free_gpu_bytes is None:
        plan = DevicePlan.cpu(threshold, "no CUDA device available", purpose=purpose, bf16=cpu_bf16(cfg))
    else:
        free_gib = round(free_gpu_bytes / GIB, 2)
        if free_gib < threshold:
            plan = DevicePlan.cpu(threshold, f"{free_gib} GiB free on the GPU is below the {threshold} GiB threshold",
                                  purpose=purpose, bf16=cpu_bf16(cfg)).model_copy(update={"free_gpu_gib": free_gib})
        else:
            quantize = purpose == "train" and cfg.load_in_4bit
            plan = DevicePlan(
                device="cuda", dtype="bfloat16", quantization="nf4" if quantize else None,
                free_gpu_gib=free_gib, threshold_gib=threshold,
                reason=f"{free_gib} GiB free on the GPU meets the {threshold} GiB threshold",
            )
    log.info("student %s plan: %s", purpose, plan.model_dump())
    return plan


def memory_snapshot() -> dict[str, float]:
    """Process RSS and, when CUDA is up, allocated/reserved GPU memory, in MiB."""
    import psutil

    snap = {"rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1)}
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        snap["cuda_allocated_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        snap["cuda_reserved_mb"] = round(torch.cuda.memory_reserved() / 2**20, 1)
    return snap


def _drop_tensors(model: Any) -> None:
    """Empty every parameter and buffer in place, so the memory goes even if something else
    (an optimizer, a trainer, the caller) still holds a reference to the model object."""
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = torch.empty(0, dtype=tensor.dtype, device="cpu")


def release_memory(model: Any = None) -> dict[str, dict[str, float]]:
    """Free a student model after a step: empty its tensors, ``gc.collect()``,
    ``torch.cuda.empty_cache()``. The model is unusable afterwards. Returns (and logs) memory
    before and after."""
    import torch

    before = memory_snapshot()
    if model is not None:
        _drop_tensors(model)
        del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    after = memory_snapshot()
    log.info("released student memory: before %s, after %s", before, after)
    return {"before": before, "after": after}
