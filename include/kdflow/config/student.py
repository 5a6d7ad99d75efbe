"""The student's section: its training profiles (by name pattern and by architecture, their measured
defaults read from defaults.yaml) and :class:`StudentConfig`, which fills what the user left unset from
the profile that matches the model. Its own module because the profile logic is the largest part of
the config and changes with the students kdflow supports, not with the rest of the settings."""

from __future__ import annotations

import copy
import fnmatch
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from kdflow.config.base import DEFAULTS_FILE, _read_yaml, _Section
from kdflow.config_errors import field_conflict

LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
Epochs = Annotated[int, Field(ge=1, le=100)]
GENERIC_PROFILE = "*"


class TrainingProfile(_Section):
    """Training defaults for the students whose name matches a ``student.profiles`` pattern."""

    learning_rate: LearningRate
    epochs: Epochs
    # The adapter's shape: None = the generic defaults (rank 16, alpha 32, attention projections).
    lora_r: int | None = Field(None, ge=1, le=512)
    lora_alpha: int | None = Field(None, ge=1, le=1024)
    target_modules: list[str] | None = None


LORA_DEFAULTS = {"lora_r": 16, "lora_alpha": 32}


class ArchitectureProfile(_Section):
    """Defaults for every student of one architecture (the ``model_type`` of its config.json), whatever
    its name: they apply where no ``student.profiles`` pattern other than ``*`` matches the name."""

    family: str = Field(min_length=1)  # the model family, as the report and the docs name it
    target_modules: list[str] = Field(min_length=1)
    learning_rate: LearningRate
    epochs: Epochs


@functools.cache
def _default_profiles() -> dict[str, TrainingProfile]:
    """The profiles of defaults.yaml, so the measured numbers live in one place only."""
    return {name: TrainingProfile.model_validate(p)
            for name, p in _read_yaml(DEFAULTS_FILE)["student"]["profiles"].items()}


@functools.cache
def _default_architectures() -> dict[str, ArchitectureProfile]:
    """The architecture profiles of defaults.yaml."""
    return {name: ArchitectureProfile.model_validate(p)
            for name, p in _read_yaml(DEFAULTS_FILE)["student"]["architectures"].items()}


class KbReadingConfig(_Section):
    """Reading the knowledge base before any distillation (``python -m kdflow student read-kb``): every
    weight of the student trained on the selected topics' passages as plain text. Numbers measured on the
    embedded SmolLM2-135M with the gold set (docs/benchmarks/evaluation.md, ``kb-text-full``)."""

    # Whether a pipeline run reads the knowledge base before cycle 1 (kdflow.pipeline.reading_steps): "auto" when
    # every weight can be trained (the device plan is not 4-bit: the CPU, or student.load_in_4bit=false), true
    # always (a 4-bit plan then trains unquantized), false never. Read once per knowledge base, student and
    # these settings, kept in the store and reused by later runs.
    enabled: bool | Literal["auto"] = "auto"
    learning_rate: LearningRate = 1e-4
    epochs: Epochs = 5
    # The cycles' LoRA learning rate and epochs on a student that read the knowledge base (null: the cycles' usual
    # profile). Measured with the embedded teacher over three cycles: its pairs at the usual 5e-4 x 3 undo the
    # reading and the answer form; at 1e-4 x 1 the form is kept (docs/benchmarks/evaluation.md).
    cycles_learning_rate: LearningRate | None = 1e-4
    cycles_epochs: Epochs | None = 1


def match_profile(model: str, patterns: Iterable[str]) -> str | None:
    """The most specific pattern found in the model's name (case-insensitive glob, ``*`` matches
    anything), or None. The name is the hub id's or path's last part; ``embedded`` is the packaged
    SmolLM2-135M-Instruct."""
    model = model.strip()
    if model == "embedded":
        from kdflow.integrity import SMOLLM2_GGUF

        name = SMOLLM2_GGUF.relpath
    else:
        name = Path(model.rstrip("/")).name or model
    found = [p for p in patterns if fnmatch.fnmatchcase(name.lower(), f"*{p.lower()}*")]
    return max(found, key=lambda p: len(p.replace("*", "")), default=None)


