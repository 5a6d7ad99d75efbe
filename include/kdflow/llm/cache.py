"""Response cache and usage accounting as an httpx transport under the openai client.

Sitting below the client means the sync teacher client and the async client RAGAS uses get the
same caching and token counts without either knowing. A chat completion is keyed by the sha256
of its canonical request body (model, messages, every parameter) and stored at
``cache/llm/<hash>.json``; a repeated request is answered from the store with no server call.
Only complete, successful responses are stored (the store writes atomically), so an interrupted
run never leaves a half-written entry and errors are never replayed. ``before_forward`` runs before
any request goes past the cache: the embedded server starts there, so an all-cached task starts none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx2

from kdflow.store import ArtifactStore, StoreError

CACHE_PREFIX = "cache/llm"
CACHED_PATHS = ("/chat/completions", "/completions", "/embeddings")
CACHE_HEADER = "x-kdflow-cache"  # "hit" | "miss" on every cacheable response
CACHE_KEY_HEADER = "x-kdflow-cache-key"


@dataclass
class TaskUsage:
    calls: int = 0  # requests that reached the server (retries included)
    cache_hits: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float = 0.0

    def add(self, other: TaskUsage) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class UsageLedger:
    """Calls, cache hits, tokens and estimated cost per task label (prices: the teacher's profile,
    :mod:`kdflow.llm.profiles`, or the config's; none given: $0)."""

    price_per_mtok_input: float = 0.0
    price_per_mtok_output: float = 0.0
    tasks: dict[str, TaskUsage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, teacher_cfg: Any) -> UsageLedger:
        """Prices apply only where a provider bills the calls: a local endpoint costs $0; otherwise the
        teacher profile's list price, unless ``teacher.price_per_mtok_*`` set one."""
        from kdflow.llm.profiles import resolve_teacher

        if teacher_cfg.is_local:
            return cls(0.0, 0.0)
        setup = resolve_teacher(teacher_cfg)
        return cls(setup.price_per_mtok_input, setup.price_per_mtok_output)

    def record(self, task: str, *, hit: bool = False, error: bool = False, usage: Mapping[str, Any] | None = None,
               seconds: float = 0.0) -> None:
        prompt = int((usage or {}).get("prompt_tokens") or 0)
        completion = int((usage or {}).get("completion_tokens") or 0)
        with self._lock:
            row = self.tasks.setdefault(task, TaskUsage())
            if hit:
                row.cache_hits += 1
                return
            row.calls += 1
            row.errors += int(error)
            row.seconds += seconds
            row.prompt_tokens += prompt
            row.completion_tokens += completion
            row.cost_usd += (prompt * self.price_per_mtok_input + completion * self.price_per_mtok_output) / 1e6

    def total(self) -> TaskUsage:
        total = TaskUsage()
        for row in self.tasks.values():
            total.add(row)
        return total

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "price_per_mtok_input": self.price_per_mtok_input,
                "price_per_mtok_output": self.price_per_mtok_output,
                "tasks": {name: asdict(row) for name, row in sorted(self.tasks.items())},
                "total": asdict(self.total()),
            }

    def merge(self, other: UsageLedger | Mapping[str, Any]) -> UsageLedger:
        """Add another ledger (or its ``as_dict()``) into this one, e.g. the ledgers of a run's tasks."""
        rows = other.tasks.items() if isinstance(other, UsageLedger) else other.get("tasks", {}).items()
        with self._lock:
            for name, row in rows:
                self.tasks.setdefault(name, TaskUsage()).add(row if isinstance(row, TaskUsage) else TaskUsage(**row))
        return self

    def save(self, store: ArtifactStore, key: str):  # noqa: ANN201 - Pointer
        return store.write_json(key, self.as_dict(),
                                summary={"calls": self.total().calls, "cache_hits": self.total().cache_hits})

    @classmethod
    def load(cls, store: ArtifactStore, key: str) -> UsageLedger:
        data = store.read_json(key)
        return cls(data["price_per_mtok_input"], data["price_per_mtok_output"]).merge(data)


