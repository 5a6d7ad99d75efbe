"""Typed configuration: defaults in ``defaults.yaml``, then a user YAML, env vars, run params.

Precedence (later wins): package defaults < ``KDFLOW_CONFIG`` YAML file < ``KDFLOW__A__B`` env
variables < explicit overrides (DAG-run params, CLI flags). Everything is validated in one go
so a bad value stops a run before any work starts, with one message naming each bad field.

This package only hands its modules' names on, so ``from kdflow.config import X`` stays the one way
in: ``base`` (the shared base model, ``ConfigError``, the YAML reader), ``teacher``, ``student`` and
``evaluation`` (their sections), ``model`` (``KdflowConfig`` and the run-wide sections), ``secrets``
(masking) and ``loader`` (``load_config``). No module of the package imports this one.
"""

from kdflow.config.base import DEFAULTS_FILE, ConfigError
from kdflow.config.evaluation import PROMOTION_METRIC, EvaluationConfig, EvaluationMetric, GoldMetric, PromotionConfig
from kdflow.config.loader import ENV_PREFIX, deep_merge, env_overrides, load_config, set_overrides
from kdflow.config.model import (
    AirflowConfig,
    KdflowConfig,
    KnowledgeBaseConfig,
    PipelineConfig,
    ReviewConfig,
    StoreConfig,
    TrackingConfig,
)
from kdflow.config.secrets import MASK, mask_secrets, names_a_secret, uri_password
from kdflow.config.student import (
    GENERIC_PROFILE,
    LORA_DEFAULTS,
    ArchitectureProfile,
    Epochs,
    LearningRate,
    StudentConfig,
    TrainingProfile,
    match_profile,
)
from kdflow.config.teacher import GateConfig, TeacherConfig

__all__ = [
    "DEFAULTS_FILE", "ENV_PREFIX", "GENERIC_PROFILE", "LORA_DEFAULTS", "MASK", "PROMOTION_METRIC",
    "AirflowConfig", "ArchitectureProfile", "ConfigError", "Epochs", "EvaluationConfig", "EvaluationMetric",
    "GateConfig", "GoldMetric", "KdflowConfig", "KnowledgeBaseConfig", "LearningRate", "PipelineConfig",
    "PromotionConfig", "ReviewConfig", "StoreConfig", "StudentConfig", "TeacherConfig", "TrackingConfig",
    "TrainingProfile", "deep_merge", "env_overrides", "load_config", "mask_secrets", "match_profile",
    "names_a_secret", "set_overrides", "uri_password",
]
