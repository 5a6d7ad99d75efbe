"""Benchmark section ``teacher_server``: the embedded teacher's server layouts side by side.

* ``pool``: what kdflow ran before issue 17, two ``llama_cpp.server`` processes of one thread each
  (llama-cpp-python answers one request at a time, so concurrency 2 needs two processes);
* ``llama_server``: llama.cpp's own server, one process with the same two threads and
  ``teacher.embedded_slots`` slots decoding the concurrent requests together;
* ``llama_server_per_core``: one llama-server of one thread per core, the slots split between them
  (``teacher.embedded_servers`` = cores, ``embedded_threads`` = 1): a llama-server samples its slots
  one after another on one thread, so this tests whether the judge's grammar-constrained sampling
  gains from a second sampling thread (measured: no detectable gain, so it is not the default).

Two workloads, each through the real client (cache + replica transports, an empty cache each time):
free-text reference calls, and RAGAS answer-relevancy judge calls with the JSON schema the judge
sends (grammar-constrained sampling; its cost per token: section judge_output). Each round measures every layout back
to back; the ratios of the medians are the gains at the same total threads. All layouts stay started
for the whole section, so start-up is not in the numbers.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from kdflow.bench.runner import load_average

if TYPE_CHECKING:
    from kdflow.config import EvaluationConfig

POOL_QUESTIONS = [
    "What does a Service of type ClusterIP do?", "What does a NodePort Service expose?",
    "When is a LoadBalancer Service used?", "What is an ExternalName Service?",
    "What is a headless Service?", "How does a Service select its Pods?",
    "What port range does a NodePort use?", "What is a Service's targetPort?",
    "How do Pods find a Service by DNS?", "What are EndpointSlices?",
    "What does sessionAffinity do?", "What is an Ingress for?",
    "What does externalTrafficPolicy control?", "What is a Service without a selector?",
    "What is a ClusterIP of None?", "How does kube-proxy route Service traffic?",
]
def _timed_round(call: Callable[[Any], int], items: list[Any], concurrency: int) -> dict[str, float]:
    """Run ``call`` (returns completion tokens) over ``items``, ``concurrency`` at once, timed."""
    load, started = load_average(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(call, items))
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "load_avg": load}


def _embedded_client(base_urls: list[str], model: str, cache_dir: str) -> tuple[Any, str]:
    """The real client (cache in ``cache_dir``, replica transports) for embedded servers at ``base_urls``,
    and the model name to ask for."""
    from kdflow.llm import Endpoint, UsageLedger, make_client
    from kdflow.llm.server import EMBEDDED_STRUCTURED_OUTPUT
    from kdflow.store import ArtifactStore

    endpoint = Endpoint(base_urls[0], model, "sk-no-key-required", EMBEDDED_STRUCTURED_OUTPUT, tuple(base_urls[1:]))
    return make_client(endpoint, ArtifactStore(cache_dir), UsageLedger(), task="bench"), endpoint.model


def _reference_call(client: Any, model: str, max_tokens: int) -> Callable[[Any], int]:
    def call(messages: Any) -> int:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0.0)
        return reply.usage.completion_tokens

    return call


def _judge_prompts(kb: Any, answers: int) -> list[str]:
    """RAGAS answer-relevancy prompts as the judge sends them; the "answers" are the first sentences
    of knowledge-base passages."""
    from ragas.metrics.collections.answer_relevancy.util import AnswerRelevanceInput, AnswerRelevancePrompt

    from kdflow.evaluation.judge import ragas_environment

    ragas_environment()
    prompt = AnswerRelevancePrompt()
    return [prompt.to_string(AnswerRelevanceInput(response=" ".join(p.text.split(". ")[:2])))
            for p in kb.passages[:answers]]


def _judge_call(client: Any, model: str, cfg: EvaluationConfig, constrained: bool = True) -> Callable[[str], int]:
    """One answer's score: ``relevancy_strictness`` draws of the same prompt one after another (ragas
    awaits them in a loop), seeded per draw, with the judge's sampling settings and JSON schema
    (``constrained=False``: no ``response_format``, so no grammar; only for timing the decoding)."""
    from ragas.metrics.collections.answer_relevancy.util import AnswerRelevanceOutput

    schema = ({"response_format": {"type": "json_object", "schema": AnswerRelevanceOutput.model_json_schema()}}
              if constrained else {})

    def call(prompt: str) -> int:
        tokens = 0
        for draw in range(cfg.relevancy_strictness):
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=cfg.judge_max_tokens,
                temperature=cfg.judge_temperature, top_p=1.0, seed=draw, **schema)
            tokens += reply.usage.completion_tokens
        return tokens

    return call


def teacher_servers(repeats: int = 3, calls: int = 16, threads: int = 2, slots: int = 8,
                    max_tokens: int = 48, judge_answers: int = 16) -> dict[str, Any]:
    """Seconds for ``calls`` reference calls and for ``judge_answers`` x ``evaluation.relevancy_strictness``
    judge calls on each layout
    of ``threads`` threads in all: a pool of one-thread llama-cpp-python servers (concurrency
    ``threads``), one llama-server of ``threads`` threads and ``slots`` slots, and ``threads``
    llama-servers of one thread sharing the ``slots`` (concurrency ``slots`` for both)."""
    from contextlib import ExitStack

    from kdflow.config import load_config
    from kdflow.kb import load_from_config
    from kdflow.llm.server import ServerPlan, embedded_servers, packaged_gguf
    from kdflow.teacher.references import reference_messages

    config = load_config(environ={})
    kb = load_from_config(config)
    passages = [p for p in kb.passages if p.topic == "services"][:3]
    judge_prompts = _judge_prompts(kb, judge_answers)
    gguf = packaged_gguf()
    setups = {
        "pool": (ServerPlan(gguf, "llama_cpp_python", processes=threads, threads=1), threads),
        "llama_server": (ServerPlan(gguf, "llama_server", processes=1, threads=threads, slots=slots), slots),
        "llama_server_per_core": (ServerPlan(gguf, "llama_server", processes=threads, threads=1,
                                             slots=max(1, slots // threads)), slots),
    }
    workloads = ("references", "judge")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {w: {name: [] for name in setups} for w in workloads}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(embedded_servers(plan)).base_urls for name, (plan, _) in setups.items()}
        for round_ in range(repeats):
            for name, (_, concurrency) in setups.items():
                with tempfile.TemporaryDirectory(prefix="kdflow-bench-server-") as cache:
                    client, model = _embedded_client(urls[name], gguf.stem, cache)
                    prompts = [reference_messages(kb.name, f"{q} (round {round_})", passages)
                               for q in POOL_QUESTIONS[:calls]]
                    runs["references"][name].append(
                        _timed_round(_reference_call(client, model, max_tokens), prompts, concurrency))
                    runs["judge"][name].append(
                        _timed_round(_judge_call(client, model, config.evaluation),
                                     [f"{prompt}\n(round {round_})" for prompt in judge_prompts], concurrency))
    judge_calls = len(judge_prompts) * config.evaluation.relevancy_strictness
    result: dict[str, Any] = {"calls_per_round": calls, "judge_calls_per_round": judge_calls, "threads": threads,
                              "slots": slots, "max_tokens": max_tokens, "repeats": repeats, "by_workload": {}}
    for workload, by_server in runs.items():
        medians = {name: statistics.median(r["seconds"] for r in rows) for name, rows in by_server.items()}
        result["by_workload"][workload] = {
            "by_server": {name: {"median_s": round(medians[name], 2), "concurrency": setups[name][1],
                                 "processes": setups[name][0].processes, "threads": setups[name][0].threads,
                                 "runs": rows} for name, rows in by_server.items()},
            "per_core_over_single": round(medians["llama_server"] / medians["llama_server_per_core"], 2),
            "per_core_over_pool": round(medians["pool"] / medians["llama_server_per_core"], 2),
        }
    return result
