"""Export one trained adapter: merge, check, convert, describe, publish.

The result is one folder, built locally and then uploaded as a versioned store folder under
``models/<student>/<version>/`` (the store's folder marker holds every file's hash, and
``manifest.json`` travels with the files)::

    hf/          merged transformers model (safetensors, tokenizer with chat template, generation config)
    gguf/        <name>-f16.gguf, <name>-q8_0.gguf (llama.cpp, Ollama, LM Studio)
    README.md    model card: base model and licence, teacher, knowledge base, training pairs, gold verdict
    export.json  source, faithfulness checks, seconds per stage, sizes
    manifest.json

``models/<student>/exports/<version>.json`` points at it; exporting the champion also writes
``models/<student>/champion.json``, which ``kdflow serve --champion`` reads. Exporting the same
adapter again replaces its folder (a new version, the old one retired after the switch)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kdflow.export.card import model_card
from kdflow.export.gguf import ExportError, convert_to_gguf, gguf_greedy_tokens
from kdflow.export.merge import agreement, check_merge, greedy_tokens, merged_model, save_merged, template_defaults
from kdflow.export.source import ExportSource
from kdflow.integrity import file_sha256
from kdflow.pipeline.context import RunContext

log = logging.getLogger(__name__)

FORMATS = ("hf", "gguf")
DEFAULT_GGUF_TYPES = ("f16", "q8_0")
CHECK_NEW_TOKENS = 24
DEFAULT_EXPORT_DIR = Path("~/.cache/kdflow/exports")


def export_name(source: ExportSource) -> str:
    base = "SmolLM2-135M-Instruct" if source.student == "embedded" else source.student.rstrip("/").rsplit("/", 1)[-1]
    return f"{base}-kdflow-{source.version}"


def local_export_dir(source: ExportSource, root: Path | None = None) -> Path:
    return (root or DEFAULT_EXPORT_DIR).expanduser() / source.models_prefix.split("/", 1)[1] / source.version


def record_key(source: ExportSource) -> str:
    return f"{source.models_prefix}/exports/{source.version}.json"


def champion_record_key(models_prefix: str) -> str:
    return f"{models_prefix}/champion.json"


def _file_entry(file: Path) -> dict[str, Any]:
    return {"sha256": file_sha256(file), "bytes": file.stat().st_size}


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    return {file.relative_to(folder).as_posix(): _file_entry(file)
            for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")}


def _retokenized(tokenizer: Any, ids: Sequence[Sequence[int]]) -> list[list[int]]:
    """Token ids -> text -> token ids: how the GGUF's answers (text) compare with the HF model's."""
    return [tokenizer(tokenizer.decode(list(row), skip_special_tokens=True).strip(),
                      add_special_tokens=False)["input_ids"] for row in ids]


def export_model(ctx: RunContext, source: ExportSource, *, formats: Sequence[str] = FORMATS,
                 gguf_types: Sequence[str] = DEFAULT_GGUF_TYPES, dtype: str = "bfloat16", check: bool = True,
                 out_root: Path | None = None, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Export ``source``'s adapter (see module docstring); returns the export record. A GGUF the
    converter cannot make is reported in ``errors`` (one line) while the transformers export completes."""
    from kdflow.student.prompt import build_prompt

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"export formats {unknown or list(formats)} are not a non-empty subset of {list(FORMATS)}")
    name, seconds, checks, errors = export_name(source), {}, {}, []
    target = local_export_dir(source, out_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.version}-", dir=target.parent))
    try:
        clock = time.perf_counter()
        adapter = ctx.store.download_dir(source.adapter, staging / "adapter")
        base_path = source.base_path()
        progress(f"export {name}: merging the adapter of run {source.run.run_id} cycle {source.cycle} into {base_path}")
        model, tokenizer = merged_model(base_path, adapter)
        questions = source.check_questions()
        reference = greedy_tokens(model, tokenizer, questions, CHECK_NEW_TOKENS) if check else []
        if check:
            checks["merge"] = check_merge(base_path, adapter, model, tokenizer, questions, CHECK_NEW_TOKENS)
        seconds["merge_and_check"] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        hf_dir = save_merged(model, tokenizer, staging / "hf", dtype=dtype,
                             max_new_tokens=ctx.config.student.max_new_tokens)
        del model
        seconds["save_hf"] = round(time.perf_counter() - clock, 1)
        if "gguf" in formats:
            prompts = [build_prompt(tokenizer, q) for q in questions]
            for gguf_type in gguf_types:
                clock = time.perf_counter()
                progress(f"export {name}: converting to GGUF {gguf_type}")
                try:
                    gguf = convert_to_gguf(hf_dir, staging / "gguf" / f"{name}-{gguf_type}.gguf", gguf_type,
                                           model_name=name)
                except ExportError as exc:
                    errors.append(str(exc))
                    progress(f"export {name}: {exc}")
                    if not any((staging / "gguf").iterdir()):
                        (staging / "gguf").rmdir()
                    break
                if check:
                    checks[f"gguf_{gguf_type}"] = {
                        "compared": f"GGUF {gguf_type} (llama.cpp) vs the float32 merged model (greedy, CPU, as text)",
                        "max_new_tokens": CHECK_NEW_TOKENS,
                        **agreement(_retokenized(tokenizer, reference),
                                    gguf_greedy_tokens(gguf, tokenizer, prompts, CHECK_NEW_TOKENS)),
                    }
                seconds[f"gguf_{gguf_type}"] = round(time.perf_counter() - clock, 1)
        shutil.rmtree(staging / "adapter")
        if "hf" not in formats:
            shutil.rmtree(hf_dir)
        record = {"name": name, "version": source.version, "student": source.student, "run_id": source.run.run_id,
                  "cycle": source.cycle, "champion": source.champion, "dtype": dtype, "formats": list(formats),
                  "template_defaults": template_defaults(tokenizer.chat_template),
                  "checks": checks, "errors": errors, "seconds": seconds,
                  "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staging / "export.json").write_text(json.dumps(record, indent=2) + "\n")
        record["files"] = _manifest(staging)
        (staging / "README.md").write_text(model_card(source, record))
        record["files"]["README.md"] = _file_entry(staging / "README.md")  # the only file the card added
        record["files"] = dict(sorted(record["files"].items()))
        (staging / "manifest.json").write_text(json.dumps(record["files"], indent=2) + "\n")
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(ctx, source, target, record, progress)


def _replace_dir(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target`` (a rename; an older export there is removed after the switch)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _publish(ctx: RunContext, source: ExportSource, local: Path, record: dict[str, Any],
             progress: Callable[[str], None]) -> dict[str, Any]:
    total = sum(info["bytes"] for info in record["files"].values())
    progress(f"export {record['name']}: uploading {len(record['files'])} files ({total / 1e6:,.1f} MB) to "
             f"{ctx.store.url_of(source.models_prefix + '/' + source.version)}")
    pointer = ctx.store.upload_dir(local, f"{source.models_prefix}/{source.version}",
                                   summary={"name": record["name"], "errors": len(record["errors"])})
    published = {**{k: v for k, v in record.items() if k != "files"}, "folder": pointer.to_xcom(),
                 "url": ctx.store.folder_url(pointer), "local_dir": str(local),
                 "sizes_mb": {rel: round(info["bytes"] / 1e6, 1) for rel, info in record["files"].items()
                              if not rel.endswith((".json", ".md", ".txt", ".jinja"))}}
    ctx.store.write_json(record_key(source), published)
    if source.champion:
        ctx.store.write_json(champion_record_key(source.models_prefix), published)
    ctx.store.retire_versions(pointer)
    return published
