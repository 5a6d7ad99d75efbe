"""What every config module shares: the strict base model of a section, the error a bad config raises
and the YAML reader (the loader reads the user's file with it, ``student`` the packaged profiles). The
bottom of the package: it imports none of its siblings, so each of them can import it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

# The packaged defaults stay at kdflow/defaults.yaml, one level above this package: pyproject's
# package-data ships them from there, and the docs name that path.
DEFAULTS_FILE = Path(__file__).parents[1] / "defaults.yaml"


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who triggered the run."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
