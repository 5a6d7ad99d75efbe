"""Wait for an OpenAI batch in the Airflow triggerer, so a task holds no worker slot while it runs.

The task defers with :class:`BatchTrigger` (:func:`kdflow.pipeline.airflow_tasks.run_step_in_airflow`);
the triggerer polls the batch every ``poll_s`` seconds and fires one event when it has ended,
whatever the end (completed, expired, failed, cancelled): the resumed task reads the batch itself and
decides. The trigger's arguments hold the endpoint and the *name* of the key's variable, never the key.
Imported by the triggerer and by a task that defers, never at DAG-parse time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from kdflow.llm.batch import TERMINAL_STATUSES


class BatchTrigger(BaseTrigger):
    """Fires ``{"batch_id", "status"}`` once batch ``batch_id`` at ``base_url`` has ended."""

    def __init__(self, batch_id: str, base_url: str | None, api_key_env: str, poll_s: float = 60.0):
        super().__init__()
        self.batch_id, self.base_url, self.api_key_env, self.poll_s = batch_id, base_url, api_key_env, poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"batch_id": self.batch_id, "base_url": self.base_url, "api_key_env": self.api_key_env,
                 "poll_s": self.poll_s})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import openai

        from kdflow.llm.server import api_key_from_env

        api_key = await asyncio.to_thread(api_key_from_env, self.api_key_env)
        async with openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key) as client:
            while True:
                batch = await client.batches.retrieve(self.batch_id)
                if batch.status in TERMINAL_STATUSES:
                    counts = batch.request_counts.model_dump() if batch.request_counts else {}
                    yield TriggerEvent({"batch_id": self.batch_id, "status": batch.status, "counts": counts})
                    return
                self.log.info("batch %s is %s", self.batch_id, batch.status)
                await asyncio.sleep(self.poll_s)
