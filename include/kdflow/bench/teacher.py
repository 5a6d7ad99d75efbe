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
sends (grammar-constrained sampling, the judge's whole cost). Each round measures every layout back
to back; the ratios of the medians are the gains at the same total threads. All layouts stay started
for the whole section, so start-up is not in the numbers.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kdflow.bench.runner import load_average

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
JUDGE_DRAWS = 3  # evaluation.relevancy_strictness: the same prompt, one call per draw, draws in sequence


def _timed_round(client: Any, model: str, prompts: list[Any], concurrency: int, max_tokens: int) -> dict[str, float]:
    def call(messages: Any) -> int:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0.0)
        return reply.usage.completion_tokens

    load, started = load_average(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(call, prompts))
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "load_avg": load}


def _judge_calls(kb: Any, answers: int) -> list[tuple[str, int]]:
    """(answer-relevancy prompt, draw) pairs as the judge sends them: ``JUDGE_DRAWS`` draws of each
    answer in sequence; the "answers" are the first sentences of knowledge-base passages."""
    from ragas.metrics.collections.answer_relevancy.util import AnswerRelevanceInput, AnswerRelevancePrompt

    from kdflow.evaluation.judge import ragas_environment

    ragas_environment()
    prompt = AnswerRelevancePrompt()
    texts = [" ".join(p.text.split(". ")[:2]) for p in kb.passages[:answers]]
    return [(prompt.to_string(AnswerRelevanceInput(response=text)), draw)
            for text in texts for draw in range(JUDGE_DRAWS)]


def _judge_round(client: Any, model: str, calls: list[tuple[str, int]], concurrency: int) -> dict[str, float]:
    """Each answer's draws one after another (ragas awaits them in a loop), ``concurrency`` answers at once."""
    from ragas.metrics.collections.answer_relevancy.util import AnswerRelevanceOutput

    schema = {"type": "json_object", "schema": AnswerRelevanceOutput.model_json_schema()}
    by_answer: dict[str, list[int]] = {}
    for prompt, draw in calls:
        by_answer.setdefault(prompt, []).append(draw)

    def score(item: tuple[str, list[int]]) -> int:
        prompt, draws = item
        tokens = 0
        for draw in draws:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                   max_tokens=256, temperature=0.7, top_p=1.0, seed=draw,
                                                   response_format=schema)
            tokens += reply.usage.completion_tokens
        return tokens

    load, started = load_average(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(score, by_answer.items()))
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "load_avg": load}


def teacher_servers(repeats: int = 3, calls: int = 16, threads: int = 2, slots: int = 8,
                    max_tokens: int = 48, judge_answers: int = 16) -> dict[str, Any]:
    """Seconds for ``calls`` reference calls and for ``judge_answers`` x 3 judge calls on each layout
    of ``threads`` threads in all: a pool of one-thread llama-cpp-python servers (concurrency
    ``threads``), one llama-server of ``threads`` threads and ``slots`` slots, and ``threads``
    llama-servers of one thread sharing the ``slots`` (concurrency ``slots`` for both)."""
    from contextlib import ExitStack

    from kdflow.config import load_config
    from kdflow.kb import load_from_config
    from kdflow.llm import Endpoint, UsageLedger, make_client
    from kdflow.llm.server import EMBEDDED_STRUCTURED_OUTPUT, ServerPlan, embedded_servers, packaged_gguf
    from kdflow.store import ArtifactStore
    from kdflow.teacher.references import reference_messages

    kb = load_from_config(load_config(environ={}))
    passages = [p for p in kb.passages if p.topic == "services"][:3]
    judge_calls = _judge_calls(kb, judge_answers)
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
                endpoint = Endpoint(urls[name][0], gguf.stem, "sk-no-key-required", EMBEDDED_STRUCTURED_OUTPUT,
                                    tuple(urls[name][1:]))
                with tempfile.TemporaryDirectory(prefix="kdflow-bench-server-") as cache:
                    client = make_client(endpoint, ArtifactStore(cache), UsageLedger(), task="bench")
                    prompts = [reference_messages(kb.name, f"{q} (round {round_})", passages)
                               for q in POOL_QUESTIONS[:calls]]
                    runs["references"][name].append(_timed_round(client, endpoint.model, prompts, concurrency,
                                                                 max_tokens))
                    seeded = [(f"{prompt}\n(round {round_})", draw) for prompt, draw in judge_calls]
                    runs["judge"][name].append(_judge_round(client, endpoint.model, seeded, concurrency))
    result: dict[str, Any] = {"calls_per_round": calls, "judge_calls_per_round": len(judge_calls), "threads": threads,
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
