"""openai clients for any OpenAI-compatible endpoint, with the cache/usage transport underneath.

Retries of 429/5xx/timeouts are the openai client's own (exponential backoff with jitter,
bounded by ``max_retries``); each retry passes through the transport, so it is counted and
never cached. :func:`explain_api_error` turns the client's exceptions into one-line messages.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from kdflow.llm.batch import AsyncHoldingTransport, HoldingTransport
from kdflow.llm.cache import AsyncCachingTransport, CachingTransport, UsageLedger
from kdflow.llm.profiles import STRUCTURED_OUTPUT_MODES, current_models, fix_for_param
from kdflow.llm.replicas import AsyncReplicaTransport, ReplicaTransport
from kdflow.llm.server import Endpoint
from kdflow.llm.strict_schema import strict_schema
from kdflow.store import ArtifactStore

if TYPE_CHECKING:
    import openai

__all__ = ["STRUCTURED_OUTPUT_MODES", "EndpointConfigError", "LLMError", "api_error", "explain_api_error",
           "find_config_error", "json_response_format", "make_client"]


class LLMError(RuntimeError):
    """A teacher/judge call failed for good (endpoint down, timeout, refused, unusable output)."""


class EndpointConfigError(LLMError):
    """The endpoint refused the model or a parameter (HTTP 404 model not found, HTTP 400 unsupported
    parameter or value): the configuration must change, so retrying the task cannot help."""


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


def json_response_format(schema: type[BaseModel], mode: str) -> dict[str, Any]:
    """The ``response_format`` the endpoint supports for JSON matching ``schema``:
    ``json_schema`` (OpenAI structured outputs), ``json_object_schema`` (llama-cpp-python's
    grammar-constrained form) or plain ``json_object`` (shape then comes from the prompt)."""
    if mode == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": strict_schema(schema.model_json_schema()),
                                "strict": True}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema.model_json_schema()}
    if mode == "json_object":
        return {"type": "json_object"}
    raise ValueError(f"unknown structured_output mode {mode!r}; use one of {', '.join(STRUCTURED_OUTPUT_MODES)}")


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


_QUOTED = re.compile(r"'([A-Za-z_][\w.\[\]]*)'")


def config_error_line(exc: Exception, endpoint: Endpoint) -> str | None:
    """The one line for an endpoint that refuses the configured model (HTTP 404) or a parameter kdflow
    sent (HTTP 400 ``unsupported_parameter`` / ``unsupported_value``, or a refused JSON schema), naming
    the model or the parameter and what to set instead; None for any other error."""
    import openai

    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in (400, 404):
        return None
    where, model = endpoint.base_url or "api.openai.com", endpoint.model
    code = str(exc.code) if exc.code not in (None, "") else ""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = _one_line(body.get("message") or exc.message)  # the server's own words, not openai's wrapper
    said = f"HTTP {exc.status_code}{f' {code}' if code and code != str(exc.status_code) else ''}: {message}"
    lowered = message.lower()
    if exc.status_code == 404:
        if code == "model_not_found" or ("model" in lowered and ("not exist" in lowered or "not found" in lowered)):
            if endpoint.base_url is None or "api.openai.com" in endpoint.base_url:
                listed = ", ".join(current_models())
                options = f"one of kdflow's listed current models ({listed}; README 'Choosing a teacher')"
            else:
                options = f"a model it serves (GET {endpoint.base_url}/models lists them)"
            return (f"teacher model {model!r} is not available at {where} ({said}); set teacher.model "
                    f"(KDFLOW__TEACHER__MODEL) to {options}")
        return (f"teacher endpoint {model} at {where} has no chat completions there ({said}); check teacher.base_url "
                "(most servers want it to end in /v1) and teacher.model")
    if code in ("unsupported_parameter", "unsupported_value") or lowered.startswith(("unsupported parameter",
                                                                                   "unsupported value")):
        param = exc.param or next(iter(_QUOTED.findall(message)), None)
        return (f"teacher model {model!r} at {where} refuses the parameter '{param}' ({said}); set "
                f"{fix_for_param(param)}")
    if code == "invalid_json_schema" or "invalid schema for response_format" in lowered:
        return (f"teacher model {model!r} at {where} refused kdflow's JSON schema ({said}); set "
                f"{fix_for_param('response_format')} and report the schema")
    return None


def explain_api_error(exc: Exception, endpoint: Endpoint) -> str:
    """One line saying what went wrong with which endpoint (never the key)."""
    import openai

    where = endpoint.label
    if (line := config_error_line(exc, endpoint)) is not None:
        return line
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


def api_error(exc: Exception, endpoint: Endpoint) -> LLMError:
    """The :class:`LLMError` to raise for an openai client error: an :class:`EndpointConfigError` when
    the endpoint refuses the model or a parameter (the config must change), else a plain one."""
    line = config_error_line(exc, endpoint)
    return EndpointConfigError(line) if line is not None else LLMError(explain_api_error(exc, endpoint))


def find_config_error(exc: BaseException, endpoint: Endpoint) -> EndpointConfigError | None:
    """An endpoint configuration error anywhere in ``exc``'s chain (instructor and ragas wrap the
    openai client's exceptions), as an :class:`EndpointConfigError`; else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, EndpointConfigError):
            return current
        if (line := config_error_line(current, endpoint)) is not None:
            return EndpointConfigError(line)
        todo += [current.__cause__, current.__context__]
        for attempt in getattr(current, "failed_attempts", None) or ():  # instructor's retry history
            todo.append(getattr(attempt, "exception", None))
        todo += [e for e in getattr(current, "exceptions", ()) if isinstance(e, BaseException)]
    return None
