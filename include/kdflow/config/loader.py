"""How the configuration is built: :func:`load_config` layers the packaged defaults, the user's YAML
file, ``KDFLOW__`` env vars and explicit overrides, then validates the result once as a
:class:`kdflow.config.model.KdflowConfig`, so a bad value stops a run before any work starts."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdflow.config.base import DEFAULTS_FILE, ConfigError, _read_yaml
from kdflow.config.model import KdflowConfig
from kdflow.config_errors import format_validation_error

ENV_PREFIX = "KDFLOW__"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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


def set_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["student.epochs=2", "pipeline.topics=[pods]"]`` (the command line's ``--set KEY=VALUE``) ->
    nested overrides; values are parsed as YAML, like ``KDFLOW__`` variables."""
    result: dict[str, Any] = {}
    for item in items or []:
        dotted, _, raw = item.partition("=")
        node: dict[str, Any] = {}
        cursor = node
        parts = dotted.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = yaml.safe_load(raw)
        result = deep_merge(result, node)
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
