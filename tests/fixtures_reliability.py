"""Fixtures for the reliability and security tests: a socket watch (audit hook), a store snapshot
to compare before and after a failure, the smallest pipeline config, and a tiny local HTTP relay
in front of the real teacher that is down for a while (the one fault a real server cannot be
told to produce on demand). Register in conftest.py's ``pytest_plugins``."""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# -- socket watch --------------------------------------------------------------------------------
# Audit hooks cannot be removed, so one hook is installed per process and records only while a
# test holds the watch list.
_watch: list[tuple[str, Any]] | None = None


def _audit(event: str, args: tuple) -> None:
    if _watch is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _watch.append((event, args[1] if event == "socket.connect" else args[0]))


_hook_installed = False


def is_loopback(event: str, target: Any) -> bool:
    """Loopback addresses, UNIX sockets and lookups of loopback names are local; nothing else is."""
    if event == "socket.getaddrinfo":
        host = target.decode() if isinstance(target, bytes) else target
        if host in (None, "localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    if isinstance(target, str | bytes):  # AF_UNIX path
        return True
    return ipaddress.ip_address(target[0]).is_loopback


@pytest.fixture()
def socket_watch() -> Iterator[list[tuple[str, Any]]]:
    """Every (``socket.connect`` address | ``socket.getaddrinfo`` host) of this process during the test."""
    global _watch, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _watch = seen = []
    try:
        yield seen
    finally:
        _watch = None


# Installed into a child process through PYTHONPATH: that process's own socket audit, which also
# sees what it does at exit (background threads, atexit flushes), unlike the in-process watch.
SOCKET_AUDIT_SITECUSTOMIZE = """
import json, os, sys

def _kdflow_socket_audit(event, args):
    if event in ("socket.bind", "socket.connect", "socket.getaddrinfo"):
        target = args[0] if event == "socket.getaddrinfo" else args[1]
        if isinstance(target, bytes):
            target = target.decode(errors="replace")
        with open(os.environ["KDFLOW_SOCKET_AUDIT"], "a") as log:
            log.write(json.dumps([event, target], default=repr) + "\\n")

sys.addaudithook(_kdflow_socket_audit)
"""


@pytest.fixture()
def child_socket_audit(tmp_path, monkeypatch) -> Callable[[], list[tuple[str, Any]]]:
    """Put the socket audit into every child process started during the test (PYTHONPATH);
    returns a reader of the (event, target) pairs they recorded."""
    import json
    import os

    hook_dir, log = tmp_path / "socket-audit", tmp_path / "sockets.jsonl"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SOCKET_AUDIT_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("KDFLOW_SOCKET_AUDIT", str(log))

    def events() -> list[tuple[str, Any]]:
        return [tuple(json.loads(line)) for line in log.read_text().splitlines()] if log.exists() else []

    return events


# -- store contents ------------------------------------------------------------------------------
def store_snapshot(store: Any, prefix: str = "") -> dict[str, str]:
    """key -> sha256 of every object in the store (under ``prefix``): compare before and after."""
    keys = store.list_keys(prefix) if prefix else sorted({k for p in ("runs", "held_out", "champion", "cache")
                                                           for k in store.list_keys(p)})
    return {key: hashlib.sha256(store.read_bytes(key)).hexdigest() for key in keys}


# Data checkpoints whose content must not change when tasks are rerun (timings and reports do): the manifest
# names' last part (``cycle_1.questions``). Used by the DAG end-to-end test and the native topology test.
STABLE = ("questions", "references", "baseline_answers", "finetuned_answers", "baseline_scores", "finetuned_scores",
          "dataset")

SMALL_GOLD = Path(__file__).parent / "data" / "gold-small.jsonl"


def smallest_overrides(store_url: str, student_dir: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """One cycle, one question on pods, one held-out question, a tiny student, reference-only metrics."""
    overrides: dict[str, Any] = {
        "pipeline": {"cycles": 1, "questions_per_cycle": 1, "topics": ["pods"], "held_out_per_topic": 1},
        "store": {"url": store_url},
        "teacher": {"max_tokens": 160},
        "student": {"model": student_dir, "epochs": 1, "max_new_tokens": 12, "batch_size": 2,
                    "lora_r": 4, "lora_alpha": 8, "generation_batch_size": 2, "max_length": 128},
        # a 6-item gold set (two per topic) keeps these runs short; the full set runs in the embedded and README tests
        "evaluation": {"metrics": ["semantic_similarity", "rouge_l"], "gold_path": str(SMALL_GOLD),
                       "teacher_ceiling": False},
    }
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return overrides


# -- a service that is down for a while ----------------------------------------------------------
class Relay:
    """An HTTP relay to ``upstream`` on a fixed 127.0.0.1 port: connection refused while stopped,
    forwarding while started. ``start(after_s=...)`` brings it up late; ``start(drop_first=n)`` hangs
    up on the first n requests without an answer (down for a while, whatever the caller did before its
    first request: a timer can run out before it). Counts requests, dropped ones included."""

    def __init__(self, upstream: str, port: int):
        self.upstream = urlsplit(upstream)
        self.port = port
        self.requests = 0
        self.dropped = 0
        self.server: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, after_s: float = 0.0, drop_first: int = 0) -> Relay:
        if after_s:
            self._timer = threading.Timer(after_s, self.start)
            self._timer.start()
            return self
        relay, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue" (S3 PUTs wait for it)

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                with lock:
                    relay.requests += 1
                    drop = relay.dropped < drop_first
                    relay.dropped += drop
                if drop:  # hang up: the client sees "Server disconnected without sending a response"
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(relay.upstream.hostname, relay.upstream.port, timeout=300)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "expect")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for name, value in reply.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                length = reply.getheader("content-length") if self.command == "HEAD" else None
                self.send_header("content-length", length or str(len(data)))
                self.send_header("connection", "close")  # one request per connection, so stop() means down
                self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _forward  # noqa: N815 - http.server API

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        server.allow_reuse_address = True
        server.daemon_threads = True
        server.server_bind()
        server.server_activate()
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture()
def relay() -> Iterator:
    """``relay(upstream_url)`` -> a stopped :class:`Relay` to it on a free loopback port."""
    from kdflow.llm.server import free_port

    relays: list[Relay] = []

    def make(upstream: str) -> Relay:
        relays.append(Relay(upstream, free_port()))
        return relays[-1]

    yield make
    for item in relays:
        item.stop()
