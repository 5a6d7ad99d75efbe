"""The configuration's model: :class:`KdflowConfig`, which holds every section and checks what spans
them (promotion's metric against evaluation's), with the run-wide sections no other module owns:
knowledge base, pipeline, store, Airflow, tracking and review. Where the values come from is
:mod:`kdflow.config.loader`'s business, so this module reads no file and no environment variable
except the teacher's API key when asked for the run's secrets."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kdflow.config.base import _Section
from kdflow.config.evaluation import PROMOTION_METRIC, EvaluationConfig, PromotionConfig
from kdflow.config.secrets import mask_secrets, names_a_secret, uri_password
from kdflow.config.student import StudentConfig
from kdflow.config.teacher import TeacherConfig
from kdflow.config_errors import field_conflict


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
    # What cycle k trains its adapter on (continuing from cycle k-1's): "all" = every gated pair of cycles 1..k, the
    # design; "new" = cycle k's own pairs, each pair trained in one cycle only (docs/benchmarks/evaluation.md).
    training_pairs: Literal["all", "new"] = "all"

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
