"""A teacher or judge step through the OpenAI Batch API, one batch per round (``teacher.batch``).

Each run of the step holds its uncached requests (:func:`kdflow.llm.batch.holding`). None held: the
step ran from the cache and its result stands. Some held: that run is thrown away, the requests go
out as one batch and :class:`BatchWait` says which batch to wait for (the Airflow task defers to
:class:`kdflow.llm.batch_trigger.BatchTrigger`, the CLI polls); when the batch has ended its answers
fill the cache and the step runs again. A gate that rejects a draft asks again in that next run, so
the rounds are bounded by the step's own attempt limits, and by ``teacher.batch_max_rounds``.

Every round is recorded in the store under the step's run/cycle key (``runs/<run>/batches/<cycle>__<step>.json``,
its requests beside it as ``round_<n>.jsonl``) *before* the step waits: a retried or cleared task finds
the batch id there and waits for the same batch again instead of sending a second one (a task that died
between creating the batch and recording it finds it by its metadata). Failed lines, and every line of
a failed, expired or cancelled batch, are held again by the next run, so they are retried in the next
batch, up to ``teacher.batch_retries`` times; then the step fails with one line naming the batch and
what failed. Token usage is priced at ``teacher.batch_price_factor`` of the list price and saved as the
step's ``batch_<step>`` usage ledger, which the report shows as its own row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kdflow.llm.batch import (
    TERMINAL_STATUSES,
    BatchError,
    batch_client,
    batch_failure,
    batch_lines,
    collect_results,
    fill_cache,
    find_batch,
    holding,
    jsonl,
    submit_batch,
)
from kdflow.pipeline.artifacts import BATCH_TASK_PREFIX, usage_key
from kdflow.pipeline.context import RunContext
from kdflow.store import run_key

log = logging.getLogger(__name__)

class BatchWait(Exception):  # noqa: N818 - a signal to wait, not an error
    """The step's requests are out as batch ``batch_id``: wait until it has ended, then run the step again."""

    def __init__(self, batch_id: str, *, step: str, requests: int, base_url: str | None, api_key_env: str,
                 poll_s: float):
        super().__init__(f"step {step} waits for batch {batch_id} ({requests} requests)")
        self.batch_id, self.step, self.requests = batch_id, step, requests
        self.base_url, self.api_key_env, self.poll_s = base_url, api_key_env, poll_s


def _scope(ctx: RunContext) -> str:
    cycle = ctx.access.cycle if ctx.access else None
    return "run" if cycle is None else f"cycle_{cycle}"


def _step_id(ctx: RunContext) -> str:
    assert ctx.access is not None, "a batched step needs a context bound to it"
    return ctx.access.spec.id


def state_key(ctx: RunContext) -> str:
    return run_key(ctx.run_id, "batches", f"{_scope(ctx)}__{_step_id(ctx)}.json")


def round_key(ctx: RunContext, number: int) -> str:
    return run_key(ctx.run_id, "batches", f"{_scope(ctx)}__{_step_id(ctx)}", f"round_{number}.jsonl")


def batch_tag(ctx: RunContext, number: int) -> dict[str, str]:
    """The metadata a round's batch carries, to find it again when its id was never recorded."""
    return {"kdflow_step": f"{ctx.run_id}/{_scope(ctx)}/{_step_id(ctx)}"[:512], "kdflow_round": str(number)}


def load_state(ctx: RunContext) -> dict[str, Any]:
    key = state_key(ctx)
    return ctx.store.read_json(key) if ctx.store.exists(key) else {"rounds": [], "attempts": {}}


def client_for(ctx: RunContext) -> Any:
    from kdflow.llm.server import api_key_from_env

    cfg = ctx.config.teacher
    return batch_client(cfg.base_url, api_key_from_env(cfg.api_key_env), timeout_s=cfg.timeout_s,
                        max_retries=cfg.max_retries)


def run_in_rounds(ctx: RunContext, step: Callable[[], dict[str, Any]], *, client: Any = None) -> dict[str, Any]:
    """The result of ``step`` once a run of it holds no request; raises :class:`BatchWait` while a batch
    of it runs and :class:`kdflow.llm.batch.BatchError` when a batch or line failed beyond the limits."""
    client = client if client is not None else client_for(ctx)
    state = load_state(ctx)
    rounds = state["rounds"]
    if rounds and rounds[-1]["status"] == "submitting":  # died between creating the batch and recording it
        found = find_batch(client, batch_tag(ctx, rounds[-1]["round"]))
        if found is None:
            rounds.pop()  # never created: the next run holds the same requests again
        else:
            rounds[-1].update(batch_id=found.id, status="submitted")
            _save(ctx, state)
    if rounds and rounds[-1]["status"] == "submitted":
        batch = client.batches.retrieve(rounds[-1]["batch_id"])
        if batch.status not in TERMINAL_STATUSES:
            log.info("batch %s of step %s is %s: waiting for it", batch.id, _step_id(ctx), batch.status)
            raise _wait(ctx, rounds[-1])
        _settle(ctx, state, client, batch)
    with holding() as held:
        try:
            result = step()
        except Exception as exc:
            if not held.requests:
                raise
            log.info("step %s stopped on a held request (%s): %s", _step_id(ctx), type(exc).__name__, exc)
    if not held.requests:
        return result
    _check_limits(ctx, state, held.requests)
    raise _wait(ctx, _submit(ctx, state, held.requests, client))


