"""Pipeline steps: one function per box of the design diagram, runnable with or without Airflow.

Each step has the signature ``step(ctx: RunContext, cycle: int | None, inputs: dict) -> dict``:
``inputs`` maps the ids of the steps it ``needs`` to their returned pointers, and it returns a
small pointer/summary dict (what XCom carries). ``execute`` is the one entry point the DAG's
tasks and the CLI runner call.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from kdflow.pipeline.registry import ALL_STEPS

log = logging.getLogger(__name__)

SKIPPED = "skipped"
# Fault drills and tests: KDFLOW_FAIL_STEP=cycle_2.finetune_student makes that step fail on purpose.
FAIL_STEP_ENV = "KDFLOW_FAIL_STEP"


class InjectedFailure(RuntimeError):
    """Raised by a step named in KDFLOW_FAIL_STEP, to rehearse recovery."""


def execute(
    step_id: str,
    *,
    run_id: str,
    overrides: Mapping[str, Any] | None = None,
    cycle: int | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one step of one run; returns its pointer/summary dict (``{"skipped": reason}`` to skip)."""
    from kdflow.pipeline.context import RunContext

    spec = ALL_STEPS[step_id]
    module_name, func_name = spec.target.split(":")
    func = getattr(importlib.import_module(f"kdflow.pipeline.{module_name}"), func_name)
    ctx = RunContext.create(run_id, overrides)
    started = time.perf_counter()
    where = f"cycle {cycle}" if cycle else "run"
    log.info("step %s (%s) of %s %s: starting", step_id, ctx.mask(spec.display_name(cycle, **_names(ctx, cycle))), where, run_id)
    qualified = f"cycle_{cycle}.{step_id}" if cycle else step_id
    if os.environ.get(FAIL_STEP_ENV) == qualified:
        raise InjectedFailure(f"{qualified} failed on purpose ({FAIL_STEP_ENV} is set)")
    result = func(ctx, cycle, dict(inputs or {}))
    log.info("step %s: done in %.1fs", step_id, time.perf_counter() - started)
    return result


def _names(ctx: Any, cycle: int | None) -> dict[str, object]:
    from kdflow.pipeline.registry import box_names

    pipeline = ctx.config.pipeline
    return box_names(
        cycle or 1,
        questions=pipeline.questions_per_cycle,
        pairs=pipeline.questions_per_cycle * (cycle or 1),
        teacher=ctx.config.teacher.model,
        student=ctx.config.student.model,
    )
