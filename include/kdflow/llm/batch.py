"""Teacher and judge requests through the OpenAI Batch API: held, sent as one batch, answered into the cache.

A step runs as it always does; while :func:`holding` is active, a request the response cache cannot
answer is not sent but *held* (:class:`HoldingTransport`, under the cache transport of every kdflow
client) and answered with an error the openai client does not retry, so the step fails or records a
judge failure for that call. The held requests are what the step still needs: :func:`submit_batch`
writes them as one JSONL file (``custom_id`` = the cache key), uploads it (Files API, purpose
``batch``) and creates the batch (``/v1/chat/completions``, 24 h window). When the batch has ended,
:func:`collect_results` reads its output and error files and :func:`fill_cache` stores each answer
exactly where the cache transport would have stored it, so the step's next run is answered from the
cache. Asking again after a rejection (the gate, a reply that does not fit the schema, the judge's
next draw) is held in that run: one batch per round, until a run holds nothing.

This module knows no pipeline; :mod:`kdflow.pipeline.batch_rounds` keeps the rounds of a step and
:mod:`kdflow.llm.batch_trigger` waits for a batch in the Airflow triggerer.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2

from kdflow.llm.cache import _cacheable_body, cache_key, request_hash
from kdflow.store import ArtifactStore

BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
HELD_STATUS = 409  # never sent by kdflow's own requests otherwise; "x-should-retry: false" stops the client's retries
HELD_MESSAGE = "request held for the next batch (teacher.batch)"

T = TypeVar("T")
R = TypeVar("R")


class BatchError(RuntimeError):
    """A batch, or a line of it, failed for good: the message names the batch and what failed."""


class RequestCollector:
    """The uncached requests of one run of a step, by cache key (the same request held twice counts once)."""

    def __init__(self) -> None:
        self.requests: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def hold(self, request: httpx2.Request, body: dict[str, Any]) -> httpx2.Response:
        with self._lock:
            self.requests.setdefault(request_hash(body), body)
        error = {"error": {"message": HELD_MESSAGE, "type": "batch_pending", "code": "batch_pending"}}
        return httpx2.Response(HELD_STATUS, headers={"x-should-retry": "false"}, json=error, request=request)


_holding: RequestCollector | None = None  # process-wide: the pool threads of a step must see it too
_holding_lock = threading.Lock()


@contextlib.contextmanager
def holding() -> Iterator[RequestCollector]:
    """Hold every uncached chat completion of this process for a batch while the block runs."""
    global _holding
    collector = RequestCollector()
    with _holding_lock:
        if _holding is not None:
            raise RuntimeError("requests are already held for a batch in this process")
        _holding = collector
    try:
        yield collector
    finally:
        with _holding_lock:
            _holding = None


def is_holding() -> bool:
    return _holding is not None


class HoldingTransport(httpx2.BaseTransport):
    """Under the cache transport: holds a miss while :func:`holding` is active, else forwards it."""

    def __init__(self, inner: httpx2.BaseTransport | None = None):
        self.inner = inner or httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        collector, body = _holding, _cacheable_body(request)
        if collector is not None and body is not None:
            return collector.hold(request, body)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncHoldingTransport(httpx2.AsyncBaseTransport):
    """Async twin of :class:`HoldingTransport` (the RAGAS judge's client)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport | None = None):
        self.inner = inner or httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        collector, body = _holding, _cacheable_body(request)
        if collector is not None and body is not None:
            return collector.hold(request, body)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def map_round(pool: Executor, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``pool.map(fn, items)`` as a list; while requests are held, every item runs before the first
    error is raised, so one batch carries all the requests of a round (``pool.map`` stops at the first)."""
    if not is_holding():
        return list(pool.map(fn, items))
    futures = [pool.submit(fn, item) for item in items]
    wait(futures)
    return [f.result() for f in futures]


# -- submitting and reading a batch -------------------------------------------------------------
def batch_lines(requests: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One Batch API input line per request, its cache key as ``custom_id`` (sorted: same requests, same file)."""
    return [{"custom_id": digest, "method": "POST", "url": BATCH_ENDPOINT, "body": dict(body)}
            for digest, body in sorted(requests.items())]


def jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode("utf-8")


def submit_batch(client: Any, lines: Sequence[Mapping[str, Any]], *, metadata: Mapping[str, str]) -> Any:
    """Upload ``lines`` (Files API, purpose ``batch``) and create their batch; returns the openai Batch."""
    uploaded = client.files.create(file=("kdflow-batch.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=BATCH_ENDPOINT,
                                 completion_window=COMPLETION_WINDOW, metadata=dict(metadata))


def find_batch(client: Any, metadata: Mapping[str, str], *, limit: int = 100) -> Any | None:
    """The newest batch whose metadata includes ``metadata``: one a task created before it could record its id."""
    for seen, batch in enumerate(client.batches.list(limit=limit)):  # newest first; the list pages on by itself
        if seen >= limit:
            break
        if all((batch.metadata or {}).get(k) == v for k, v in metadata.items()):
            return batch
    return None


@dataclass
class BatchResults:
    """What an ended batch answered: cache key -> chat completion, and cache key -> why the line failed."""

    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def _line_failure(row: Mapping[str, Any]) -> str:
    error = row.get("error") or {}
    response = row.get("response") or {}
    if error:
        return f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip()
    body = response.get("body") or {}
    message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
    return f"HTTP {response.get('status_code')}: {message or 'no chat completion in the reply'}"


def batch_failure(batch: Any) -> str:
    """The batch's own errors (a ``failed`` batch: its input was refused) or its end state, in one line."""
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    if errors:
        first = errors[0]
        return f"{batch.status}: {getattr(first, 'code', None) or 'error'}: {getattr(first, 'message', '')}"
    return str(batch.status)


def collect_results(client: Any, batch: Any) -> BatchResults:
    """Read an ended batch's output and error files (an expired or cancelled batch keeps what it finished)."""
    results = BatchResults()
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        for line in client.files.content(file_id).text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            digest = row.get("custom_id")
            response = row.get("response") or {}
            body = response.get("body")
            answered = response.get("status_code") == 200 and isinstance(body, dict) and "choices" in body
            if answered and not row.get("error"):
                results.answers[digest] = body
            else:
                results.failures[digest] = _line_failure(row)
    return results


def fill_cache(store: ArtifactStore, requests: Mapping[str, Mapping[str, Any]], answers: Mapping[str, Any]) -> int:
    """Store each answer under its request's cache key, as the cache transport would; returns how many."""
    stored = 0
    for digest, answer in answers.items():
        if digest in requests:
            store.write_json(cache_key(digest), {"request": dict(requests[digest]), "response": answer})
            stored += 1
    return stored


def wait_for_batch(client: Any, batch_id: str, *, poll_s: float, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Poll a batch until it has ended (the CLI's way to wait; Airflow waits in the triggerer instead)."""
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL_STATUSES:
            return batch
        sleep(poll_s)


def batch_client(base_url: str | None, api_key: str, *, timeout_s: float = 120, max_retries: int = 4) -> Any:
    """A plain openai client for the Files and Batches endpoints (nothing to cache there)."""
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)


class IndependentParts:
    """``with IndependentParts() as parts: for x in xs: with parts.part(): ...``: parts of a step that need
    none of each other's answers (the topics of a question step). While requests are held, a part that
    fails (on a held request) lets the next one run and hold its requests too, so they share one batch;
    the first error is raised when the block ends. Otherwise an error is raised at once, as without it."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    @contextlib.contextmanager
    def part(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if not is_holding():
                raise
            self.error = self.error or exc

    def __enter__(self) -> IndependentParts:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and self.error is not None:
            raise self.error
