"""What a student is trained with, decided from the loaded model's own config rather than its name:
the architecture profile (``student.architectures`` by config.json ``model_type``: LoRA target
modules, learning rate, epochs) and the context length that caps ``student.max_length``.

Precedence, most specific first: a value the user set (config file, env, param) > a
``student.profiles`` pattern in the model's name other than ``*`` (measured per model) > the
architecture profile > the ``*`` profile. An architecture without a profile is trained on every
linear layer (peft's ``"all-linear"``) with the ``*`` numbers, and says so in one log line.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"  # peft: every nn.Linear/Conv1D except the output layer


class StudentProfile(BaseModel):
    """The resolved settings of one student, recorded with its training result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str
    architecture: str | None  # the student.architectures key used; None = no profile for this model_type
    family: str | None
    target_modules: list[str] | Literal["all-linear"]
    learning_rate: float
    epochs: int
    context_length: int | None  # the model config's max_position_embeddings (None when it has none)
    max_length: int  # student.max_length capped at the context length


def context_length(model_config: Any) -> int | None:
    """The longest input the model was built for, from its config (Phi, Llama, Qwen, Gemma:
    ``max_position_embeddings``; GPT-2-style configs: ``n_positions``)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_profile(cfg: Any, model_config: Any) -> StudentProfile:
    """The settings ``cfg`` (a :class:`kdflow.config.StudentConfig`) gives this model, its
    architecture read from ``model_config`` (a transformers ``PretrainedConfig``)."""
    model_type = str(model_config.model_type)
    arch = cfg.architectures.get(model_type)
    generic = cfg.from_generic_profile

    def pick(key: str) -> Any:
        value = getattr(cfg, key)
        if arch is not None and (value is None or key in generic):
            return getattr(arch, key)
        return value

    target_modules = pick("target_modules")
    if target_modules is None:
        target_modules = ALL_LINEAR
        log.warning("no student.architectures profile for model_type %r: LoRA on every linear layer, "
                    "learning rate %s x %s epochs (set student.target_modules to choose)", model_type,
                    cfg.learning_rate, cfg.epochs)
    context = context_length(model_config)
    return StudentProfile(
        model_type=model_type, architecture=model_type if arch is not None else None,
        family=arch.family if arch is not None else None, target_modules=target_modules,
        learning_rate=pick("learning_rate"), epochs=pick("epochs"), context_length=context,
        max_length=min(cfg.max_length, context) if context else cfg.max_length,
    )


def linear_layer_names(model: Any) -> list[str]:
    """The distinct last name parts of the model's linear layers (what ``target_modules`` matches)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Conv1D", "Linear4bit")}
    return sorted(names)