def request_hash(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a request body: same model, messages and parameters, same key."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_key(digest: str) -> str:
    return f"{CACHE_PREFIX}/{digest}.json"


def evict(store: ArtifactStore, digest: str) -> None:
    """Forget one cached response (the teacher drops answers that failed validation)."""
    key = cache_key(digest)
    if store.exists(key):
        store.fs.rm(store.path(key).path)


def _cacheable_body(request: httpx2.Request) -> dict[str, Any] | None:
    if request.method != "POST" or not request.url.path.endswith(CACHED_PATHS):
        return None
    try:
        body = json.loads(request.content or b"{}")
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("stream"):
        return None
    return body


def _complete_response(response_bytes: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(response_bytes)
    except ValueError:
        return None
    return data if isinstance(data, dict) and ("choices" in data or "data" in data) else None


class _CacheLogic:
    """What the sync and async transports share: lookup, accounting, storing."""

    def __init__(self, store: ArtifactStore, ledger: UsageLedger, task: str,
                 before_forward: Callable[[], None] | None = None):
        self.store, self.ledger, self.task = store, ledger, task
        self.before_forward = before_forward or (lambda: None)

    def lookup(self, request: httpx2.Request) -> tuple[str | None, httpx2.Response | None]:
        body = _cacheable_body(request)
        if body is None:
            return None, None
        digest = request_hash(body)
        try:
            cached = self.store.read_json(cache_key(digest))
        except (StoreError, ValueError):
            return digest, None
        self.ledger.record(self.task, hit=True)
        headers = {"content-type": "application/json", CACHE_HEADER: "hit", CACHE_KEY_HEADER: digest}
        return digest, httpx2.Response(200, headers=headers, json=cached["response"], request=request)

    def finish(self, digest: str, request: httpx2.Request, response: httpx2.Response, content: bytes,
               seconds: float) -> httpx2.Response:
        data = _complete_response(content) if response.status_code == 200 else None
        self.ledger.record(self.task, error=data is None, usage=(data or {}).get("usage"), seconds=seconds)
        if data is not None:
            self.store.write_json(cache_key(digest), {"request": json.loads(request.content), "response": data})
        headers = httpx2.Headers(response.headers)
        headers.pop("content-encoding", None)  # content is already decoded
        headers.pop("content-length", None)
        headers[CACHE_HEADER] = "miss"
        headers[CACHE_KEY_HEADER] = digest
        return httpx2.Response(response.status_code, headers=headers, content=content, request=request,
                               extensions=response.extensions)


class CachingTransport(httpx2.BaseTransport):
    """Sync transport: answers repeated requests from the store, forwards and records the rest."""

    def __init__(self, store: ArtifactStore, ledger: UsageLedger, task: str, inner: httpx2.BaseTransport | None = None,
                 before_forward: Callable[[], None] | None = None):
        self.logic = _CacheLogic(store, ledger, task, before_forward)
        self.inner = inner or httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        digest, cached = self.logic.lookup(request)
        if cached is not None:
            return cached
        self.logic.before_forward()
        if digest is None:  # not a completion (or streamed): pass through untouched
            return self.inner.handle_request(request)
        started = time.perf_counter()
        try:
            response = self.inner.handle_request(request)
            content = response.read()
        except Exception:
            self.logic.ledger.record(self.logic.task, error=True, seconds=time.perf_counter() - started)
            raise
        return self.logic.finish(digest, request, response, content, time.perf_counter() - started)

    def close(self) -> None:
        self.inner.close()


class AsyncCachingTransport(httpx2.AsyncBaseTransport):
    """Async twin of :class:`CachingTransport` for AsyncOpenAI (the RAGAS judge); store I/O runs in a thread."""

    def __init__(self, store: ArtifactStore, ledger: UsageLedger, task: str,
                 inner: httpx2.AsyncBaseTransport | None = None, before_forward: Callable[[], None] | None = None):
        self.logic = _CacheLogic(store, ledger, task, before_forward)
        self.inner = inner or httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        digest, cached = await asyncio.to_thread(self.logic.lookup, request)
        if cached is not None:
            return cached
        await asyncio.to_thread(self.logic.before_forward)
        if digest is None:
            return await self.inner.handle_async_request(request)
        started = time.perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
            content = await response.aread()
        except Exception:
            self.logic.ledger.record(self.logic.task, error=True, seconds=time.perf_counter() - started)
            raise
        return await asyncio.to_thread(self.logic.finish, digest, request, response, content,
                                       time.perf_counter() - started)

    async def aclose(self) -> None:
        await self.inner.aclose()
