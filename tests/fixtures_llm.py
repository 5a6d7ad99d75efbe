"""Fixtures for the teacher/judge tests: ONE real embedded llama.cpp server per session, and a
tiny local HTTP server for the single fault a real server cannot be made to produce on demand
(a reply that is not the JSON asked for)."""

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
    """The packaged SmolLM2 GGUF served by llama_cpp.server on 127.0.0.1 for the whole session."""
    import torch

    from kdflow.config import load_config
    from kdflow.llm import teacher_endpoint

    torch.set_num_threads(1)
    with teacher_endpoint(load_config(environ={}).teacher) as endpoint:
        yield endpoint


@pytest.fixture()
def fake_completion_server() -> Iterator[Callable[..., str]]:
    """``start(content=...)`` serves a chat completion whose message is ``content``; ``start(raw=...)``
    serves ``raw`` bytes as the body; ``serial_delay_s`` answers one request at a time, each taking
    that long (as llama-cpp-python's server does). Returns the /v1 URL; ``start.server.requests``
    counts POSTs and ``start.server.hosts`` collects their Host headers."""
    servers: list[ThreadingHTTPServer] = []

    def start(content: str | None = None, raw: bytes | None = None, serial_delay_s: float | None = None) -> str:
        body = raw if raw is not None else chat_completion_body(content or "")
        one_at_a_time = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with one_at_a_time if serial_delay_s else contextlib.nullcontext():
                    server.requests += 1
                    server.hosts.add(self.headers["host"])
                    if serial_delay_s:
                        time.sleep(serial_delay_s)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.requests, server.hosts = 0, set()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        start.server = server
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class ScriptedServer:
    """``with ScriptedServer(*replies) as server``: POST n gets ``replies[n]`` (the last one repeats):
    a str is served as a chat completion's content, an int as that HTTP status with an OpenAI error
    body. ``server.bodies`` / ``server.headers`` (lowercased names) hold what each POST sent; ``server.url`` is the /v1 URL."""

    def __init__(self, *replies: str | int):
        self.replies, self.bodies, self.headers = list(replies), [], []
        lock, script = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with lock:
                    script.bodies.append(body)
                    script.headers.append({k.lower(): v for k, v in self.headers.items()})
                    reply = script.replies[min(len(script.bodies), len(script.replies)) - 1]
                status = reply if isinstance(reply, int) else 200
                error = {"error": {"message": f"scripted HTTP {status}", "type": "server_error", "code": status}}
                data = chat_completion_body(reply) if isinstance(reply, str) else json.dumps(error).encode()
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


def chat_completion_body(content: str) -> bytes:
    """An OpenAI chat-completion envelope around ``content`` (the envelope is fine; the content may not be)."""
    return json.dumps({
        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }).encode()  # fmt: skip
