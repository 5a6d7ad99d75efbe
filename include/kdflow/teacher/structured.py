"""JSON replies that match a pydantic schema, from any OpenAI-compatible endpoint.

The request form follows the endpoint's capability (``Endpoint.structured_output``); the reply is
validated with pydantic and, when it does not fit, asked for again with the validation error fed
back (except a reply cut at max_tokens: the same budget would cut it again). If every attempt
fails, the replies stay cached, so a rerun replays them and decides the same way (see README
"Cache eviction" to ask afresh).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kdflow.llm.client import LLMError, api_error, json_response_format
from kdflow.llm.profiles import request_params
from kdflow.llm.server import Endpoint

ModelT = TypeVar("ModelT", bound=BaseModel)


class UnusableReplyError(LLMError):
    """The endpoint answered, but no reply fit the schema within the attempts: a bad draft, which a
    caller may count as such, unlike an endpoint that is down or refuses (plain :class:`LLMError`).
    ``reason`` says why without naming the endpoint: a caller that stores it in a checkpoint keeps the
    checkpoint the same when a rerun reaches the same endpoint at another address (a new local port)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _short_error(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors()[:3])
    return str(exc)[:300]


def _with_schema_hint(messages: list[dict[str, str]], schema: type[BaseModel]) -> list[dict[str, str]]:
    """Plain json_object mode cannot carry a schema: describe it in the prompt instead."""
    hint = f"Reply with a JSON object only, matching this JSON schema: {json.dumps(schema.model_json_schema())}"
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n{hint}"}, *messages[1:]]
    return [{"role": "system", "content": hint}, *messages]


def complete_json(
    client: Any,
    endpoint: Endpoint,
    messages: Sequence[dict[str, str]],
    schema: type[ModelT],
    *,
    temperature: float,
    max_tokens: int,
    attempts: int = 3,
    seed: int | None = None,
) -> ModelT:
    """Ask ``endpoint`` for JSON matching ``schema``; retry with the error fed back; raise
    :class:`LLMError` naming the schema and the last error after ``attempts`` tries. ``temperature``
    and ``max_tokens`` (the reply's budget) go out in the model's form (``endpoint.style``: a
    reasoning model gets ``max_completion_tokens`` and no temperature); an endpoint that refuses the
    model or a parameter raises :class:`kdflow.llm.client.EndpointConfigError` at once."""
    import openai

    conversation = list(messages)
    if endpoint.structured_output == "json_object":
        conversation = _with_schema_hint(conversation, schema)
    extra = {} if seed is None else {"seed": seed}
    sampling = request_params(endpoint.style, temperature=temperature, max_tokens=max_tokens)
    budget = f"{endpoint.style.token_param}={sampling[endpoint.style.token_param]}"
    last_error = "no attempt made"
    tried = 0
    while tried < max(1, attempts):
        tried += 1
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=endpoint.model,
                messages=conversation,
                response_format=json_response_format(schema, endpoint.structured_output),
                **sampling,
                **extra,
            )
            completion = raw.parse()
        except openai.APIError as exc:
            raise api_error(exc, endpoint) from None
        except ValueError as exc:  # a 200 whose body is not JSON (a proxy's error page, a non-OpenAI server)
            raise LLMError(f"teacher endpoint {endpoint.label} sent a reply that is not a chat completion: "
                           f"{exc}") from None
        choice = completion.choices[0] if completion.choices else None
        content = (choice.message.content or "") if choice else ""
        try:
            if choice is None or not content.strip():
                refusal = getattr(choice.message, "refusal", None) if choice else None
                raise ValueError(f"empty reply{f' (refusal: {refusal})' if refusal else ''}")
            # strict=False: small models put raw newlines inside strings; that is not worth a retry
            return schema.model_validate(json.loads(content, strict=False))
        except (ValidationError, ValueError) as exc:
            last_error = _short_error(exc)
            if choice is not None and choice.finish_reason == "length":
                # Asking again under the same budget gets another cut reply (a small model looping,
                # or an answer too long for max_tokens), at the highest price of any attempt.
                last_error += f" (reply cut at {budget}; not asked again)"
                break
        conversation = [
            *conversation,
            {"role": "assistant", "content": content},
            {"role": "user",
             "content": f"That reply was not valid: {last_error}. Reply again with only the corrected JSON."},
        ]
    # The failed replies stay cached: a rerun replays the same drafts and reaches the same decision
    # (asking again would not be reproducible: llama.cpp's output depends on its KV-cache state).
    attempts = f"{tried} attempt{'s' if tried > 1 else ''}"
    reason = f"no valid {schema.__name__} JSON after {attempts}; last error: {last_error}"
    raise UnusableReplyError(f"teacher endpoint {endpoint.label} gave {reason}", reason=reason)
