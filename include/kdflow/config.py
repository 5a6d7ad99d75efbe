"""Typed configuration: defaults in ``defaults.yaml``, then a user YAML, env vars, run params.

Precedence (later wins): package defaults < ``KDFLOW_CONFIG`` YAML file < ``KDFLOW__A__B`` env
variables < explicit overrides (DAG-run params, CLI flags). Everything is validated in one go
so a bad value stops a run before any work starts, with one message naming each bad field.
"""

from __future__ import annotations

import copy
import datetime as dt
import fnmatch
import functools
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from kdflow.config_errors import field_conflict, format_validation_error

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")
ENV_PREFIX = "KDFLOW__"


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who triggered the run."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KnowledgeBaseConfig(_Section):
    path: str = "builtin"
    name: str = "Kubernetes v1.28"
    topic_map: dict[str, list[str]] = Field(default_factory=dict)
    passage_words: int = Field(120, ge=30, le=2000)
    retrieval_top_k: int = Field(3, ge=1, le=20)


class PipelineConfig(_Section):
    topics: list[str] = Field(default_factory=lambda: ["pods", "services", "storage"], min_length=1)
    cycles: int = Field(2, ge=1, le=20)
    questions_per_cycle: int = Field(3, ge=1, le=200)
    max_cycles: int = Field(3, ge=1, le=20)
    held_out_per_topic: int = Field(1, ge=0, le=50)

    @field_validator("topics")
    @classmethod
    def _topics_unique(cls, topics: list[str]) -> list[str]:
        cleaned = [t.strip().lower() for t in topics]
        if any(not t for t in cleaned):
            raise ValueError("topic names must not be empty")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("topics must be unique (case-insensitive)")
        return cleaned

    @model_validator(mode="after")
    def _cycles_within_max(self) -> PipelineConfig:
        if self.cycles > self.max_cycles:
            raise field_conflict("cycles", f"must be at most max_cycles={self.max_cycles}", self.cycles)
        return self


class StoreConfig(_Section):
    url: str = "artifacts"
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        from kdflow.store import SUPPORTED_SCHEMES, url_scheme

        scheme = url_scheme(url)
        if scheme not in SUPPORTED_SCHEMES:
            raise ValueError(f"unknown store scheme {scheme!r}; use one of {sorted(SUPPORTED_SCHEMES)}")
        return url


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


EvaluationMetric = Literal[
    "answer_relevancy", "semantic_similarity", "rouge_l", "bleu", "answer_correctness", "factual_correctness"
]


# Judge-free metrics of the gold set: key_fact_recall needs the gold item's key facts.
GoldMetric = Literal["key_fact_recall", "semantic_similarity", "rouge_l", "bleu"]


class EvaluationConfig(_Section):
    metrics: list[EvaluationMetric] = Field(
        default_factory=lambda: ["answer_relevancy", "semantic_similarity", "rouge_l"], min_length=1
    )
    # The gold set (kdflow.gold): "builtin" = the Kubernetes v1.28 set shipped with kdflow, a path to
    # your own JSONL, or null to evaluate on the teacher-written held-out set only.
    gold_path: str | None = "builtin"
    gold_metrics: list[GoldMetric] = Field(
        default_factory=lambda: ["key_fact_recall", "semantic_similarity", "rouge_l"], min_length=1
    )
    # The teacher answers the gold questions open book (as it writes references): the ceiling.
    teacher_ceiling: bool = True
    # Gold questions per topic the teacher answers for the ceiling (a seeded stratified sample);
    # null = every one. `make run` samples 4 per topic to stay short; nightly runs answer all.
    ceiling_per_topic: int | None = Field(None, ge=1, le=10_000)
    # The student's token budget for a gold answer (one or two sentences are asked for).
    gold_max_new_tokens: int = Field(48, ge=8, le=4096)
    # Paired statistics: bootstrap resamples and the confidence of the intervals.
    bootstrap_resamples: int = Field(10_000, ge=1_000, le=1_000_000)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    # A training question at or above this MiniLM cosine to any gold or held-out question is left
    # out of training (decontamination).
    decontamination_similarity: float = Field(0.8, gt=0.0, le=1.0)
    relevancy_strictness: int = Field(3, ge=1, le=10)
    judge_temperature: float = Field(0.7, ge=0.0, le=2.0)
    judge_max_tokens: int = Field(256, ge=8, le=8192)
    judge_max_retries: int = Field(2, ge=0, le=10)
    judge_concurrency: int = Field(8, ge=1, le=64)
    success_threshold: float = Field(0.5, ge=0.0, le=1.0)


