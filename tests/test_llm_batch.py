"""Teacher and judge calls through the Batch API (issue #22), against the scripted Files/Batches fake:
held requests go out as one batch per round, the answers fill the response cache and the step then runs
as the synchronous one does; a waiting step resumes its recorded batch; expired and failed batches and
failed lines are retried within teacher.batch_retries, then fail naming the batch; usage at the batch price."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import BaseModel

from kdflow.config import ConfigError, load_config
from kdflow.llm.batch import BatchError, is_holding, map_round
from kdflow.llm.cache import UsageLedger
from kdflow.llm.client import make_client
from kdflow.llm.server import Endpoint
from kdflow.pipeline.artifacts import usage_key
from kdflow.pipeline.batch_rounds import BatchWait, load_state, run_in_rounds, state_key
from kdflow.pipeline.context import RunContext
from kdflow.pipeline.registry import ALL_STEPS
from kdflow.pipeline.spec import StepSpec
from kdflow.teacher.structured import complete_json

STEP = ALL_STEPS["generate_reference_answers"]


class Verdict(BaseModel):
    answer: str


def gate_like_reply(body: dict[str, Any]) -> str | int:
    """Item 2's first answer is rejected ("again"), so the step asks a follow-up: a second round."""
    asked = body["messages"][-1]["content"]
    return json.dumps({"answer": "again" if asked == "item 2" else f"ok: {asked}"})


