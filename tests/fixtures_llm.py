"""Fixtures for the teacher/judge tests: ONE real embedded llama.cpp server per session, and a
tiny scripted local HTTP server for the faults a real server cannot be made to produce on demand
(a reply that is not the JSON asked for, rate limits and 5xx, a rejected key, and OpenAI's own
answers to an unknown model, a refused parameter or a schema strict mode does not accept)."""

from __future__ import annotations

import contextlib
import json
import re
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


def chat_completion_body(content: str, finish_reason: str = "stop") -> bytes:
    """An OpenAI chat-completion envelope around ``content`` (the envelope is fine; the content may not be);
    ``finish_reason="length"`` is a reply cut at max_tokens."""
    return json.dumps({
        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }).encode()


# -- OpenAI's own replies ------------------------------------------------------------------------------
# What api.openai.com answers for a model it does not serve and for parameters a model refuses, body for
# body (the error envelopes users report from the API), and the strict structured-outputs rules it
# enforces on a json_schema response_format. Used by test_llm_errors.py, test_llm_profiles.py and
# test_llm_strict_schemas.py through :class:`OpenAIRules`.

def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> tuple[int, bytes]:
    return status, json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def model_not_found(model: str) -> tuple[int, bytes]:
    return openai_error(404, f"The model `{model}` does not exist or you do not have access to it.",
                        code="model_not_found")


def unsupported_parameter(param: str, instead: str | None = None) -> tuple[int, bytes]:
    use = f" Use '{instead}' instead." if instead else ""
    return openai_error(400, f"Unsupported parameter: '{param}' is not supported with this model.{use}", param=param,
                        code="unsupported_parameter")


def unsupported_value(param: str, value: object) -> tuple[int, bytes]:
    return openai_error(400, f"Unsupported value: '{param}' does not support {value} with this model. Only the "
                        "default (1) value is supported.", param=param, code="unsupported_value")


# OpenAI's "Supported schemas" (structured outputs guide): the keywords strict mode accepts, by type.
STRICT_CORE = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "$defs",
               "$ref", "description"}
STRICT_BY_TYPE = {"string": {"pattern", "format"},
                  "number": {"multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"},
                  "integer": {"multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"},
                  "array": {"minItems", "maxItems"}}
STRICT_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
STRICT_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
STRICT_MAX_DEPTH = 10  # "up to 10 levels of nesting"
SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def strict_problems(response_format: dict) -> list[str]:
    """Why OpenAI would refuse ``response_format`` as a strict json_schema (empty: it accepts it).
    Written from OpenAI's structured-outputs documentation, independently of kdflow's own rewriting."""
    if response_format.get("type") != "json_schema":
        return [f"response_format type is {response_format.get('type')!r}, not json_schema"]
    envelope = response_format.get("json_schema") or {}
    name, schema = envelope.get("name", ""), envelope.get("schema")
    problems = [] if SCHEMA_NAME.match(name) else [f"name {name!r} is not 1-64 of a-z, A-Z, 0-9, _ or -"]
    if envelope.get("strict") is not True:
        problems.append("strict is not true (the schema would be a hint, not enforced)")
    if not isinstance(schema, dict):
        return [*problems, "no schema"]
    if schema.get("type") != "object" or "anyOf" in schema:
        problems.append("the root is not an object (or is an anyOf)")
    definitions = schema.get("$defs", {})

    def visit(node: object, path: str, depth: int) -> None:
        if depth > STRICT_MAX_DEPTH:
            problems.append(f"{path}: more than {STRICT_MAX_DEPTH} levels of nesting")
        if not isinstance(node, dict):
            problems.append(f"{path}: not a schema object")
            return
        if "$ref" in node:
            target = str(node["$ref"]).removeprefix("#/$defs/")
            if len(node) > 1:
                problems.append(f"{path}: $ref with sibling keywords {sorted(set(node) - {'$ref'})}")
            if node["$ref"] == target or target not in definitions:
                problems.append(f"{path}: $ref {node['$ref']!r} is not a #/$defs/ entry")
            return
        types = node.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        allowed = STRICT_CORE.union(*(STRICT_BY_TYPE.get(t, set()) for t in types))
        if unknown := sorted(set(node) - allowed):
            problems.append(f"{path}: keywords strict mode does not accept here: {unknown}")
        if bad := [t for t in types if t not in STRICT_TYPES]:
            problems.append(f"{path}: types {bad}")
        if not types and not ({"anyOf", "enum", "const"} & set(node)):
            problems.append(f"{path}: no type")
        if "format" in node and node["format"] not in STRICT_FORMATS:
            problems.append(f"{path}: format {node['format']!r} is not supported")
        if "object" in types or "properties" in node:
            properties = node.get("properties")
            if not isinstance(properties, dict):
                problems.append(f"{path}: an object without properties")
                properties = {}
            if node.get("additionalProperties") is not False:
                problems.append(f"{path}: additionalProperties is not false")
            if sorted(node.get("required", [])) != sorted(properties):
                problems.append(f"{path}: required {node.get('required')} is not every property {list(properties)}")
            for key, sub in properties.items():
                visit(sub, f"{path}.properties.{key}", depth + 1)
        if "array" in types:
            if "items" not in node:
                problems.append(f"{path}: an array without items")
            else:
                visit(node["items"], f"{path}.items", depth + 1)
        for i, sub in enumerate(node.get("anyOf", [])):
            visit(sub, f"{path}.anyOf[{i}]", depth)
        if "enum" in node and not node["enum"]:
            problems.append(f"{path}: empty enum")

    visit(schema, "schema", 1)
    for key, sub in definitions.items():
        visit(sub, f"$defs.{key}", 1)
    return problems


