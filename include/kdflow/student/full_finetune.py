"""Full fine-tuning: every weight of the student trained, not a LoRA adapter.

Issue 14 lists it among the ways a model as small as the embedded 135M student might store the
knowledge base's facts where LoRA did not. Measured in the learning bench (:mod:`kdflow.bench.learning`,
the ``kb-full`` and ``kb-text-full`` recipes): read as plain documents, the knowledge base's facts are
stored without the answers turning into documentation prose, which is what the pipeline's
``read_knowledge_base`` step and ``python -m kdflow student read-kb`` do (:mod:`kdflow.student.kb_reading`).
The cycles then chain adapters on that student (an adapter per cycle is what is published, merged,
promoted and exported). The result is a complete model folder (weights, config, tokenizer)
that loads wherever a student model path does.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdflow.student.device import DevicePlan, release_memory
from kdflow.student.generate import set_torch_threads
from kdflow.student.models import BASE_INFO_FILE, StudentModelError, base_info, load_student
from kdflow.student.profiles import resolve_profile
from kdflow.student.train import RESULT_FILE, encode_pairs, encode_texts, fit_examples

log = logging.getLogger(__name__)


def train_full(cfg: Any, model_path: Path | str, data: Sequence[tuple[str, str]] | Sequence[str],
               out_dir: Path | str, *, plan: DevicePlan, seed: int, system_prompt: str | None = None) -> dict[str, Any]:
    """Fine-tune all of the student's weights on ``data`` with the training loop LoRA uses
    (:func:`kdflow.student.train.fit_examples`, the profile's learning rate and epochs) and save the
    whole model with its tokenizer and ``train_result.json`` into ``out_dir``. ``data`` is (question,
    answer) pairs, learned as chat answers, or plain documents (strings), learned as text with no chat
    turn: continued pretraining. A 4-bit plan is refused: quantized weights cannot be trained directly."""
    import torch

    if not data:
        raise ValueError("train_full needs at least one (question, answer) pair or document, got none")
    documents = all(isinstance(item, str) for item in data)
    if plan.quantization is not None:
        raise StudentModelError(f"full fine-tuning needs unquantized weights; the device plan loads the student "
                                f"in {plan.quantization} ({plan.reason}): set student.load_in_4bit=false")
    set_torch_threads(cfg.torch_threads)
    random.seed(seed)
    torch.manual_seed(seed)
    model, tokenizer = load_student(model_path, plan, trainable=True)
    try:
        model.requires_grad_(True)
        profile = resolve_profile(cfg, model.config)
        examples = (encode_texts(tokenizer, data, profile.max_length) if documents
                    else encode_pairs(tokenizer, data, profile.max_length, system_prompt))
        fit = fit_examples(model, examples, tokenizer.pad_token_id, cfg, profile, plan, seed)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        (out_dir / BASE_INFO_FILE).write_text(json.dumps(base_info(model_path, model.config), indent=2))
        parameters = sum(p.numel() for p in model.parameters())
    finally:
        release_memory(model)
        del model
    result = {**fit.summary(), "method": "full", "data": "documents" if documents else "pairs",
              "parameters_trained": parameters, "seed": seed,
              "learning_rate": profile.learning_rate, "plan": plan.model_dump(),
              "model_bytes": sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())}
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    log.info("student fully fine-tuned (%d parameters) in %d steps, %.1f s: loss %.3f -> %.3f", parameters,
             result["steps"], result["wall_s"], result["initial_loss"], result["final_loss"])
    return result
