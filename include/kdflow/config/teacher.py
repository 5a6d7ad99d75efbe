"""The teacher's section: the endpoint (embedded server or an OpenAI-compatible API), its Batch API
switch, and the quality gate on the data it writes. The teacher's code takes these models alone
(``kdflow.teacher`` imports :class:`GateConfig` and :class:`TeacherConfig`), so they live apart from
the run's other sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kdflow.config.base import _Section
from kdflow.config_errors import field_conflict


class GateConfig(_Section):
    """Quality gate on the teacher's data (issue #10): question bounds, then reference faithfulness."""

    # questions: word bounds, least MiniLM cosine question <-> source passage
    min_words: int = Field(4, ge=1, le=200)
    max_words: int = Field(40, ge=2, le=500)
    passage_floor: float = Field(0.3, ge=0.0, le=1.0)
    # references: abstractive (gated teacher text), extractive (passage sentences), hybrid (gated, extractive fallback)
    reference_mode: Literal["abstractive", "extractive", "hybrid"] = "hybrid"
    support_floor: float = Field(0.7, ge=0.0, le=1.0)
    min_kept_share: float = Field(0.5, gt=0.0, le=1.0)
    reference_attempts: int = Field(2, ge=1, le=10)
    extractive_sentences: int = Field(2, ge=1, le=10)
    extractive_floor: float = Field(0.3, ge=0.0, le=1.0)
    llm_check: bool = False
    llm_floor: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _word_bounds_ordered(self) -> GateConfig:
        if self.min_words > self.max_words:
            raise field_conflict("min_words", f"must be at most max_words={self.max_words}", self.min_words)
        return self


class TeacherConfig(_Section):
    provider: Literal["embedded", "openai"] = "embedded"
    model: str = Field("gpt-4o-mini", min_length=1)
    base_url: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=16, le=16384)
    timeout_s: float = Field(120, gt=0, le=3600)
    max_retries: int = Field(4, ge=0, le=20)
    concurrency: int = Field(8, ge=1, le=64)
    # null: the teacher profile's (json_schema for every listed model and for unknown ones).
    structured_output: Literal["json_schema", "json_object_schema", "json_object"] | None = None
    # "auto": the profile of `model` in kdflow.llm.profiles (listed model, OpenAI reasoning family, or the
    # conservative chat form); or a profile's name: chat, reasoning, self-hosted, or a listed model.
    profile: str = "auto"
    # null: the profile's; "omit" sends none (the model's default); else sent to reasoning models as is.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "omit"] | None = None
    gguf_path: str | None = None
    n_ctx: int = Field(4096, ge=512, le=131072)
    embedded_server: Literal["llama_server", "llama_cpp_python"] = "llama_server"
    embedded_servers: int = Field(1, ge=1, le=16)
    embedded_slots: int = Field(8, ge=1, le=64)
    embedded_threads: int | None = Field(None, ge=1, le=256)
    # USD per 1M tokens; null: the teacher profile's (kdflow.llm.profiles is the one price list).
    price_per_mtok_input: float | None = Field(None, ge=0)
    price_per_mtok_output: float | None = Field(None, ge=0)
    max_attempts_per_question: int = Field(6, ge=1, le=50)
    questions_per_passage: int = Field(1, ge=1, le=10)
    dedup_similarity: float = Field(0.92, gt=0.0, le=1.0)
    gate: GateConfig = Field(default_factory=GateConfig)
    # The OpenAI Batch API (see kdflow.llm.batch): off, on, or auto (on for scheduled runs of provider openai).
    batch: Literal["off", "auto", "on"] = "auto"
    batch_poll_s: float = Field(60, ge=0.05, le=3600)
    batch_retries: int = Field(2, ge=0, le=10)
    batch_max_rounds: int = Field(20, ge=1, le=200)
    batch_price_factor: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("batch", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``off``/``on`` as false/true."""
        return {False: "off", True: "on"}.get(value, value) if isinstance(value, bool) else value

    def batch_active(self, *, scheduled: bool) -> bool:
        """Whether teacher and judge calls go through the Batch API: with provider openai, ``on``, or ``auto``
        in a scheduled run against a provider that bills (a manual run wants its answers now). Never for the
        embedded teacher, which has no Batch API (``on`` is not refused there: a run's params may pick
        either provider under the same worker settings)."""
        if self.provider != "openai":
            return False
        return self.batch == "on" or (self.batch == "auto" and scheduled and not self.is_local)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        from kdflow.llm.profiles import profile_names

        if name not in profile_names():
            raise ValueError(f"must be one of {', '.join(profile_names())}")
        return name

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @property
    def served_model(self) -> str:
        """The model that answers: the GGUF's name when the embedded server runs (``model`` is then
        only a label), else ``model``. Box texts and the report's roles name this one."""
        if self.provider == "openai":
            return self.model
        from kdflow.integrity import SMOLLM2_GGUF

        return Path(self.gguf_path or SMOLLM2_GGUF.relpath).stem

    @property
    def is_local(self) -> bool:
        """The embedded server or an endpoint on this machine: no provider bills it."""
        if self.provider == "embedded":
            return True
        from urllib.parse import urlsplit

        return self.base_url is not None and urlsplit(self.base_url).hostname in ("127.0.0.1", "localhost", "::1")
