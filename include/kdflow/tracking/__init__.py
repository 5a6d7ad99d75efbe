"""Experiment tracking: every run in MLflow, logged by the steps that own the numbers.

The store stays the record of a run; MLflow is where a team compares runs. So tracking never fails a
step: :func:`after_step` (called by :func:`kdflow.pipeline.run_step` once a step has succeeded) logs what
the step published and, when the tracker is down or refuses, logs a warning and writes a failure record
under the run's key in the store, which the report's health section lists. ``python -m kdflow track
--run-id ID`` (:func:`kdflow.tracking.backfill.backfill`) logs a finished run again from the store, also
a run made before tracking existed.

This module imports nothing heavy: the DAG file reaches it through the pipeline package at parse
time, and ``mlflow`` (a second or more to import) is imported by :mod:`kdflow.tracking.client` only
when a step that logs something has finished.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from kdflow.store import run_key, safe_part

if TYPE_CHECKING:
    from kdflow.config import KdflowConfig
    from kdflow.pipeline.context import RunContext
    from kdflow.store import ArtifactStore

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
BACKFILL = "python -m kdflow track --run-id"


def resolve_uri(config: KdflowConfig, store: ArtifactStore) -> str | None:
    """The MLflow tracking URI of ``config`` (None: tracking off). ``embedded`` is a SQLite file in
    ``<store>/mlflow/`` when the store is a local folder, else in ``~/.cache/kdflow/mlflow/`` (one per
    machine: set a server's URI where workers run on several machines)."""
    uri = config.tracking.mlflow_uri
    if uri is None or str(uri).strip().lower() in ("", "null", "none", "off"):
        return None
    if uri != EMBEDDED:
        return uri
    return "sqlite:///" + str(embedded_home(store) / "mlflow.db")


def embedded_home(store: ArtifactStore) -> Any:
    """The folder of the embedded tracking store: ``<store>/mlflow`` for a local store."""
    from pathlib import Path
    from urllib.parse import unquote, urlsplit

    if store.is_local:
        home = Path(unquote(urlsplit(store.url).path)) / "mlflow"
    else:
        home = Path.home() / ".cache" / "kdflow" / "mlflow"
    home.mkdir(parents=True, exist_ok=True)
    return home


def git_revision() -> str | None:
    """The project's git commit when the code runs from a checkout (``KDFLOW_GIT_REVISION`` wins, for an
    image built from one); None when unknown. start_pipeline records it with the run, for the tracker."""
    import os
    import subprocess
    from pathlib import Path

    if revision := os.environ.get("KDFLOW_GIT_REVISION"):
        return revision
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def record_key(run_id: str, *parts: str) -> str:
    """Tracking records of a run in the store: ``runs/<run_id>/tracking/...``."""
    return run_key(run_id, "tracking", *parts)


def failure_key(run_id: str, qualified_step: str) -> str:
    return record_key(run_id, "failures", f"{safe_part(qualified_step)}.json")


def after_step(ctx: RunContext, result: dict[str, Any]) -> None:
    """Log what the step ``ctx`` is bound to published, if it publishes anything tracked. Never raises:
    a tracker that is down costs at most ``tracking.timeout_s`` per request, a warning and a failure
    record; a success removes the step's earlier failure record (a rerun that got through)."""
    from kdflow.tracking.hooks import STEP_HOOKS

    access = ctx.access
    if access is None or access.spec.id not in STEP_HOOKS or "skipped" in result:
        return
    uri = resolve_uri(ctx.config, ctx.store)
    if uri is None:
        return
    qualified = f"cycle_{access.cycle}.{access.spec.id}" if access.cycle else access.spec.id
    try:
        from kdflow.tracking.hooks import run_hook

        run_hook(ctx, uri, access.spec.id, access.cycle, dict(access.outputs))
    except Exception as exc:  # noqa: BLE001 - the tracker must never fail the pipeline
        error = ctx.mask(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500])
        where = ctx.mask(uri)
        log.warning("MLflow tracking at %s failed after step %s: %s. The numbers are in the store; log them "
                    "later with `%s %s`", where, qualified, error, BACKFILL, ctx.run_id)
        try:
            ctx.store.write_json(failure_key(ctx.run_id, qualified), {
                "step": qualified, "uri": where, "error": error, "at": dt.datetime.now(dt.UTC).isoformat()})
        except Exception:  # noqa: BLE001 - nor must recording the failure
            log.warning("could not record the tracking failure of %s in the store", qualified, exc_info=True)
        return
    if ctx.store.exists(failure_key(ctx.run_id, qualified)):
        ctx.store.delete_prefix(failure_key(ctx.run_id, qualified))


def health_lines(ctx: RunContext) -> list[str]:
    """What the report's health section says about tracking: off, where the run is tracked, or which
    steps could not log (and how to log them later)."""
    uri = resolve_uri(ctx.config, ctx.store)
    if uri is None:
        return ["Experiment tracking is off (tracking.mlflow_uri is null)."]
    where = ctx.mask(uri)
    failures = [ctx.store.read_json(k) for k in ctx.store.list_keys(record_key(ctx.run_id, "failures"))
                if k.endswith(".json")]
    lines = []
    if failures:
        steps = ", ".join(f["step"] for f in failures)
        lines.append(f"MLflow tracking at {where} failed in {len(failures)} step(s) ({steps}): "
                     f"{failures[-1]['error']}. Nothing is lost: the numbers are in the store; "
                     f"log them with `{BACKFILL} {ctx.run_id}`.")
    key = record_key(ctx.run_id, "mlflow.json")
    if ctx.store.exists(key):
        record = ctx.store.read_json(key)
        lines.append(f"Tracked in MLflow at {record['uri']}: experiment {record['experiment']!r}, "
                     f"run {record['run_name']!r} (id {record['mlflow_run_id']}).")
    elif not failures:
        lines.append(f"MLflow tracking at {where}: this run has no MLflow run yet.")
    return lines
