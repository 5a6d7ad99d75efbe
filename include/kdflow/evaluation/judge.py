"""The RAGAS judge: an instructor LLM over the teacher's endpoint, cached like the teacher.

Three details make the judge usable on a small local model and on OpenAI's:

* ``Mode.JSON_SCHEMA`` with the request's ``response_format`` rewritten to what the endpoint
  accepts. llama-cpp-python refuses ``{"type": "json_schema"}`` but grammar-constrains
  ``{"type": "json_object", "schema": ...}`` (ragas' default JSON mode failed 12 of 12 parses
  there; this form parsed 9 of 9).
* The endpoint's request form (:mod:`kdflow.llm.profiles`): a chat model gets the configured
  temperature, ``top_p`` 1.0 and ``max_tokens``; a reasoning model (gpt-5 family, o-series)
  ``max_completion_tokens`` and its ``reasoning_effort`` instead, since it refuses the others. For
  ``json_schema`` endpoints the schema goes out in OpenAI's strict form (``strict: true``).
* A per-draw ``seed``. Answer relevancy asks the judge the *same* prompt ``strictness`` times;
  with identical requests the response cache (keyed by the request body) would replay the first
  draw, and ragas' default temperature 0.01 would make the draws identical anyway. Draw k of a
  score carries ``seed=k`` at the configured temperature, so draws differ, and a rerun replays
  every draw from the cache.
"""

from __future__ import annotations

import contextvars
import os
from typing import Any

from kdflow.config import EvaluationConfig

_draw_counter: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("kdflow_judge_draw", default=None)


def ragas_environment() -> None:
    """Call before importing ragas: no analytics to the vendor ("1" is ignored, only "true" works)
    and no model-hub lookups."""
    os.environ["RAGAS_DO_NOT_TRACK"] = "true"
    os.environ["HF_HUB_OFFLINE"] = "1"


def start_score() -> None:
    """Number the judge draws of one (answer, metric) score from 0; call inside its asyncio task."""
    _draw_counter.set([0])


def _next_seed() -> int:
    counter = _draw_counter.get()
    if counter is None:
        return 0
    counter[0] += 1
    return counter[0] - 1


def _rewrite_response_format(fmt: Any, structured_output: str) -> Any:
    """instructor's ``json_schema`` request in the endpoint's dialect; for ``json_schema`` itself, the
    strict form (every object closed, only the keywords OpenAI's strict mode accepts, ``strict: true``)
    that OpenAI enforces while decoding instead of treating the schema as a hint."""
    if not (isinstance(fmt, dict) and fmt.get("type") == "json_schema"):
        return fmt
    if structured_output == "json_object_schema":
        return {"type": "json_object", "schema": fmt["json_schema"]["schema"]}
    if structured_output == "json_object":
        return {"type": "json_object"}
    from kdflow.llm.strict_schema import strict_schema

    return {"type": "json_schema", "json_schema": {**fmt["json_schema"], "schema": strict_schema(
        fmt["json_schema"]["schema"]), "strict": True}}


def _endpoint_dialect_client(client: Any, structured_output: str) -> Any:
    """A copy of the AsyncOpenAI client whose ``chat.completions.create`` sends the endpoint's
    JSON dialect (instructor requires a real openai client, so the copy keeps its type)."""
    dialect = client.with_options()
    completions = dialect.chat.completions
    original = completions.create

    async def create(*args: Any, **kwargs: Any) -> Any:
        if "response_format" in kwargs:
            kwargs["response_format"] = _rewrite_response_format(kwargs["response_format"], structured_output)
        return await original(*args, **kwargs)

    completions.create = create
    return dialect


def make_judge_llm(cfg: EvaluationConfig, judge: Any, *, store: Any, ledger: Any) -> tuple[Any, Any]:
    """``(ragas LLM, AsyncOpenAI client to close)`` for the judge endpoint ``judge``."""
    ragas_environment()
    import instructor
    from ragas.llms.base import InstructorBaseRagasLLM

    from kdflow.llm.client import make_client
    from kdflow.llm.profiles import request_params

    raw = make_client(judge, store, ledger, task="judge", async_client=True)
    patched = instructor.from_openai(_endpoint_dialect_client(raw, judge.structured_output),
                                     mode=instructor.Mode.JSON_SCHEMA)

    class SeededJudgeLLM(InstructorBaseRagasLLM):
        """ragas' InstructorLLM minus its analytics call, plus the per-draw seed."""

        def __init__(self) -> None:
            self.client, self.model, self.is_async = patched, judge.model, True

        async def agenerate(self, prompt: str, response_model: Any) -> Any:
            return await patched.chat.completions.create(
                model=judge.model,
                messages=[{"role": "user", "content": prompt}],
                response_model=response_model,
                max_retries=cfg.judge_max_retries,
                # a chat model: temperature, top_p 1.0, max_tokens; a reasoning model: its own form
                **request_params(judge.style, temperature=cfg.judge_temperature, max_tokens=cfg.judge_max_tokens,
                                 top_p=1.0),
                seed=_next_seed(),
            )

        def generate(self, prompt: str, response_model: Any) -> Any:
            raise TypeError("the kdflow judge is async only; call the metric's ascore()")

    return SeededJudgeLLM(), raw
