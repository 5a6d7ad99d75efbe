"""Benchmark section ``teacher_server``: the embedded teacher's two servers side by side.

* ``pool``: what kdflow ran before issue 17, two ``llama_cpp.server`` processes of one thread each
  (llama-cpp-python answers one request at a time, so concurrency 2 needs two processes);
* ``llama_server``: llama.cpp's own server, one process with the same two threads and
  ``teacher.embedded_slots`` slots decoding the concurrent requests together.

Each round sends the same reference calls through the real client (cache + replica transports,
an empty cache each time) to both, back to back; the ratio of the medians is the gain at the same
total threads. Both stay started for the whole section, so start-up is not in the numbers.
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


def teacher_servers(repeats: int = 3, calls: int = 16, threads: int = 2, slots: int = 8,
                    max_tokens: int = 48) -> dict[str, Any]:
    """Seconds for ``calls`` reference calls: a pool of ``threads`` one-thread llama-cpp-python servers at
    concurrency ``threads`` vs one llama-server of ``threads`` threads and ``slots`` slots at concurrency ``slots``."""
    from contextlib import ExitStack

    from kdflow.config import load_config
    from kdflow.kb import load_from_config
    from kdflow.llm import Endpoint, UsageLedger, make_client
    from kdflow.llm.server import EMBEDDED_STRUCTURED_OUTPUT, ServerPlan, embedded_servers, packaged_gguf
    from kdflow.store import ArtifactStore
    from kdflow.teacher.references import reference_messages

    kb = load_from_config(load_config(environ={}))
    passages = [p for p in kb.passages if p.topic == "services"][:3]
    gguf = packaged_gguf()
    setups = {
        "pool": (ServerPlan(gguf, "llama_cpp_python", processes=threads, threads=1), threads),
        "llama_server": (ServerPlan(gguf, "llama_server", processes=1, threads=threads, slots=slots), slots),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
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
                    runs[name].append(_timed_round(client, endpoint.model, prompts, concurrency, max_tokens))
    medians = {name: statistics.median(r["seconds"] for r in rows) for name, rows in runs.items()}
    return {
        "calls_per_round": calls, "threads": threads, "slots": slots, "max_tokens": max_tokens, "repeats": repeats,
        "by_server": {name: {"median_s": round(medians[name], 2), "concurrency": setups[name][1],
                             "processes": setups[name][0].processes, "runs": rows} for name, rows in runs.items()},
        "speedup": round(medians["pool"] / medians["llama_server"], 2),
    }
