"""A scripted fake of OpenAI's Files and Batches endpoints (and chat completions, for the synchronous
path on the same replies), on 127.0.0.1, for the Batch API tests (issue #22).

``reply(body) -> str | int``: the chat-completion content for a request body, or an HTTP status that
the request fails with (a failed line in a batch). A batch ends ``delay_s`` seconds after it was
created; ``outcomes`` scripts how batch n ends ("completed" by default, "expired": half its lines
answered, the rest in the error file as batch_expired, "failed": refused as a whole, "cancelled").
``host="127.0.0.2"`` serves on a loopback address the config does not count as local, so calls are priced.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fixtures_llm import chat_completion_body

Reply = Callable[[dict[str, Any]], "str | int"]


def echo_reply(body: dict[str, Any]) -> str:
    """A deterministic reply naming the request's last message (enough for cache and accounting tests)."""
    return json.dumps({"answer": body["messages"][-1]["content"][:40]})


def kb_teacher_reply(body: dict[str, Any]) -> str:
    """A teacher that passes kdflow's gate on the built-in knowledge base, by the schema asked for: a
    question naming the passage's first words (QuestionDraft), the first passage's first sentence as the
    reference (ReferenceDraft); anything else gets a generic JSON answer. Deterministic: the synchronous
    and the batched path get the same replies."""
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
    asked = body["messages"][-1]["content"]
    if schema == "QuestionDraft":
        text = asked.split(":\n", 1)[-1]
        words = re.sub(r"[^A-Za-z0-9 ]", " ", text).split()[:8]
        return json.dumps({"question": f"What does the documentation say about {' '.join(words)}?"})
    if schema == "ReferenceDraft":
        passage = asked.split("[1] ", 1)[-1].split("\n\n", 1)[0]
        return json.dumps({"answer": re.split(r"(?<=[.!?])\s", passage, maxsplit=1)[0]})
    return json.dumps({"answer": asked[:40]})