PROMOTION_METRIC = "semantic_similarity"  # promotion.metric null: this one when measured, else the headline


class PromotionConfig(_Section):
    # None: resolved by KdflowConfig (the first gold metric with a gold set, else against evaluation.metrics)
    metric: EvaluationMetric | GoldMetric | None = None
    margin: float = Field(0.0, ge=-1.0, le=1.0)
    topic_tolerance: float = Field(0.05, ge=0.0, le=1.0)


class AirflowConfig(_Section):
    schedule: str | None = "0 2 * * *"
    gpu_pool: str = Field("gpu", min_length=1)
    gpu_pool_slots: int = Field(1, ge=1, le=1024)
    gpu_queue: str = Field("gpu", min_length=1)
    default_queue: str = Field("default", min_length=1)


class TrackingConfig(_Section):
    # MLflow tracking URI: "embedded" = a SQLite tracking store (and its artifacts) beside a local store,
    # so a run tracks with no server; any MLflow URI (http://mlflow:5000, sqlite:///..., postgresql://...);
    # None = tracking off. Resolved by :func:`kdflow.tracking.resolve_uri`.
    mlflow_uri: str | None = "embedded"
    experiment: str = Field("kdflow", min_length=1)
    # Seconds per tracker request, without retries: a tracker that is down costs a task this, then a warning.
    timeout_s: float = Field(5.0, gt=0, le=300)
    # Folders (adapter, dataset) larger than this are linked to the store instead of copied into MLflow.
    artifact_max_mb: float = Field(50.0, ge=0)


_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class ReviewConfig(_Section):
    """A person in the loop (Airflow's human-in-the-loop operators): with ``dataset`` each cycle waits after
    "Prepare Training Dataset" for a reviewer to approve, reject or drop pairs; with ``promotion`` a new
    champion waits for approval. Off by default, so scheduled runs need nobody. A review not answered
    within ``timeout`` takes ``dataset_default`` / ``promotion_default``."""

    dataset: bool = False
    promotion: bool = False
    timeout: dt.timedelta = dt.timedelta(hours=24)
    dataset_default: Literal["reject", "approve"] = "reject"
    promotion_default: Literal["keep", "promote"] = "keep"

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        """``24h``, ``30m``, ``90s``, ``2d`` as well as what pydantic reads (seconds, ISO 8601 ``PT24H``)."""
        if not isinstance(value, str) or value.strip().upper().startswith("P"):
            return value
        if match := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value):
            return dt.timedelta(**{_DURATION_UNITS[match[2]]: float(match[1])})
        raise ValueError("must be a duration such as 24h, 30m, 90s or PT24H")

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: dt.timedelta) -> dt.timedelta:
        if value <= dt.timedelta(0):
            raise ValueError("must be a positive duration such as 24h, 30m or 90s")
        return value


