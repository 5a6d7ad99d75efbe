"""The embedded teacher's servers as processes: llama.cpp's llama-server with slots (the default) and
the lazy start on the first cache miss. Real binaries and the packaged GGUF, no fakes: start,
structured output accepted, concurrent requests answered by several slots, clean stop, no port
left open, a missing binary refused in one line."""

from __future__ import annotations

import json
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel

from kdflow.config import load_config
from kdflow.llm import Endpoint, UsageLedger, make_client
from kdflow.llm.client import json_response_format
from kdflow.llm.server import (
    EMBEDDED_STRUCTURED_OUTPUT,
    EndpointError,
    ServerPlan,
    embedded_servers,
    packaged_gguf,
    server_plan,
)
from kdflow.store import ArtifactStore

pytestmark = pytest.mark.slow


class Facts(BaseModel):
    kind: str
    replicas: int


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _endpoint(servers, gguf) -> Endpoint:
    return Endpoint(servers.base_urls[0], gguf.stem, "sk-no-key-required", EMBEDDED_STRUCTURED_OUTPUT,
                    tuple(servers.base_urls[1:]), ensure_ready=servers.ensure_started)


def test_the_default_plan_is_one_llama_server_with_slots():
    gguf = packaged_gguf()
    plan = server_plan(load_config(environ={}).teacher, gguf)
    assert (plan.kind, plan.processes, plan.slots) == ("llama_server", 1, 8)
    command = plan.command(12345)
    assert command[command.index("--parallel") + 1] == "8"
    assert command[command.index("--ctx-size") + 1] == str(8 * plan.n_ctx)  # every slot gets the whole n_ctx
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--repeat-penalty") + 1] == "1.1"  # llama-cpp-python's sampling: no loops
    legacy = server_plan(load_config({"teacher": {"embedded_server": "llama_cpp_python", "embedded_servers": 2}},
                                     environ={}).teacher, gguf)
    assert (legacy.kind, legacy.processes, legacy.threads, legacy.slots) == ("llama_cpp_python", 2, 1, 1)


def test_llama_server_answers_structured_and_concurrent_requests_then_stops_cleanly(tmp_path):
    gguf = packaged_gguf()
    with embedded_servers(ServerPlan(gguf, "llama_server", threads=2, slots=4, n_ctx=1024)) as servers:
        port = servers.ports[0]
        assert servers.started and _port_open(port)
        client = make_client(_endpoint(servers, gguf), ArtifactStore(str(tmp_path / "store")), UsageLedger(),
                             task="t", timeout_s=60, max_retries=0)
        response_format = json_response_format(Facts, EMBEDDED_STRUCTURED_OUTPUT)

        def ask(i: int) -> str:
            reply = client.chat.completions.create(
                model=gguf.stem, temperature=0.0, max_tokens=40, response_format=response_format,
                messages=[{"role": "user", "content": f"Describe Deployment number {i} as JSON."}])
            return reply.choices[0].message.content

        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(ask, range(4)))
        # grammar-constrained: every reply parses into the schema even from a 135M model (unless cut at max_tokens)
        parsed = [Facts.model_validate_json(r) for r in replies if r.rstrip().endswith("}")]
        assert parsed and all(isinstance(f.replicas, int) for f in parsed)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/slots", timeout=5) as resp:
            slots = json.load(resp)
        assert len(slots) == 4
        assert sum(1 for slot in slots if slot.get("id_task", -1) != -1) >= 2, slots  # served side by side
        pids = servers.pids
    assert not _port_open(port)
    assert all(not _alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_lazy_server_starts_on_the_first_cache_miss_only(tmp_path):
    """A rerun whose calls are all cached starts no server; a miss starts it once for all callers."""
    gguf = packaged_gguf()
    store = ArtifactStore(str(tmp_path / "store"))
    messages = [{"role": "user", "content": "Name one Kubernetes object."}]
    plan = ServerPlan(gguf, "llama_server", threads=1, slots=2, n_ctx=512)
    with embedded_servers(plan, lazy=True) as servers:
        assert not servers.started and not _port_open(servers.ports[0])
        client = make_client(_endpoint(servers, gguf), store, UsageLedger(), task="t", timeout_s=60, max_retries=0)
        first = client.chat.completions.create(model=gguf.stem, messages=messages, max_tokens=8, temperature=0.0)
        assert servers.started
    with embedded_servers(plan, lazy=True) as servers:
        ledger = UsageLedger()
        client = make_client(_endpoint(servers, gguf), store, ledger, task="t", timeout_s=60, max_retries=0)
        again = client.chat.completions.create(model=gguf.stem, messages=messages, max_tokens=8, temperature=0.0)
        assert not servers.started and ledger.tasks["t"].cache_hits == 1
    assert again.choices[0].message.content == first.choices[0].message.content


def test_a_missing_llama_server_binary_is_refused_in_one_line(monkeypatch, tmp_path):
    import kdflow.llm.server as server

    monkeypatch.setattr(server.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EndpointError, match="needs llama.cpp's llama-server binary .* teacher.embedded_server="):
        ServerPlan(packaged_gguf()).command(1234)


def test_a_server_that_cannot_start_fails_every_caller_with_its_log(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf")
    with embedded_servers(ServerPlan(broken, "llama_server"), lazy=True, timeout_s=30) as servers:
        with pytest.raises(EndpointError, match="exited with code"):
            servers.ensure_started()
        with pytest.raises(EndpointError, match="exited with code"):  # remembered: not started again per call
            servers.ensure_started()
    assert not _port_open(servers.ports[0])