def _wait(ctx: RunContext, record: dict[str, Any]) -> BatchWait:
    cfg = ctx.config.teacher
    return BatchWait(record["batch_id"], step=_step_id(ctx), requests=record["requests"], base_url=cfg.base_url,
                     api_key_env=cfg.api_key_env, poll_s=cfg.batch_poll_s)


def _save(ctx: RunContext, state: dict[str, Any]) -> None:
    ctx.store.write_json(state_key(ctx), state)


def _check_limits(ctx: RunContext, state: dict[str, Any], requests: dict[str, Any]) -> None:
    """Fail with one line when the step needs more rounds than allowed or a request failed too often."""
    cfg, rounds = ctx.config.teacher, state["rounds"]
    last = rounds[-1] if rounds else None
    if len(rounds) >= cfg.batch_max_rounds:
        raise BatchError(f"step {_step_id(ctx)} still holds {len(requests)} requests after {len(rounds)} batch rounds "
                         f"(teacher.batch_max_rounds={cfg.batch_max_rounds}); last batch {last['batch_id']}")
    for digest in sorted(requests):
        sent = state["attempts"].get(digest, 0)
        if sent > cfg.batch_retries:
            reason = (last or {}).get("failed", {}).get(digest, "no answer")
            raise BatchError(f"batch {last['batch_id']} ({last.get('batch_status')}) of step {_step_id(ctx)}: request "
                             f"{digest[:12]} failed {sent} times (teacher.batch_retries={cfg.batch_retries}); "
                             f"last error: {reason}")


def _submit(ctx: RunContext, state: dict[str, Any], requests: dict[str, Any], client: Any) -> dict[str, Any]:
    """Write the round's JSONL under the step's key, record the round, send it, record the batch id."""
    number = len(state["rounds"]) + 1
    lines = batch_lines(requests)
    pointer = ctx.store.write_bytes(round_key(ctx, number), jsonl(lines), count=len(lines))
    record = {"round": number, "status": "submitting", "requests": len(lines), "input": pointer.url,
              "input_key": round_key(ctx, number)}
    for digest in requests:
        state["attempts"][digest] = state["attempts"].get(digest, 0) + 1
    state["rounds"].append(record)
    _save(ctx, state)  # a task that dies while sending finds the batch by its tag
    batch = submit_batch(client, lines, metadata=batch_tag(ctx, number))
    record.update(status="submitted", batch_id=batch.id, input_file_id=batch.input_file_id)
    _save(ctx, state)
    log.info("step %s: round %d sent %d requests as batch %s", _step_id(ctx), number, len(lines), batch.id)
    return record


def _settle(ctx: RunContext, state: dict[str, Any], client: Any, batch: Any) -> None:
    """Put an ended batch's answers into the cache and record its usage and failed lines."""
    record = state["rounds"][-1]
    requests = {row["custom_id"]: row["body"] for row in ctx.store.read_jsonl(record["input_key"])}
    results = collect_results(client, batch)
    answered = fill_cache(ctx.store, requests, results.answers)
    whole = batch_failure(batch)
    failed = {d: (results.failures.get(d) or f"batch {whole}")[:300] for d in requests if d not in results.answers}
    usage = [answer.get("usage") or {} for d, answer in results.answers.items() if d in requests]
    ended = max((getattr(batch, f"{s}_at", None) or 0) for s in ("completed", "failed", "expired", "cancelled"))
    record.update(status="ended", batch_status=batch.status, answered=answered, failed=failed,
                  prompt_tokens=sum(int(u.get("prompt_tokens") or 0) for u in usage),
                  completion_tokens=sum(int(u.get("completion_tokens") or 0) for u in usage),
                  seconds=max(0, ended - (batch.created_at or ended)))
    _save(ctx, state)
    save_batch_usage(ctx, state)
    level = logging.INFO if not failed else logging.WARNING
    log.log(level, "batch %s of step %s %s: %d answered, %d failed%s", batch.id, _step_id(ctx), batch.status,
            answered, len(failed), f" (first: {next(iter(failed.values()))})" if failed else "")


def save_batch_usage(ctx: RunContext, state: dict[str, Any]) -> None:
    """The step's batch usage ledger from its ended rounds (rebuilt each time, so settling twice counts once)."""
    from kdflow.llm.cache import TaskUsage, UsageLedger

    cfg = ctx.config.teacher
    listed = UsageLedger.from_config(cfg)  # the list price (the teacher profile's, or the config's; local: $0)
    factor = cfg.batch_price_factor
    ledger = UsageLedger(listed.price_per_mtok_input * factor, listed.price_per_mtok_output * factor)
    task = BATCH_TASK_PREFIX + _step_id(ctx)
    row = ledger.tasks.setdefault(task, TaskUsage())
    for record in state["rounds"]:
        if record["status"] != "ended":
            continue
        prompt, completion = record["prompt_tokens"], record["completion_tokens"]
        row.add(TaskUsage(calls=record["answered"] + len(record["failed"]), errors=len(record["failed"]),
                          prompt_tokens=prompt, completion_tokens=completion, seconds=record["seconds"],
                          cost_usd=(prompt * ledger.price_per_mtok_input
                                    + completion * ledger.price_per_mtok_output) / 1e6))
    ledger.save(ctx.store, usage_key(ctx, ctx.access.cycle if ctx.access else None, task))
