"""The report's teacher/judge usage is the sum of every task's stored ledger, all of its columns:
calls, cache hits, errors, tokens, time in calls and cost, split into teacher and judge tasks."""

from __future__ import annotations

import pytest

from kdflow.llm.cache import UsageLedger
from kdflow.pipeline.artifacts import usage_key
from kdflow.pipeline.context import RunContext
from kdflow.pipeline.final_steps import _usage


def test_usage_sums_every_column_of_the_task_ledgers(tmp_path):
    ctx = RunContext.create("nightly_1", {"store": {"url": str(tmp_path / "store")}})
    price = {"price_per_mtok_input": 0.15, "price_per_mtok_output": 0.60}
    ledgers = {(None, "held_out_questions"): [dict(usage={"prompt_tokens": 100, "completion_tokens": 10}, seconds=0.5)],
               (1, "questions"): [dict(usage={"prompt_tokens": 200, "completion_tokens": 20}, seconds=1.0),
                                  dict(error=True, seconds=2.0), dict(hit=True)],
               (1, "references"): [dict(usage={"prompt_tokens": 300, "completion_tokens": 30}, seconds=1.5)],
               (1, "judge_baseline"): [dict(usage={"prompt_tokens": 1000, "completion_tokens": 100}, seconds=4.0),
                                       dict(hit=True)]}
    for (cycle, task), calls in ledgers.items():
        ledger = UsageLedger(price["price_per_mtok_input"], price["price_per_mtok_output"])
        for call in calls:
            ledger.record(task, **call)
        ledger.save(ctx.store, usage_key(ctx, cycle, task))

    usage = _usage(ctx)
    teacher, judge = usage["teacher"], usage["judge"]
    assert (teacher["calls"], teacher["cache_hits"], teacher["errors"]) == (4, 1, 1)
    assert (teacher["prompt_tokens"], teacher["completion_tokens"]) == (600, 60)
    assert teacher["seconds"] == pytest.approx(5.0)
    assert teacher["cost_usd"] == pytest.approx((600 * 0.15 + 60 * 0.60) / 1e6)
    assert (judge["calls"], judge["cache_hits"], judge["errors"], judge["seconds"]) == (1, 1, 0, pytest.approx(4.0))


def test_a_rerun_with_fewer_cycles_reports_only_the_cycles_it_asked_for(tmp_path):
    """A first try ran three cycles; the rerun of the same run id asks for one. Its report's cycles and
    usage are cycle 1's (and the run's own tasks'), not the first try's cycles 2 and 3 left in the store."""
    from kdflow.pipeline.final_steps import completed_cycles

    store = {"url": str(tmp_path / "store")}
    first = RunContext.create("nightly_1", {"store": store, "pipeline": {"cycles": 3}})
    for cycle in (None, 1, 2, 3):
        if cycle is not None:
            first.publish_json(cycle, "results.json", {"cycle": cycle})
        ledger = UsageLedger()
        ledger.record("questions", usage={"prompt_tokens": 100, "completion_tokens": 10})
        ledger.save(first.store, usage_key(first, cycle, "questions"))
    assert completed_cycles(first) == [1, 2, 3] and _usage(first)["teacher"]["calls"] == 4

    rerun = RunContext.create("nightly_1", {"store": store, "pipeline": {"cycles": 1}})
    assert completed_cycles(rerun) == [1]
    assert _usage(rerun)["teacher"]["calls"] == 2 and _usage(rerun)["teacher"]["prompt_tokens"] == 200