def ask_items(ctx: RunContext, items: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    """A miniature teacher step: one call per item side by side, a follow-up where the answer says "again"."""
    endpoint = Endpoint(ctx.config.teacher.base_url, "fake-model", "sk-test", "json_object")
    client = make_client(endpoint, ctx.store, UsageLedger(), task="references", max_retries=0)

    def ask(content: str) -> str:
        return complete_json(client, endpoint, [{"role": "user", "content": content}], Verdict, temperature=0.0,
                             max_tokens=32).answer

    def one(item: int) -> str:
        first = ask(f"item {item}")
        return ask(f"item {item}, again") if first == "again" else first

    with ThreadPoolExecutor(max_workers=2) as pool:  # fewer workers than items: a round must still hold them all
        return {"answers": map_round(pool, one, list(items))}


def context(tmp_path, url: str, name: str = "store", **teacher: Any) -> RunContext:
    overrides = {"store": {"url": str(tmp_path / name)},
                 "teacher": {"provider": "openai", "base_url": url, "batch": "on", "batch_poll_s": 0.05,
                             "max_retries": 0, **teacher}}
    return RunContext.create("scheduled__batch", overrides).for_step(STEP, 1)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def rounds(ctx: RunContext, step=ask_items) -> tuple[list[BatchWait], dict[str, Any]]:
    """Call the step as a resumed task would until it returns: the waits seen and the result."""
    waits = []
    for _ in range(10):
        try:
            return waits, run_in_rounds(ctx, lambda: step(ctx))
        except BatchWait as pending:
            waits.append(pending)
    raise AssertionError("no result after 10 rounds")


def test_rounds_fill_the_cache_and_end_with_the_synchronous_result(tmp_path, fake_batch_server):
    server = fake_batch_server(gate_like_reply)
    ctx = context(tmp_path, server.url)
    waits, result = rounds(ctx)
    assert server.submitted() == [3, 1]  # round 1: every item (2 workers, 3 items); round 2: the follow-up
    assert [w.batch_id for w in waits] == list(server.batches)
    assert server.chat_requests == []  # nothing went out synchronously
    assert not is_holding()
    synchronous = ask_items(context(tmp_path, server.url, name="sync-store"))
    assert result == synchronous == {"answers": ["ok: item 1", "ok: item 2, again", "ok: item 3"]}
    assert len(server.chat_requests) == 4
    state = load_state(ctx)
    assert [(r["batch_id"], r["batch_status"], r["answered"], r["failed"]) for r in state["rounds"]] == [
        (waits[0].batch_id, "completed", 3, {}), (waits[1].batch_id, "completed", 1, {})]
    assert ctx.store.read_jsonl(state["rounds"][0]["input_key"])[0]["url"] == "/v1/chat/completions"


def test_batch_usage_is_priced_at_the_batch_rate_and_reported(tmp_path, fake_batch_server):
    from kdflow.pipeline.final_steps import _usage

    server = fake_batch_server(gate_like_reply, host="127.0.0.2")  # not "local": a provider that bills
    ctx = context(tmp_path, server.url, price_per_mtok_input=1.0, price_per_mtok_output=4.0)
    rounds(ctx)
    ledger = ctx.store.read_json(usage_key(ctx, 1, "batch_generate_reference_answers"))
    row = ledger["total"]
    # 4 answers of the fake's 11 prompt + 3 completion tokens, at half of $1 / $4 per 1M tokens
    assert (row["calls"], row["errors"], row["prompt_tokens"], row["completion_tokens"]) == (4, 0, 44, 12)
    assert row["cost_usd"] == pytest.approx((44 * 0.5 + 12 * 2.0) / 1e6)
    assert _usage(ctx)["batch API"]["cost_usd"] == pytest.approx(row["cost_usd"])


def test_a_waiting_step_resumes_its_recorded_batch(tmp_path, fake_batch_server):
    server = fake_batch_server(gate_like_reply, delay_s=60)
    ctx = context(tmp_path, server.url)
    with pytest.raises(BatchWait) as first:
        run_in_rounds(ctx, lambda: ask_items(ctx))
    with pytest.raises(BatchWait) as retried:  # the task cleared or retried while the batch runs
        run_in_rounds(ctx, lambda: ask_items(ctx))
    assert retried.value.batch_id == first.value.batch_id
    # A task that died after creating the batch but before recording its id finds it by its metadata.
    state = load_state(ctx)
    state["rounds"][-1]["status"] = "submitting"
    del state["rounds"][-1]["batch_id"]
    ctx.store.write_json(state_key(ctx), state)
    with pytest.raises(BatchWait) as recovered:
        run_in_rounds(ctx, lambda: ask_items(ctx))
    assert recovered.value.batch_id == first.value.batch_id
    assert len(server.batches) == 1


def test_failed_lines_and_a_failed_batch_are_sent_again(tmp_path, fake_batch_server):
    seen: set[str] = set()

    def flaky(body: dict[str, Any]) -> str | int:
        asked = body["messages"][-1]["content"]
        if asked == "item 3" and asked not in seen:
            seen.add(asked)
            return 500  # the first time only
        return json.dumps({"answer": f"ok: {asked}"})

    server = fake_batch_server(flaky, outcomes={1: "failed"})
    ctx = context(tmp_path, server.url)
    waits, result = rounds(ctx, lambda c: ask_items(c, (1, 3)))
    assert server.submitted() == [2, 2, 1]  # refused as a whole, then one failed line, then that line again
    assert result == {"answers": ["ok: item 1", "ok: item 3"]}
    failed = [r["failed"] for r in load_state(ctx)["rounds"]]
    assert all(reason.startswith("batch failed: invalid_request") for reason in failed[0].values())
    assert list(failed[1].values())[0].startswith("HTTP 500")


def test_an_expired_batch_is_retried_then_fails_naming_the_batch(tmp_path, fake_batch_server):
    server = fake_batch_server(gate_like_reply, outcomes={1: "expired", 2: "expired"})
    ctx = context(tmp_path, server.url, batch_retries=1)
    with pytest.raises(BatchError) as failed:
        rounds(ctx, lambda c: ask_items(c, (1, 3)))
    last = list(server.batches)[-1]
    assert server.submitted() == [2, 1]  # half of batch 1 answered before it expired; the rest sent once more
    message = str(failed.value)
    assert "\n" not in message and last in message and "(expired)" in message
    assert "batch_expired" in message and "teacher.batch_retries=1" in message


def test_a_step_past_its_round_limit_fails(tmp_path, fake_batch_server):
    server = fake_batch_server(gate_like_reply)
    ctx = context(tmp_path, server.url, batch_max_rounds=1)
    with pytest.raises(BatchError, match=r"after 1 batch rounds \(teacher.batch_max_rounds=1\)"):
        rounds(ctx)
    assert len(server.batches) == 1


def test_run_step_polls_the_batch_outside_airflow(tmp_path, fake_batch_server):
    from kdflow.pipeline import run_step

    server = fake_batch_server(gate_like_reply, delay_s=0.2)
    spec = StepSpec("generate_reference_answers", "Fake teacher step", "teacher", lambda ctx, cycle: ask_items(ctx))
    ctx = context(tmp_path, server.url).for_step(spec, 1)
    assert run_step(ctx) == {"answers": ["ok: item 1", "ok: item 2, again", "ok: item 3"]}
    assert server.submitted() == [3, 1]


def test_the_trigger_fires_once_the_batch_has_ended(tmp_path, fake_batch_server):
    from kdflow.llm.batch_trigger import BatchTrigger

    server = fake_batch_server(gate_like_reply, delay_s=0.3)
    ctx = context(tmp_path, server.url)
    with pytest.raises(BatchWait) as pending:
        run_in_rounds(ctx, lambda: ask_items(ctx))
    classpath, kwargs = BatchTrigger(pending.value.batch_id, server.url, "OPENAI_API_KEY", 0.05).serialize()
    assert classpath == "kdflow.llm.batch_trigger.BatchTrigger" and "sk-test" not in json.dumps(kwargs)

    async def first_event() -> Any:
        async for event in BatchTrigger(**kwargs).run():
            return event.payload

    assert asyncio.run(first_event()) == {"batch_id": pending.value.batch_id, "status": "completed", "counts": {}}


def test_batch_switch_in_the_config():
    assert load_config({"teacher": {"batch": False}}, environ={}).teacher.batch == "off"  # YAML's bare off
    with pytest.raises(ConfigError, match=r"teacher\.batch"):
        load_config({"teacher": {"batch": "sometimes"}}, environ={})
    embedded = load_config({"teacher": {"batch": "on"}}, environ={}).teacher
    assert not embedded.batch_active(scheduled=True)  # the embedded teacher has no Batch API
    assert load_config({"teacher": {"provider": "openai", "batch": "on"}}, environ={}).teacher.batch_active(
        scheduled=False)
    hosted = load_config({"teacher": {"provider": "openai"}}, environ={}).teacher
    assert hosted.batch == "auto" and hosted.batch_active(scheduled=True) and not hosted.batch_active(scheduled=False)
    local = load_config({"teacher": {"provider": "openai", "base_url": "http://127.0.0.1:8000/v1"}}, environ={})
    assert not local.teacher.batch_active(scheduled=True)
    assert not load_config(environ={}).teacher.batch_active(scheduled=True)


def test_a_waiting_airflow_task_defers_to_the_batch_trigger_and_resumes_by_running_again():
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import TaskDeferred

    from kdflow.llm.batch_trigger import BatchTrigger
    from kdflow.pipeline.airflow_batch import step_task
    from kdflow.pipeline.airflow_tasks import RESUME_METHOD, defer_to_batch, is_scheduled

    with DAG("batch_defer_check", schedule=None) as dag:
        step_task(task_id="teacher_step")(lambda: {"done": True})()
    task = dag.get_task("teacher_step")
    pending = BatchWait("batch-7", step="teacher_step", requests=3, base_url="http://fake/v1",
                        api_key_env="OPENAI_API_KEY", poll_s=5.0)
    with pytest.raises(TaskDeferred) as deferred:
        defer_to_batch(task, pending)
    assert deferred.value.method_name == RESUME_METHOD
    assert isinstance(deferred.value.trigger, BatchTrigger) and deferred.value.trigger.batch_id == "batch-7"
    ran = []
    task.execute = lambda context: ran.append(context) or {"done": True}
    assert task.resume_after_batch({"ti": None}, event={"batch_id": "batch-7", "status": "completed"}) == {
        "done": True}
    assert ran == [{"ti": None}]
    with pytest.raises(TypeError, match="step_task"):
        defer_to_batch(object.__new__(type("PlainTask", (), {"task_id": "plain"})), pending)

    class Run:
        run_type = "scheduled"

    assert is_scheduled({"dag_run": Run()}) and not is_scheduled({"dag_run": None})
