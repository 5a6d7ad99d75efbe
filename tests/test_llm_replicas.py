"""The replica pool under the cache: concurrent calls spread over every server of the endpoint,
and cache keys do not depend on which server answered."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from kdflow.llm import Endpoint, UsageLedger, make_client
from kdflow.llm.replicas import ReplicaTransport
from kdflow.store import ArtifactStore


@pytest.fixture()
def slow_servers(fake_completion_server):
    """Two servers that each answer one request at a time in 0.3 s (like llama-cpp-python's lock)."""
    servers, urls = [], []
    for _ in range(2):
        urls.append(fake_completion_server(content="ok", serial_delay_s=0.3))
        servers.append(fake_completion_server.server)
    return servers, urls


def _ask(client, i: int) -> str:
    messages = [{"role": "user", "content": f"question {i}"}]
    return client.chat.completions.create(model="m", messages=messages, max_tokens=8).choices[0].message.content


def test_sync_calls_spread_over_replicas_and_share_one_cache(tmp_path, slow_servers):
    servers, urls = slow_servers
    store, ledger = ArtifactStore(str(tmp_path)), UsageLedger()
    client = make_client(Endpoint(urls[0], "m", "x", "json_object", (urls[1],)), store, ledger, task="t", max_retries=0)
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda i: _ask(client, i), range(6))) == ["ok"] * 6
    elapsed = time.perf_counter() - started
    assert [s.requests for s in servers] == [3, 3]
    assert elapsed < 6 * 0.3  # one server would take 1.8 s: the two answered side by side
    assert all(s.hosts == {url.split("/")[2]}
               for s, url in zip(servers, urls, strict=True))  # Host header follows the URL
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: _ask(client, i), range(6)))
    assert [s.requests for s in servers] == [3, 3]  # all six from the cache, whichever replica wrote them
    assert ledger.as_dict()["tasks"]["t"]["cache_hits"] == 6


def test_async_judge_calls_spread_over_replicas(tmp_path, slow_servers):
    servers, urls = slow_servers
    client = make_client(Endpoint(urls[0], "m", "x", "json_object", (urls[1],)),
                         ArtifactStore(str(tmp_path)), UsageLedger(),
                         task="judge", async_client=True, max_retries=0)

    async def ask_all() -> list[str]:
        async def one(i: int) -> str:
            reply = await client.chat.completions.create(model="m",
                                                         messages=[{"role": "user", "content": f"q{i}"}], max_tokens=8)
            return reply.choices[0].message.content

        return await asyncio.gather(*(one(i) for i in range(4)))

    assert asyncio.run(ask_all()) == ["ok"] * 4
    assert [s.requests for s in servers] == [2, 2]


def test_a_request_outside_the_pool_is_refused():
    transport = ReplicaTransport(["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"])
    with pytest.raises(ValueError, match="outside the replica pool"):
        transport.handle_request(httpx2.Request("POST", "http://example.com/v1/chat/completions"))
