"""Run the whole pipeline in one process, in diagram order, without Airflow (the CLI's `run`).

It calls exactly the steps the DAG's tasks call, so a CLI run and a DAG run write the same
checkpoints; progress is logged per step with its duration."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kdflow.pipeline import execute
from kdflow.pipeline.registry import CYCLE_STEPS, FINAL_STEPS, SETUP_STEPS, StepSpec

log = logging.getLogger(__name__)


def default_run_id() -> str:
    return "cli__" + dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H-%M-%S")


def run_pipeline(
    overrides: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Run setup, every requested cycle and the final steps; returns the outputs by task id."""
    from kdflow.config import load_config

    config = load_config(overrides or {})  # fail before any work on a bad config
    run_id = run_id or default_run_id()
    outputs: dict[str, Any] = {}
    total = len(SETUP_STEPS) + config.pipeline.cycles * len(CYCLE_STEPS) + len(FINAL_STEPS)
    done = 0

    def run(spec: StepSpec, cycle: int | None, scope: dict[str, Any]) -> dict[str, Any]:
        nonlocal done
        started = time.perf_counter()
        result = execute(spec.id, run_id=run_id, overrides=overrides, cycle=cycle,
                         inputs={name: scope[name] for name in spec.needs})
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
