"""Spread requests over several servers of the same model (the embedded teacher's llama.cpp pool).

llama-cpp-python's server answers one request at a time (a global lock), so the bounded
concurrency of the teacher and the RAGAS judge only pays off with one server per concurrent call.
Each request goes to the replica with the fewest requests in flight; the transports sit under the
cache (:mod:`kdflow.llm.cache`), so cache keys never depend on which replica answered.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import httpx2


class _Balancer:
    """Least-in-flight choice among base URLs, shared by the sync and async transports."""

    def __init__(self, base_urls: Sequence[str]):
        if not base_urls:
            raise ValueError("a replica pool needs at least one base URL")
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.in_flight = [0] * len(self.base_urls)
        self.served = [0] * len(self.base_urls)
        self._lock = threading.Lock()

    def acquire(self, request: httpx2.Request) -> int:
        """Point ``request`` at the least busy replica; returns its index for :meth:`release`."""
        url = str(request.url)
        primary = self.base_urls[0]
        if not url.startswith(primary):
            raise ValueError(f"request to {url} is outside the replica pool of {primary}")
        with self._lock:
            index = min(range(len(self.base_urls)), key=lambda i: (self.in_flight[i], self.served[i]))
            self.in_flight[index] += 1
            self.served[index] += 1
        target = httpx2.URL(self.base_urls[index] + url[len(primary) :])
        request.url = target
        request.headers["host"] = target.netloc.decode("ascii")
        return index

    def release(self, index: int) -> None:
        with self._lock:
            self.in_flight[index] -= 1


class ReplicaTransport(httpx2.BaseTransport):
    """Sync transport sending each request to the least busy of ``base_urls`` (first = the client's base_url)."""

    def __init__(self, base_urls: Sequence[str], inner: httpx2.BaseTransport | None = None):
        self.balancer = _Balancer(base_urls)
        self.inner = inner or httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        index = self.balancer.acquire(request)
        try:
            response = self.inner.handle_request(request)
            response.read()  # the replica stays busy until its whole answer is in
            return response
        finally:
            self.balancer.release(index)

    def close(self) -> None:
        self.inner.close()


class AsyncReplicaTransport(httpx2.AsyncBaseTransport):
    """Async twin of :class:`ReplicaTransport` (the RAGAS judge's AsyncOpenAI client)."""

    def __init__(self, base_urls: Sequence[str], inner: httpx2.AsyncBaseTransport | None = None):
        self.balancer = _Balancer(base_urls)
        self.inner = inner or httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        index = self.balancer.acquire(request)
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.balancer.release(index)

    async def aclose(self) -> None:
        await self.inner.aclose()
