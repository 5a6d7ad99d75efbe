"""Benchmark section ``judge_output``: what the judge's grammar-constrained JSON costs.

The RAGAS answer-relevancy judge asks the embedded server for JSON matching a schema, which
llama.cpp enforces by grammar while sampling (a sampled token the grammar refuses makes it check
the whole vocabulary and sample again). Whether that, and not decoding itself, is the judge's cost
decides where the judge can get faster. Two variants of the same calls (``relevancy_strictness``
draws of each answer in sequence, the judge's temperature, ``evaluation.judge_concurrency`` answers
at once), each on a fresh llama-server of the default layout, because every judge task of a run
starts its own and a server already holding the same prompts would serve them from its cache:

* ``json_schema``: what kdflow sends (``{"type": "json_object", "schema": ...}``);
* ``unconstrained``: the same requests without ``response_format``: decoding with no grammar. The
  replies are not JSON (SmolLM2 writes prose and often runs to ``judge_max_tokens``), so only its
  tokens per second are comparable, not its seconds.

The order alternates between rounds, so neither variant always runs on a warmer machine.
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

VARIANTS = ("json_schema", "unconstrained")


def judge_output(rounds: int = 2, answers: int = 24) -> dict[str, Any]:
    """Seconds and tokens/s of ``answers`` x ``relevancy_strictness`` judge calls per variant and round."""
    from kdflow.bench.teacher import _embedded_client, _judge_call, _judge_prompts, _timed_round
    from kdflow.config import load_config
    from kdflow.kb import load_from_config
    from kdflow.llm.server import embedded_servers, resolve_gguf, server_plan

    config = load_config(environ={})
    prompts = _judge_prompts(load_from_config(config), answers)
    plan = server_plan(config.teacher, resolve_gguf(config.teacher.gguf_path))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for round_ in range(rounds):
        for name in VARIANTS if round_ % 2 == 0 else reversed(VARIANTS):
            with embedded_servers(plan) as servers, tempfile.TemporaryDirectory(prefix="kdflow-bench-judge-") as cache:
                client, model = _embedded_client(servers.base_urls, plan.gguf.stem, cache)
                call = _judge_call(client, model, config.evaluation, constrained=name == "json_schema")
                runs[name].append(_timed_round(call, prompts, config.evaluation.judge_concurrency))
    medians = {name: round(statistics.median(r["tokens_per_s"] for r in rows), 1) for name, rows in runs.items()}
    return {"answers": len(prompts), "calls_per_round": len(prompts) * config.evaluation.relevancy_strictness,
            "rounds": rounds, "processes": plan.processes, "threads": plan.threads, "slots": plan.slots,
            "by_variant": {name: {"median_tokens_per_s": medians[name], "runs": rows} for name, rows in runs.items()},
            "unconstrained_over_schema_tokens_per_s": round(medians["unconstrained"] / medians["json_schema"], 2)}


def render(block: dict[str, Any]) -> list[str]:
    """The section's lines of results.md."""
    lines = ["## Judge: grammar-constrained JSON vs decoding alone", "",
             f"{block['calls_per_round']} RAGAS answer-relevancy calls per round ({block['answers']} answers x 3 draws "
             f"in sequence), {block['processes']} llama-server(s) of {block['threads']} threads and {block['slots']} "
             f"slots started fresh for each variant and round, {block['rounds']} rounds in alternating order.", "",
             "| variant | tokens/s (median) | tokens/s | seconds | completion tokens | load avg |",
             "|---|---|---|---|---|---|"]
    for name, row in block["by_variant"].items():
        cells = [[r[key] for r in row["runs"]] for key in ("tokens_per_s", "seconds", "tokens", "load_avg")]
        lines.append(f"| {name} | {row['median_tokens_per_s']} | " + " | ".join(map(str, cells)) + " |")
    lines += ["", f"Decoding without the grammar is {block['unconstrained_over_schema_tokens_per_s']}x the judge's "
              "tokens per second.", ""]
    return lines