class StudentConfig(_Section):
    model: str = Field("embedded", min_length=1)
    # None: taken from the model's profile when the config is validated (an explicit value wins);
    # rank and alpha fall back to 16 and 32, target_modules to the attention projections.
    lora_r: int | None = Field(None, ge=1, le=512)
    lora_alpha: int | None = Field(None, ge=1, le=1024)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None
    epochs: Epochs | None = None
    learning_rate: LearningRate | None = None
    profiles: dict[str, TrainingProfile] = Field(default_factory=lambda: copy.deepcopy(_default_profiles()))
    # By config.json model_type; resolved when the model is loaded (kdflow.student.profiles).
    architectures: dict[str, ArchitectureProfile] = Field(
        default_factory=lambda: copy.deepcopy(_default_architectures()))
    max_length: int = Field(512, ge=32, le=32768)
    batch_size: int = Field(4, ge=1, le=512)
    gradient_accumulation_steps: int = Field(1, ge=1, le=512)
    max_new_tokens: int = Field(128, ge=1, le=4096)
    generation_batch_size: int = Field(24, ge=1, le=512)
    load_in_4bit: bool = True
    gpu_min_free_gib: float = Field(10.0, ge=0.0, le=1024)
    torch_threads: int | None = Field(None, ge=1, le=256)
    cpu_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Knowledge-base passages as training pairs of their own (their words as the answer to "what does
    # the documentation say about <section>?"): "cited" adds each passage the training questions cite,
    # "all" every passage of the selected topics (docs/benchmarks/evaluation.md: more gold facts, worse
    # answer form, ~50 min of CPU training per cycle for the shipped KB). true/false mean cited/off.
    passage_pairs: Literal["off", "cited", "all"] = "off"
    # How a passage becomes training pairs: "passage" (one pair, the whole passage as the answer) or
    # "sentences" (one pair per two sentences, answers as short as the student's; kb.Passage.training_pairs).
    passage_form: Literal["passage", "sentences"] = "passage"
    kb_reading: KbReadingConfig = Field(default_factory=KbReadingConfig)
    # The values the validator took from the generic ``*`` profile: the model's architecture profile
    # replaces them once the model's config is read (kdflow.student.profiles.resolve_profile).
    _from_generic_profile: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("passage_pairs", mode="before")
    @classmethod
    def _passage_pairs_flag(cls, value: Any) -> Any:
        return {True: "cited", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @property
    def served_model(self) -> str:
        """The student's name as box texts and the report show it: the packaged SmolLM2's for ``embedded``."""
        if self.model != "embedded":
            return self.model
        from kdflow.integrity import SMOLLM2_GGUF

        return Path(SMOLLM2_GGUF.relpath).stem

    @property
    def training_profile(self) -> str | None:
        """The ``profiles`` pattern that gives this model its training defaults (``*``: generic)."""
        return match_profile(self.model, self.profiles)

    @model_validator(mode="after")
    def _training_defaults_from_profile(self) -> StudentConfig:
        name = self.training_profile
        if name is None and (self.learning_rate is None or self.epochs is None):
            unset = "learning_rate" if self.learning_rate is None else "epochs"
            message = f"is not set and no student.profiles pattern matches model {self.model!r}"
            raise field_conflict(unset, f"{message} (add a {GENERIC_PROFILE!r} profile)", None)
        profile = self.profiles[name] if name is not None else None
        generic: dict[str, Any] = {}
        for key in ("learning_rate", "epochs", "lora_r", "lora_alpha", "target_modules"):
            if getattr(self, key) is None:
                value = getattr(profile, key, None) if profile is not None else None
                if value is not None and name == GENERIC_PROFILE:
                    generic[key] = copy.deepcopy(value)
                if value is None:
                    value = LORA_DEFAULTS.get(key)
                if value is not None:  # assignment validates again: set only what changes
                    setattr(self, key, copy.deepcopy(value))
        if generic:  # merged: each assignment above runs this validator again, which records its own fills
            self._from_generic_profile = {**self._from_generic_profile, **generic}
        return self

    @property
    def from_generic_profile(self) -> frozenset[str]:
        """Fields that still hold the ``*`` profile's value (not set by the user, a name pattern or a
        later ``model_copy(update=...)``): the model's architecture profile may replace them."""
        return frozenset(k for k, v in self._from_generic_profile.items() if getattr(self, k) == v)
