"""The MLflow side of tracking: one MLflow run per pipeline run, one nested run per cycle, found again
by tags so that a task rerun (or a backfill) logs into the same runs instead of new ones.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids, never the fluent
``mlflow.start_run`` API: its active run is process-global state, and a Celery worker runs many tasks.
Metric points carry the pipeline run's start time as their timestamp, so logging the same numbers twice
(a rerun, a backfill) writes the same points, which the SQL store keeps once.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_TAG, LEVEL_TAG, CYCLE_TAG = "kdflow.run_id", "kdflow.level", "kdflow.cycle"
CHAMPION_ALIAS = "champion"
_PARAM_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
MAX_PARAM_VALUE = 6000  # MLflow 3's limit on a param value's length
BATCH = 100  # params (and 1000 metrics) per log_batch call


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"teacher": {"model": "x"}}`` -> ``{"teacher.model": "x"}``; lists as JSON, keys made valid
    for MLflow (``student.profiles.*`` -> ``student.profiles._``), values cut to MLflow's limit."""
    import json

    flat: dict[str, str] = {}
    for key, value in data.items():
        name = _PARAM_KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text[:MAX_PARAM_VALUE]
    return flat


class Tracker:
    """An MLflow tracking store, the experiment of the configuration, and the runs of one pipeline run."""

    def __init__(self, uri: str, experiment: str, *, timeout_s: float, artifact_root: str | None = None):
        # No usage telemetry to MLflow's vendor (kdflow promises no egress); set before mlflow is imported.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # No retries and a short timeout: a tracker that is down costs a task seconds, not minutes of backoff.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(timeout_s))))
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.experiment_id = self._experiment(experiment, artifact_root)

    def _experiment(self, name: str, artifact_root: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_root)
        except MlflowException:  # created by another task in the meantime
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # -- runs ----------------------------------------------------------------------------------
    def find_run(self, run_id: str, cycle: int | None = None) -> Any | None:
        """The MLflow run of pipeline run ``run_id`` (of its cycle ``cycle``), the oldest if several."""
        level = "run" if cycle is None else "cycle"
        query = f"tags.`{RUN_TAG}` = '{_escape(run_id)}' and tags.`{LEVEL_TAG}` = '{level}'"
        if cycle is not None:
            query += f" and tags.`{CYCLE_TAG}` = '{int(cycle)}'"
        found = self.client.search_runs([self.experiment_id], query, order_by=["attributes.start_time ASC"],
                                        max_results=5)
        return found[0] if found else None

    def run(self, run_id: str, *, start_ms: int | None = None, tags: Mapping[str, str] | None = None) -> Any:
        """The MLflow run of pipeline run ``run_id``, created (named after it) if there is none yet."""
        found = self.find_run(run_id)
        if found is not None:
            return found
        all_tags = {RUN_TAG: run_id, LEVEL_TAG: "run", **(tags or {})}
        return self.client.create_run(self.experiment_id, start_time=start_ms, tags=all_tags, run_name=run_id)

    def cycle_run(self, run_id: str, cycle: int) -> Any:
        """The nested run of ``cycle`` under the run of ``run_id`` (both created when missing)."""
        found = self.find_run(run_id, cycle)
        if found is not None:
            return found
        parent = self.run(run_id)
        tags = {RUN_TAG: run_id, LEVEL_TAG: "cycle", CYCLE_TAG: str(cycle), "mlflow.parentRunId": parent.info.run_id}
        return self.client.create_run(self.experiment_id, start_time=parent.info.start_time, tags=tags,
                                      run_name=f"{run_id} cycle {cycle}")

    def finish(self, run: Any, end_ms: int | None = None) -> None:
        self.client.set_terminated(run.info.run_id, "FINISHED", end_time=end_ms)

    # -- data ----------------------------------------------------------------------------------
    def set_tags(self, run: Any, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None])

    def log_params(self, run: Any, params: Mapping[str, str]) -> list[str]:
        """Log the params the run does not have yet (MLflow params never change: a rerun with other values
        keeps the first and is warned about). Returns the names whose value differs."""
        from mlflow.entities import Param

        existing = self.client.get_run(run.info.run_id).data.params
        differing = [k for k, v in params.items() if k in existing and existing[k] != v]
        if differing:
            log.warning("MLflow run %s keeps its first value of %d param(s) that differ now: %s", run.info.run_id,
                        len(differing), ", ".join(differing[:10]))
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), BATCH):
            self.client.log_batch(run.info.run_id, params=new[start:start + BATCH])
        return differing

    def log_metrics(self, run: Any, metrics: Mapping[str, Any], *, step: int = 0) -> int:
        """Log every numeric value of ``metrics`` at ``step`` (None and non-numbers are left out)."""
        return self.log_points(run, ((k, v, step) for k, v in metrics.items()))

    def log_points(self, run: Any, points: Iterable[tuple[str, Any, int]]) -> int:
        """Log ``(key, value, step)`` points stamped with the run's start time (see the module doc)."""
        from mlflow.entities import Metric

        stamp = run.info.start_time or 0
        metrics = [Metric(_PARAM_KEY.sub("_", key), float(value), stamp, int(step)) for key, value, step in points
                   if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run.info.run_id, metrics=metrics[start:start + 1000])
        return len(metrics)

    def log_dir(self, run: Any, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run.info.run_id, str(local_dir), artifact_path)

    def log_file(self, run: Any, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run.info.run_id, str(local_file), artifact_path)

    def artifact_uri(self, run: Any, path: str) -> str:
        return f"{run.info.artifact_uri.rstrip('/')}/{path}"

    # -- model registry ------------------------------------------------------------------------
    def register_champion(self, name: str, source: str, run: Any, tags: Mapping[str, str], *,
                          make_champion: bool) -> Any:
        """The model version of ``run`` under registered model ``name`` (one per student base model),
        created once per pipeline run; with ``make_champion`` the alias ``champion`` moves to it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description="kdflow champions of one student base model "
                                                                  "(alias `champion`: the current one)")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        run_id = tags[RUN_TAG]
        versions = [v for v in self.client.search_model_versions(f"name = '{_escape(name)}'")
                    if v.tags.get(RUN_TAG) == run_id]
        if versions:
            version = min(versions, key=lambda v: int(v.version))
        else:
            version = self.client.create_model_version(name, source, run_id=run.info.run_id, tags=dict(tags),
                                                       await_creation_for=0)
        if make_champion:
            self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
        return version