# Strings that fit the teacher's schemas (QuestionDraft's pattern wants one interrogative sentence).
SAMPLE_STRINGS = ("What does the kubelet do when a container fails its liveness probe?",
                  "A Pod is the smallest deployable unit of computing in Kubernetes.")


def example_for(schema: dict, node: dict | None = None) -> object:
    """A value that fits ``node`` (default: ``schema`` itself), for a scripted reply to a structured request."""
    node = schema if node is None else node
    if "$ref" in node:
        return example_for(schema, schema["$defs"][node["$ref"].rsplit("/", 1)[-1]])
    if "allOf" in node:
        return example_for(schema, node["allOf"][0])
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return node["enum"][0]
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"] or node["anyOf"]
        return example_for(schema, options[0])
    kind = node.get("type", "object")
    kind = next((t for t in kind if t != "null"), "null") if isinstance(kind, list) else kind
    if kind == "object" or "properties" in node:
        return {key: example_for(schema, sub) for key, sub in node.get("properties", {}).items()}
    if kind == "array":
        return [example_for(schema, node.get("items", {"type": "string"}))
                for _ in range(max(1, node.get("minItems", 1)))]
    if kind == "string":
        pattern = node.get("pattern")
        return next((s for s in SAMPLE_STRINGS if pattern is None or re.search(pattern, s)), SAMPLE_STRINGS[0])
    return {"integer": 1, "number": 1.0, "boolean": True, "null": None}[kind]


def schema_of(body: dict) -> dict | None:
    """The JSON schema a chat-completion request asks for, in any of kdflow's three forms."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["schema"]
    return fmt.get("schema")


class OpenAIRules:
    """A scripted reply (for :class:`ScriptedServer`) that answers like api.openai.com: HTTP 404
    ``model_not_found`` for a model it does not serve; for a reasoning model, HTTP 400
    ``unsupported_parameter`` on ``max_tokens`` or ``top_p`` and ``unsupported_value`` on a
    ``temperature`` other than 1; for a chat model, ``unsupported_parameter`` on ``reasoning_effort``;
    HTTP 400 ``invalid_json_schema`` for a json_schema that breaks the strict rules
    (:func:`strict_problems`). Anything else gets a completion whose content fits the requested schema
    (``content(body)`` when given). ``models`` maps a served model to ``"chat"`` or ``"reasoning"``."""

    def __init__(self, models: dict[str, str], content: Callable[[dict], str] | None = None):
        self.models, self.content = models, content

    def __call__(self, body: dict) -> str | tuple[int, bytes]:
        model = body.get("model", "")
        kind = self.models.get(model)
        if kind is None:
            return model_not_found(model)
        if kind == "reasoning":
            if "max_tokens" in body:
                return unsupported_parameter("max_tokens", "max_completion_tokens")
            if body.get("temperature", 1) != 1:
                return unsupported_value("temperature", body["temperature"])
            if "top_p" in body:
                return unsupported_parameter("top_p")
        elif "reasoning_effort" in body:
            return unsupported_parameter("reasoning_effort")
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema" and (problems := strict_problems(fmt)):
            name = (fmt.get("json_schema") or {}).get("name")
            return openai_error(400, f"Invalid schema for response_format '{name}': {problems[0]}",
                                param="response_format", code="invalid_json_schema")
        if self.content is not None:
            return self.content(body)
        schema = schema_of(body)
        return json.dumps(example_for(schema) if schema else {"answer": SAMPLE_STRINGS[1]})
