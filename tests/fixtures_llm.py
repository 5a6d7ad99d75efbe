"""Fixtures for the teacher/judge tests: ONE real embedded llama.cpp server per session, and a
tiny scripted local HTTP server for the faults a real server cannot be made to produce on demand
(a reply that is not the JSON asked for, rate limits and 5xx, a rejected key)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@pytest.fixture(scope="session")
def embedded_endpoint() -> Iterator:
    """The packaged SmolLM2 GGUF served by the embedded llama.cpp server on 127.0.0.1 for the whole
    session, started at once (not lazily): several tests reach its URL from a subprocess or through a
    relay, where no cache transport is there to start it on the first call."""
    import torch

    from kdflow.config import load_config
    from kdflow.llm import teacher_endpoint

    torch.set_num_threads(1)
    with teacher_endpoint(load_config(environ={}).teacher, lazy=False) as endpoint:
        yield endpoint


@pytest.fixture()
def fake_completion_server() -> Iterator[Callable[..., str]]:
    """``start(content=...)`` serves a chat completion whose message is ``content``; ``start(raw=...)``
    serves ``raw`` bytes as the body; ``serial_delay_s`` answers one request at a time, each taking
    that long (as llama-cpp-python's server does). Returns the /v1 URL; ``start.server`` is the
    :class:`ScriptedServer` (``requests``, ``hosts``, ``bodies``)."""
    with contextlib.ExitStack() as servers:

        def start(content: str | None = None, raw: bytes | None = None, serial_delay_s: float | None = None) -> str:
            start.server = servers.enter_context(ScriptedServer(raw if raw is not None else content or "",
                                                                serial_delay_s=serial_delay_s))
            return start.server.url

        yield start


class ScriptedServer:
    """``with ScriptedServer(*replies) as server``: POST n gets ``replies[n]`` (the last one repeats):
    a str is served as a chat completion's content, bytes as the raw body, an int as that HTTP status
    with an OpenAI error body, ``(status, bytes)`` as both, a callable is called with the request body
    and returns one of those. ``serial_delay_s`` answers one request at a time, each taking that long.
    ``server.max_in_flight`` is the most requests it held at once. ``server.bodies`` /
    ``server.headers`` (lowercased names) hold what each POST sent; ``server.url`` is the /v1 URL."""

    def __init__(self, *replies: str | bytes | int | tuple[int, bytes], serial_delay_s: float | None = None):
        self.replies, self.bodies, self.headers = list(replies), [], []
        self.in_flight = self.max_in_flight = 0
        lock, script = threading.Lock(), self
        one_at_a_time = threading.Lock() if serial_delay_s else contextlib.nullcontext()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with one_at_a_time:
                    with lock:
                        script.bodies.append(body)
                        script.headers.append({k.lower(): v for k, v in self.headers.items()})
                        reply = script.replies[min(len(script.bodies), len(script.replies)) - 1]
                        script.in_flight += 1
                        script.max_in_flight = max(script.max_in_flight, script.in_flight)
                    if serial_delay_s:
                        time.sleep(serial_delay_s)
                    try:
                        status, data = _scripted_response(reply(body) if callable(reply) else reply)
                    finally:
                        with lock:
                            script.in_flight -= 1
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()

    @property
    def requests(self) -> int:
        return len(self.bodies)

    @property
    def hosts(self) -> set[str]:
        return {h["host"] for h in self.headers}


def _scripted_response(reply: str | bytes | int | tuple[int, bytes]) -> tuple[int, bytes]:
    if isinstance(reply, tuple):
        return reply
    if isinstance(reply, int):
        return reply, json.dumps({"error": {"message": f"scripted HTTP {reply}", "type": "server_error",
                                            "code": reply}}).encode()
    return 200, reply if isinstance(reply, bytes) else chat_completion_body(reply)


def chat_completion_body(content: str) -> bytes:
    """An OpenAI chat-completion envelope around ``content`` (the envelope is fine; the content may not be)."""
    return json.dumps({
        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }).encode()
