"""Serve an exported student behind an OpenAI-compatible endpoint: llama.cpp's ``llama-server`` on
the export's GGUF, on 127.0.0.1, with the embedded teacher's server flags; the model's chat template
(written into the GGUF by the export) turns chat messages into the prompt format it was trained on."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdflow.export.gguf import ExportError
from kdflow.export.publish import champion_record_key, export_model, record_key
from kdflow.export.source import champion_source, run_source
from kdflow.llm.server import Endpoint, ServerPlan, embedded_servers
from kdflow.pipeline.artifacts import stored_champion
from kdflow.pipeline.context import RunContext
from kdflow.student.prompt import CHAT_TEMPLATE_KWARGS, DEFAULT_SYSTEM_PROMPT

log = logging.getLogger(__name__)

SERVE_TYPES = ("q8_0", "f16")  # preferred first: Q8_0 answers like f16 (see the card) at half the bytes


def champion_export(ctx: RunContext, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """The export record of the current champion, exporting it first when it has none yet (or the
    one it has belongs to an older champion)."""
    source = champion_source(ctx)
    key = champion_record_key(source.models_prefix)
    if ctx.store.exists(key):
        record = ctx.store.read_json(key)
        champion = stored_champion(ctx) or {}
        if (record.get("run_id"), record.get("cycle")) == (champion.get("run_id"), champion.get("cycle")):
            return record
    progress(f"the champion (run {source.run.run_id}, cycle {source.cycle}) has no export yet: exporting it")
    return export_model(ctx, source, formats=("gguf",), progress=progress)


def run_export_record(ctx: RunContext, run_id: str, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """The export record of run ``run_id``'s last adapter, exporting it (GGUF only) when it has none."""
    source = run_source(ctx, run_id)
    key = record_key(source)
    if ctx.store.exists(key):
        return ctx.store.read_json(key)
    return export_model(ctx, source, formats=("gguf",), progress=progress)


def gguf_of(ctx: RunContext, record: dict[str, Any], cache: Path) -> Path:
    """A local copy of the export's GGUF (Q8_0, else f16): the exporting machine's own folder when it
    is here and intact, else fetched from the store (hash-checked) into ``cache``."""
    wanted = [f"gguf/{record['name']}-{t}.gguf" for t in SERVE_TYPES]
    manifest = json.loads(ctx.store.folder_file(record["folder"], "manifest.json"))
    rel = next((r for r in wanted if r in manifest), None)
    if rel is None:
        why = "; ".join(record.get("errors") or []) or "not made"
        raise ExportError(f"export {record['name']} has no GGUF ({why})")
    local = Path(record.get("local_dir") or "/nonexistent") / rel
    if local.is_file() and local.stat().st_size == manifest[rel]["bytes"]:
        return local
    target = cache.expanduser() / record["version"] / rel
    if not (target.is_file() and target.stat().st_size == manifest[rel]["bytes"]):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(ctx.store.folder_file(record["folder"], rel))
        partial.replace(target)
    return target


def template_flags() -> list[str]:
    """llama-server flags that render the chat template with kdflow's CHAT_TEMPLATE_KWARGS. The exported
    template defaults them already (kdflow.export.merge), but llama-server passes its own
    ``enable_thinking`` to every template (true where the template can think: Qwen3), which overrides
    that default; ``--reasoning off`` makes it pass false, so a request renders the trained prompt."""
    kwargs = dict(CHAT_TEMPLATE_KWARGS)
    flags = ["--reasoning", "on" if kwargs.pop("enable_thinking") else "off"] if "enable_thinking" in kwargs else []
    return flags + (["--chat-template-kwargs", json.dumps(kwargs)] if kwargs else [])


@contextmanager
def serving(gguf: Path, *, port: int | None = None, threads: int | None = None, slots: int = 4,
            n_ctx: int = 2048) -> Iterator[Endpoint]:
    """llama-server on ``gguf`` for the ``with`` block."""
    plan = ServerPlan(gguf, "llama_server", 1, threads or min(os.cpu_count() or 1, 4), slots, n_ctx,
                      tuple(template_flags()))
    with embedded_servers(plan, ports=[port] if port else None) as servers:
        yield Endpoint(servers.base_urls[0], gguf.stem, "sk-no-key-required", "json_object_schema")


def ask(endpoint: Endpoint, question: str, max_tokens: int = 128) -> str:
    """One question to the served student, with the system prompt it was trained with, greedy."""
    import openai

    client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=endpoint.model, temperature=0.0, max_tokens=max_tokens,
        messages=[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": question}])
    return (reply.choices[0].message.content or "").strip()
