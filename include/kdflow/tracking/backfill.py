"""The backfill behind ``python -m kdflow track --run-id ID``: a run's steps walked in the pipeline's
order, each step's tracking hook fed the checkpoints the run's manifest holds for it. Apart from the hooks
because it reads the step registry, which imports every step module (and so the pipeline's final step,
which asks :mod:`kdflow.tracking` for the report's health lines)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kdflow.pipeline.context import RunContext
from kdflow.store import Pointer
from kdflow.tracking import record_key
from kdflow.tracking.hooks import STEP_HOOKS, open_tracker

log = logging.getLogger(__name__)


def backfill(ctx: RunContext, uri: str, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Log a run from its store checkpoints, step by step in the pipeline's order (a step whose
    checkpoints are missing is left out): the same calls as the live steps, so a run logged live, or
    partly, ends up with the same MLflow runs. Raises on a tracker error (the caller asked for it)."""
    from kdflow.pipeline.registry import CYCLE_STEPS, FINAL_STEPS, SETUP_STEPS

    manifest = ctx.store.manifest(ctx.run_id)
    if not manifest:
        raise LookupError(f"run {ctx.run_id} has no checkpoints in the store {ctx.store.url}")
    cycles = sorted({int(name.split(".", 1)[0].removeprefix("cycle_")) for name in manifest
                     if name.startswith("cycle_")})
    tracker = open_tracker(ctx, uri)
    logged, left_out = [], []
    plan = [(spec, None) for spec in SETUP_STEPS]
    plan += [(spec, n) for n in cycles for spec in CYCLE_STEPS]
    plan += [(spec, None) for spec in FINAL_STEPS]
    for spec, cycle in plan:
        if spec.id not in STEP_HOOKS:
            continue
        names = {name: ctx.checkpoint_name(cycle, name) for name in spec.produces}
        outputs = {name: Pointer.of(manifest[full]) for name, full in names.items() if full in manifest}
        qualified = f"cycle_{cycle}.{spec.id}" if cycle else spec.id
        if spec.produces and not outputs:
            left_out.append(qualified)
            continue
        STEP_HOOKS[spec.id](tracker, ctx, cycle, outputs)
        logged.append(qualified)
        progress(f"logged {qualified}")
    ctx.store.delete_prefix(record_key(ctx.run_id, "failures"))
    run = tracker.find_run(ctx.run_id)
    return {"mlflow_run_id": run.info.run_id if run else None, "logged": logged, "left_out": left_out,
            "uri": ctx.mask(uri)}
