"""Benchmark section ``teacher_pool``: the embedded teacher with one llama.cpp server vs a pool.

llama-cpp-python's server answers one request at a time, so the teacher's and the judge's bounded
concurrency only helps with several single-thread servers (``teacher.embedded_servers``). Each
round sends the same calls through the real client (cache + replica transports, an empty cache
each time) to a pool of 1 and of N servers back to back; the ratio of the medians is the gain.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

CALLS_PER_ROUND = 6
POOL_QUESTIONS = [
    "What does a Service of type ClusterIP do?", "What does a NodePort Service expose?",
    "When is a LoadBalancer Service used?", "What is an ExternalName Service?",
    "What is a headless Service?", "How does a Service select its Pods?",
]


def _timed_round(client: Any, model: str, prompts: list[Any], concurrency: int, max_tokens: int) -> dict[str, float]:
    def call(messages: Any) -> int:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0.0)
        return reply.usage.completion_tokens

    load, started = round(os.getloadavg()[0], 2), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(call, prompts))
    return {"seconds": round(time.perf_counter() - started, 2), "tokens": tokens, "load_avg": load}


def teacher_pool(repeats: int = 3, servers: int = 2, concurrency: int = 2, max_tokens: int = 48) -> dict[str, Any]:
    """Seconds for ``CALLS_PER_ROUND`` reference calls at ``concurrency`` against 1 vs ``servers`` servers."""
    from kdflow.config import load_config
    from kdflow.kb import load_from_config
    from kdflow.llm import Endpoint, UsageLedger, make_client
    from kdflow.llm.server import EMBEDDED_STRUCTURED_OUTPUT, embedded_servers, packaged_gguf
    from kdflow.store import ArtifactStore
    from kdflow.teacher.references import reference_messages

    kb = load_from_config(load_config(environ={}))
    passages = [p for p in kb.passages if p.topic == "services"][:3]
    gguf = packaged_gguf()
    runs: dict[int, list[dict[str, float]]] = {1: [], servers: []}
    with embedded_servers(gguf, servers, n_ctx=4096) as urls:
        for round_ in range(repeats):
            for size in runs:
                endpoint = Endpoint(urls[0], gguf.stem, "sk-no-key-required",
                                    EMBEDDED_STRUCTURED_OUTPUT, tuple(urls[1:size]))
                with tempfile.TemporaryDirectory(prefix="kdflow-bench-pool-") as cache:
                    client = make_client(endpoint, ArtifactStore(cache), UsageLedger(), task="bench")
                    prompts = [reference_messages(kb.name, f"{q} (round {round_})", passages)
                               for q in POOL_QUESTIONS[:CALLS_PER_ROUND]]
                    runs[size].append(_timed_round(client, endpoint.model, prompts, concurrency, max_tokens))
    medians = {size: statistics.median(r["seconds"] for r in rows) for size, rows in runs.items()}
    return {
        "calls_per_round": CALLS_PER_ROUND, "concurrency": concurrency, "max_tokens": max_tokens, "repeats": repeats,
        "by_servers": {str(size): {"median_s": round(medians[size], 2), "runs": rows} for size, rows in runs.items()},
        "speedup": round(medians[1] / medians[servers], 2),
    }