class KdflowConfig(_Section):
    seed: int = Field(42, ge=0)
    knowledge_base: KnowledgeBaseConfig = Field(default_factory=KnowledgeBaseConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    airflow: AirflowConfig = Field(default_factory=AirflowConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)

    @model_validator(mode="after")
    def _promotion_metric_is_measured(self) -> KdflowConfig:
        """Promotion compares gold-set scores of ``promotion.metric`` (held-out ones without a gold
        set): a metric that is not measured would never promote, so it must be one of
        ``evaluation.gold_metrics`` (``evaluation.metrics``)."""
        if self.evaluation.gold_path:
            gold_metrics = self.evaluation.gold_metrics
            if self.promotion.metric is None:
                self.promotion.metric = gold_metrics[0]
            elif self.promotion.metric not in gold_metrics:
                raise field_conflict("promotion.metric", f"must be one of evaluation.gold_metrics {list(gold_metrics)}",
                                     self.promotion.metric)
            return self
        metrics = self.evaluation.metrics
        if self.promotion.metric is None:
            self.promotion.metric = PROMOTION_METRIC if PROMOTION_METRIC in metrics else metrics[0]
        elif self.promotion.metric not in metrics:
            raise field_conflict("promotion.metric", f"must be one of evaluation.metrics {list(metrics)}",
                                 self.promotion.metric)
        return self

    def public_dict(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The config as plain data, safe to store beside a run: store credentials are masked by key
        name, and every known secret value (:meth:`secret_values`) wherever it appears."""
        data = self.model_dump(mode="json")
        data["store"]["storage_options"] = mask_secrets(data["store"]["storage_options"], by_key=True)
        return mask_secrets(data, self.secret_values(environ))

    def secret_values(self, environ: Mapping[str, str] | None = None) -> frozenset[str]:
        """Every value a run must never write out: what ``store.storage_options`` holds under a key that
        names a secret, and the teacher's API key (the value of the variable ``teacher.api_key_env``).
        Masking these values, not just keys, also catches a secret that was pasted into another field
        (a DAG param, a base URL) where no key name gives it away."""
        environ = os.environ if environ is None else environ
        found: set[str] = set()

        def collect(node: Any, secret: bool) -> None:
            if isinstance(node, Mapping):
                for key, value in node.items():
                    collect(value, secret or names_a_secret(key))
            elif isinstance(node, list | tuple):
                for value in node:
                    collect(value, secret)
            elif secret and node is not None and not isinstance(node, bool) and str(node):
                found.add(str(node))

        collect(self.store.storage_options, False)
        if password := uri_password(self.tracking.mlflow_uri):  # postgresql://user:PASSWORD@host/db
            found.add(password)
        if api_key := environ.get(self.teacher.api_key_env):
            found.add(api_key)
        return frozenset(found)


def uri_password(uri: str | None) -> str | None:
    """The password of a URI's userinfo (``scheme://user:password@host``), or None."""
    from urllib.parse import unquote, urlsplit

    if not uri or "@" not in uri:
        return None
    try:
        password = urlsplit(uri).password
    except ValueError:
        return None
    return unquote(password) if password else None


_SECRET_WORDS = ("key", "secret", "token", "password", "credential")
MASK = "***"
# A secret at least this long is also masked inside a longer string (a URL's userinfo); a shorter one
# only where it is the whole value, so a short secret cannot garble unrelated text.
_MIN_EMBEDDED_SECRET = 8


def names_a_secret(key: object) -> bool:
    return any(word in str(key).lower() for word in _SECRET_WORDS)


def mask_secrets(data: Any, secrets: Iterable[str] = (), *, by_key: bool = False) -> Any:
    """``data`` with every known secret value replaced by ``***``, and with ``by_key`` every scalar under
    a key that names a secret (key, secret, token, password, credential) too.

    ``by_key`` is for free-form mappings such as ``store.storage_options``: typed config fields
    (``max_tokens``, ``api_key_env``) and records (``prompt_tokens``, ``key_fact_recall``) name no secret,
    so elsewhere only the values are matched. The one masking function of kdflow: config.json,
    run.json, manifests, results and report all go through it."""
    known = sorted(set(secrets), key=len, reverse=True)  # the longest first: one secret may contain another
    if not known and not by_key:
        return data

    def mask(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: MASK if by_key and names_a_secret(k) and not isinstance(v, Mapping) else mask(v)
                    for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [mask(v) for v in node]
        if isinstance(node, bool) or not isinstance(node, str | int | float):
            return node
        if str(node) in known:
            return MASK
        if isinstance(node, str):
            for secret in known:
                if len(secret) >= _MIN_EMBEDDED_SECRET and secret in node:
                    node = node.replace(secret, MASK)
        return node

    return mask(data)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``KDFLOW__TEACHER__MODEL=x`` -> ``{"teacher": {"model": "x"}}``; values are parsed as YAML."""
    environ = os.environ if environ is None else environ
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return result


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> KdflowConfig:
    """Build and validate the configuration; raises :class:`ConfigError` with every bad field."""
    environ = os.environ if environ is None else environ
    data = _read_yaml(DEFAULTS_FILE)
    user_file = config_file or environ.get("KDFLOW_CONFIG")
    if user_file:
        data = deep_merge(data, _read_yaml(Path(user_file)))
    data = deep_merge(data, env_overrides(environ))
    if overrides:
        data = deep_merge(data, overrides)
    try:
        return KdflowConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, KdflowConfig)) from None
