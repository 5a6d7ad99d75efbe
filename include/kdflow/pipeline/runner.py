"""Run the whole pipeline in one process, in diagram order, without Airflow (the CLI's `run`).

It runs exactly the steps the DAG's tasks run, handing each the pointers of the steps it declares
(in memory, where Airflow uses XCom), so a CLI run and a DAG run write the same checkpoints. The
configuration is validated once for the run; progress is logged per step with its duration."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kdflow.config import load_config
from kdflow.pipeline import run_step
from kdflow.pipeline.context import RunContext, StepAccess
from kdflow.pipeline.registry import CYCLE_STEPS, FINAL_STEPS, SETUP_STEPS
from kdflow.pipeline.spec import StepSpec

log = logging.getLogger(__name__)


def default_run_id() -> str:
    return "cli__" + dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H-%M-%S")


def run_pipeline(
    overrides: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    progress: Callable[[str], None] = log.info,
    audit: list[StepAccess] | None = None,
) -> dict[str, Any]:
    """Run setup, every requested cycle and the final steps; returns the outputs by task id.
    ``audit``, when given, receives each step's record of what it read and published."""
    config = load_config(overrides or {})  # fail before any work on a bad config
    run_id = run_id or default_run_id()
    if config.review.dataset or config.review.promotion:
        log.warning("review.dataset/review.promotion ask a person through the Airflow DAG's review tasks; this run "
                    "outside Airflow is not reviewed, and a promotion that needs a review keeps the champion")
    base = RunContext.create(run_id, overrides, config=config)
    outputs: dict[str, Any] = {}
    total = len(SETUP_STEPS) + config.pipeline.cycles * len(CYCLE_STEPS) + len(FINAL_STEPS)
    done = 0

    def run(spec: StepSpec, cycle: int | None, scope: dict[str, Any]) -> dict[str, Any]:
        nonlocal done
        started = time.perf_counter()
        ctx = base.for_step(spec, cycle, {name: scope[name] for name in spec.step_inputs})
        result = run_step(ctx)
        if audit is not None:
            audit.append(ctx.access)
        done += 1
        where = f"cycle {cycle} " if cycle else ""
        progress(f"[{done}/{total}] {where}{spec.id}: {time.perf_counter() - started:.1f}s")
        return result

    for spec in SETUP_STEPS:
        outputs[spec.id] = run(spec, None, outputs)
    for cycle in range(1, config.pipeline.cycles + 1):
        scope: dict[str, Any] = {}
        for spec in CYCLE_STEPS:
            scope[spec.id] = run(spec, cycle, scope)
        outputs.update({f"cycle_{cycle}.{k}": v for k, v in scope.items()})
    final: dict[str, Any] = {}
    for spec in FINAL_STEPS:
        final[spec.id] = run(spec, None, final)
    outputs.update(final)
    outputs["run_id"] = run_id
    return outputs