class FakeBatchServer:
    """``with FakeBatchServer(reply) as server``: ``server.url`` is the /v1 URL; ``server.batches`` the
    batches created (dicts, with their ``lines``), ``server.chat_requests`` the synchronous calls."""

    def __init__(self, reply: Reply = echo_reply, *, delay_s: float = 0.0, outcomes: dict[int, str] | None = None,
                 host: str = "127.0.0.1"):
        self.reply, self.delay_s, self.outcomes = reply, delay_s, dict(outcomes or {})
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.chat_requests: list[dict[str, Any]] = []
        self.lock, ids, fake = threading.Lock(), itertools.count(1), self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?")[0].removeprefix("/v1")
                if match := re.fullmatch(r"/files/([\w-]+)/content", path):
                    return self._send(200, fake.files[match[1]], "application/octet-stream")
                if match := re.fullmatch(r"/batches/([\w-]+)", path):
                    return self._json(200, fake.public(fake.settle(match[1])))
                if path == "/batches":
                    data = [fake.public(fake.settle(b)) for b in reversed(list(fake.batches))]
                    return self._json(200, {"object": "list", "data": data, "has_more": False,
                                            "first_id": data[0]["id"] if data else None,
                                            "last_id": data[-1]["id"] if data else None})
                self._json(404, {"error": {"message": f"no route {path}"}})

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?")[0].removeprefix("/v1")
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                if path == "/files":
                    file_id = f"file-{next(ids)}"
                    fake.files[file_id] = _multipart_file(raw, self.headers["content-type"])
                    return self._json(200, {"id": file_id, "object": "file", "bytes": len(fake.files[file_id]),
                                            "created_at": int(time.time()), "filename": "batch.jsonl",
                                            "purpose": "batch", "status": "processed"})
                body = json.loads(raw)
                if path == "/batches":
                    return self._json(200, fake.public(fake.create(f"batch-{next(ids)}", body)))
                if path == "/chat/completions":
                    with fake.lock:
                        fake.chat_requests.append(body)
                    status, data = fake.answer(body)
                    return self._send(status, data, "application/json")
                self._json(404, {"error": {"message": f"no route {path}"}})

            def _json(self, status: int, obj: Any) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json")

            def _send(self, status: int, data: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.http.server_address[1]}/v1"

    def __enter__(self) -> FakeBatchServer:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()

    # -- the fake's state ----------------------------------------------------------------------
    def answer(self, body: dict[str, Any]) -> tuple[int, bytes]:
        reply = self.reply(body)
        if isinstance(reply, int):
            return reply, json.dumps({"error": {"message": f"scripted HTTP {reply}", "type": "server_error"}}).encode()
        return 200, chat_completion_body(reply)

    def create(self, batch_id: str, request: dict[str, Any]) -> dict[str, Any]:
        lines = [json.loads(line) for line in self.files[request["input_file_id"]].decode().splitlines() if line]
        with self.lock:
            number = len(self.batches) + 1
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": request["endpoint"], "status": "in_progress",
                "input_file_id": request["input_file_id"], "completion_window": request["completion_window"],
                "created_at": int(time.time()), "metadata": request.get("metadata") or {},
                "outcome": self.outcomes.get(number, "completed"), "lines": lines, "started": time.monotonic(),
            }
        return self.batches[batch_id]

    def settle(self, batch_id: str) -> dict[str, Any]:
        """End the batch once its delay has passed, writing its output and error files as scripted."""
        with self.lock:
            batch = self.batches[batch_id]
            if batch["status"] != "in_progress" or time.monotonic() - batch["started"] < self.delay_s:
                return batch
            outcome, lines = batch["outcome"], batch["lines"]
            batch["status"] = outcome
            batch[f"{outcome}_at"] = int(time.time())
            if outcome == "failed":
                batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "line": 1,
                                                               "message": "scripted: the input file was refused"}]}
                return batch
            answered = lines if outcome == "completed" else lines[: len(lines) // 2]
            output, errors = [], []
            for line in answered:
                status, data = self.answer(line["body"])
                row = {"id": f"req-{line['custom_id'][:8]}", "custom_id": line["custom_id"], "error": None,
                       "response": {"status_code": status, "request_id": "r", "body": json.loads(data)}}
                (output if status == 200 else errors).append(row)
            code = "batch_expired" if outcome == "expired" else "batch_cancelled"
            errors += [{"id": "req-x", "custom_id": line["custom_id"], "response": None,
                        "error": {"code": code, "message": f"scripted: the batch was {outcome} first"}}
                       for line in lines[len(answered):]]
            for name, rows in (("output_file_id", output), ("error_file_id", errors)):
                if rows:
                    file_id = f"file-{batch_id}-{name[:3]}"
                    self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                    batch[name] = file_id
            return batch

    @staticmethod
    def public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k not in ("outcome", "lines", "started")}

    def submitted(self) -> list[int]:
        """How many lines each batch carried, in creation order."""
        return [len(b["lines"]) for b in self.batches.values()]


def _multipart_file(raw: bytes, content_type: str) -> bytes:
    """The ``file`` part of a multipart/form-data upload."""
    boundary = content_type.split("boundary=")[1].strip('"').encode()
    for part in raw.split(b"--" + boundary):
        head, _, content = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return content.removesuffix(b"\r\n")
    raise ValueError("no file part in the upload")


@pytest.fixture()
def fake_batch_server() -> Iterator[Callable[..., FakeBatchServer]]:
    """``start(reply, delay_s=..., outcomes=...)`` starts a :class:`FakeBatchServer` for the test."""
    servers: list[FakeBatchServer] = []

    def start(reply: Reply = echo_reply, **kw: Any) -> FakeBatchServer:
        servers.append(FakeBatchServer(reply, **kw).__enter__())
        return servers[-1]

    yield start
    for server in servers:
        server.__exit__(None, None, None)
