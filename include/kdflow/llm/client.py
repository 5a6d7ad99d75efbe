"""openai clients for any OpenAI-compatible endpoint, with the cache/usage transport underneath.

Retries of 429/5xx/timeouts are the openai client's own (exponential backoff with jitter,
bounded by ``max_retries``); each retry passes through the transport, so it is counted and
never cached. :func:`explain_api_error` turns the client's exceptions into one-line messages.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from kdflow.llm.batch import AsyncHoldingTransport, HoldingTransport
from kdflow.llm.cache import AsyncCachingTransport, CachingTransport, UsageLedger
from kdflow.llm.replicas import AsyncReplicaTransport, ReplicaTransport
from kdflow.llm.server import Endpoint
from kdflow.store import ArtifactStore

if TYPE_CHECKING:
    import openai

STRUCTURED_OUTPUT_MODES = ("json_schema", "json_object_schema", "json_object")


class LLMError(RuntimeError):
    """A teacher/judge call failed for good (endpoint down, timeout, refused, unusable output)."""


def make_client(
    endpoint: Endpoint,
    store: ArtifactStore,
    ledger: UsageLedger,
    *,
    task: str,
    async_client: bool = False,
    timeout_s: float = 120,
    max_retries: int = 4,
) -> openai.OpenAI | openai.AsyncOpenAI:
    """A sync (teacher) or async (RAGAS judge) openai client whose responses are cached in
    ``store`` and whose usage is counted in ``ledger`` under ``task``; cache misses start the
    endpoint's server if it waits for them (``endpoint.ensure_ready``) and are spread over the
    endpoint's replicas when it has any. While a batch round holds requests (:func:`kdflow.llm.batch.holding`),
    misses are held for the batch instead of sent."""
    import openai

    common = {"base_url": endpoint.base_url, "api_key": endpoint.api_key, "timeout": timeout_s,
              "max_retries": max_retries}
    urls = (endpoint.base_url, *endpoint.replicas) if endpoint.replicas and endpoint.base_url else ()
    if async_client:
        inner = AsyncHoldingTransport(AsyncReplicaTransport(urls) if urls else None)
        http = openai.DefaultAsyncHttpxClient(
            transport=AsyncCachingTransport(store, ledger, task, inner, before_forward=endpoint.ensure_ready))
        client = openai.AsyncOpenAI(http_client=http, **common)
    else:
        replicas = HoldingTransport(ReplicaTransport(urls) if urls else None)
        http = openai.DefaultHttpxClient(
            transport=CachingTransport(store, ledger, task, replicas, before_forward=endpoint.ensure_ready))
        client = openai.OpenAI(http_client=http, **common)
    return client


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI strict structured outputs want every object closed and every property required."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
                node["required"] = list(node["properties"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def json_response_format(schema: type[BaseModel], mode: str) -> dict[str, Any]:
    """The ``response_format`` the endpoint supports for JSON matching ``schema``:
    ``json_schema`` (OpenAI structured outputs), ``json_object_schema`` (llama-cpp-python's
    grammar-constrained form) or plain ``json_object`` (shape then comes from the prompt)."""
    if mode == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": _strict(schema.model_json_schema()), "strict": True}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema.model_json_schema()}
    if mode == "json_object":
        return {"type": "json_object"}
    raise ValueError(f"unknown structured_output mode {mode!r}; use one of {', '.join(STRUCTURED_OUTPUT_MODES)}")


def explain_api_error(exc: Exception, endpoint: Endpoint) -> str:
    """One line saying what went wrong with which endpoint (never the key)."""
    import openai

    where = endpoint.label
    if isinstance(exc, openai.APITimeoutError):
        return f"teacher endpoint {where} timed out (raise teacher.timeout_s or lower teacher.max_tokens)"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return f"cannot reach teacher endpoint {where}: {type(cause).__name__}: {cause}"
    if isinstance(exc, openai.AuthenticationError):
        return f"teacher endpoint {where} rejected the API key (HTTP 401); check the key variable"
    if isinstance(exc, openai.APIStatusError):
        return f"teacher endpoint {where} answered HTTP {exc.status_code}: {str(exc.message)[:300]}"
    if isinstance(exc, openai.APIResponseValidationError):
        return f"teacher endpoint {where} sent a response that is not a valid chat completion: {exc}"
    return f"teacher endpoint {where} failed: {type(exc).__name__}: {exc}"
