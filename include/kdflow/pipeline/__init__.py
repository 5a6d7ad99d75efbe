"""Pipeline steps: one function per box of the design diagram, runnable with or without Airflow.

Each step is ``step(ctx: RunContext, cycle: int | None) -> dict``: ``ctx`` is bound to the step and
hands out exactly the inputs its registry entry declares (other steps' pointers, published
checkpoints); it returns a small pointer/summary dict (what XCom carries). :func:`run_step` runs a
step bound to its context: the CLI runner calls it for each step, an Airflow task through
:func:`kdflow.pipeline.airflow_tasks.run_step_in_airflow` (which then reports the step's lineage), and
:func:`execute` builds the context for library use and tests. After a step succeeds, :func:`run_step`
hands it to :func:`kdflow.tracking.after_step` (MLflow; never fails the step).

This package module imports none of its submodules at import time (they import it as their
package): the registry is imported when a step runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdflow.config import KdflowConfig
    from kdflow.pipeline.context import RunContext

log = logging.getLogger(__name__)

SKIPPED = "skipped"
# Fault drills and tests: KDFLOW_FAIL_STEP=cycle_2.finetune_student makes that step fail on purpose.
FAIL_STEP_ENV = "KDFLOW_FAIL_STEP"


BATCHED_KINDS = ("teacher", "evaluation")  # the steps that call the teacher or the judge


class InjectedFailure(RuntimeError):
    """Raised by a step named in KDFLOW_FAIL_STEP, to rehearse recovery."""


def execute(
    step_id: str,
    *,
    run_id: str,
    overrides: Mapping[str, Any] | None = None,
    cycle: int | None = None,
    inputs: Mapping[str, Any] | None = None,
    config: KdflowConfig | None = None,
) -> dict[str, Any]:
    """Run one step of one run; ``inputs`` are the pointers its ``step(...)`` inputs returned, ``config``
    the run's validated configuration (validated here from ``overrides`` when not given). Returns the
    step's pointer/summary dict (``{"skipped": reason}`` to skip)."""
    from kdflow.pipeline.context import RunContext
    from kdflow.pipeline.registry import ALL_STEPS

    ctx = RunContext.create(run_id, overrides, config=config)
    return run_step(ctx.for_step(ALL_STEPS[step_id], cycle, inputs))


def run_step(ctx: RunContext, *, scheduled: bool = False, wait_for_batch: bool = True) -> dict[str, Any]:
    """Run the step ``ctx`` is bound to (:meth:`RunContext.for_step`), logging its box text and time.

    A teacher or judge step whose calls go through the Batch API (``teacher.batch``, ``scheduled``: the
    run was started by its schedule) runs round by round (:mod:`kdflow.pipeline.batch_rounds`): with
    ``wait_for_batch`` this process polls each batch until it has ended, without it
    :class:`kdflow.pipeline.batch_rounds.BatchWait` is raised for the caller to wait (an Airflow task
    defers to the triggerer)."""
    from kdflow.pipeline.registry import display_name

    assert ctx.access is not None, "run_step needs a context bound to a step"
    spec, cycle = ctx.access.spec, ctx.access.cycle
    started = time.perf_counter()
    where = f"cycle {cycle}" if cycle else "run"
    box = ctx.mask(display_name(spec, ctx.config, cycle))
    log.info("step %s (%s) of %s %s: starting", spec.id, box, where, ctx.run_id)
    qualified = f"cycle_{cycle}.{spec.id}" if cycle else spec.id
    if os.environ.get(FAIL_STEP_ENV) == qualified:
        raise InjectedFailure(f"{qualified} failed on purpose ({FAIL_STEP_ENV} is set)")
    if spec.kind in BATCHED_KINDS and ctx.config.teacher.batch_active(scheduled=scheduled):
        result = _run_batched(ctx, wait_for_batch)
    else:
        result = spec.func(ctx, cycle)
    log.info("step %s: done in %.1fs", spec.id, time.perf_counter() - started)
    from kdflow.tracking import after_step

    after_step(ctx, result)  # MLflow: what the step published (never raises)
    return result


def _run_batched(ctx: RunContext, wait_for_batch: bool) -> dict[str, Any]:
    """The step's rounds of batches; waiting here (polling) unless the caller waits elsewhere."""
    from kdflow.llm.batch import wait_for_batch as poll_batch
    from kdflow.pipeline.batch_rounds import BatchWait, client_for, run_in_rounds

    assert ctx.access is not None
    spec, cycle = ctx.access.spec, ctx.access.cycle
    client = client_for(ctx)
    while True:
        try:
            return run_in_rounds(ctx, lambda: spec.func(ctx, cycle), client=client)
        except BatchWait as pending:
            if not wait_for_batch:
                raise
            log.info("%s; polling every %ss", pending, pending.poll_s)
            poll_batch(client, pending.batch_id, poll_s=pending.poll_s)
