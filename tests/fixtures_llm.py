"""Fixtures for the teacher/judge tests: ONE real embedded llama.cpp server per session, and a
tiny local HTTP server for the single fault a real server cannot be made to produce on demand
(a reply that is not the JSON asked for)."""

from __future__ import annotations

import json
import threading
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
    serves ``raw`` bytes as the body. Returns the /v1 URL; ``start.server.requests`` counts POSTs."""
    servers: list[ThreadingHTTPServer] = []

    def start(content: str | None = None, raw: bytes | None = None) -> str:
        body = raw if raw is not None else chat_completion_body(content or "")

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                self.rfile.read(int(self.headers.get("content-length", 0)))
                server.requests += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.requests = 0
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        start.server = server
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def chat_completion_body(content: str) -> bytes:
    """An OpenAI chat-completion envelope around ``content`` (the envelope is fine; the content may not be)."""
    return json.dumps({
        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }).encode()  # fmt: skip
