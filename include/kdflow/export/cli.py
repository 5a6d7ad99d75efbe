"""``python -m kdflow export`` and ``python -m kdflow serve``: the distilled student as files people
run, and as an OpenAI-compatible endpoint. ``register(subparsers)`` is called by ``kdflow.cli``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DEFAULT_QUESTION = "What is the default restartPolicy of a Pod?"


def _source_options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--champion", action="store_true", help="the current champion of the student (the default)")
    which.add_argument("--run-id", help="the last trained adapter of this run")
    parser.add_argument("--student", help="whose champion: student model ('embedded' = SmolLM2-135M)")
    parser.add_argument("--store", help="artifact store URL (default: store.url)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config value")


def register(subparsers: Any) -> None:
    export = subparsers.add_parser("export", help="merge an adapter into its base model, convert it to GGUF, write "
                                                  "a model card, publish under models/ in the store")
    _source_options(export)
    export.add_argument("--format", default="hf,gguf", help="comma-separated: hf, gguf (default both)")
    export.add_argument("--gguf-types", default="f16,q8_0", help="GGUF types (f16, bf16, q8_0, f32)")
    export.add_argument("--dtype", default="bfloat16", help="weights of the transformers export")
    export.add_argument("--out", type=Path, help="local folder for exports (default ~/.cache/kdflow/exports)")
    export.add_argument("--no-check", action="store_true", help="skip the faithfulness checks")
    export.set_defaults(func=run_export)

    serve = subparsers.add_parser("serve", help="serve an exported student (GGUF) on 127.0.0.1 behind an "
                                                "OpenAI-compatible API (llama.cpp's server)")
    _source_options(serve)
    serve.add_argument("--gguf", type=Path, help="serve this GGUF file instead of a store export")
    serve.add_argument("--port", type=int, help="port (default: a free one)")
    serve.add_argument("--threads", type=int, help="CPU threads (default: up to 4)")
    serve.add_argument("--check", action="store_true", help="ask one question, print the answer, stop")
    serve.add_argument("--question", default=DEFAULT_QUESTION, help="the question --check asks")
    serve.set_defaults(func=run_serve)


def _print(line: str) -> None:
    print(line, flush=True)


def _context(config: Any) -> Any:
    from kdflow.pipeline.context import RunContext
    from kdflow.store import ArtifactStore

    return RunContext(config=config, store=ArtifactStore.from_config(config), run_id="export")


def _source(args: argparse.Namespace, ctx: Any) -> Any:
    from kdflow.export.source import champion_source, run_source

    return run_source(ctx, args.run_id) if args.run_id else champion_source(ctx)


def run_export(args: argparse.Namespace, config: Any) -> int:
    from kdflow.export.publish import export_model

    ctx = _context(config)
    record = export_model(ctx, _source(args, ctx), formats=[f.strip() for f in args.format.split(",") if f.strip()],
                          gguf_types=[t.strip() for t in args.gguf_types.split(",") if t.strip()],
                          dtype=args.dtype, check=not args.no_check, out_root=args.out,
                          progress=_print)
    print(json.dumps({k: record[k] for k in ("name", "url", "local_dir", "sizes_mb", "seconds", "checks", "errors")},
                     indent=2))
    return 1 if record["errors"] else 0


def run_serve(args: argparse.Namespace, config: Any) -> int:
    from kdflow.export.publish import DEFAULT_EXPORT_DIR
    from kdflow.export.serve import ask, champion_export, gguf_of, run_export_record, serving

    if args.gguf:
        gguf = args.gguf
        if not gguf.is_file():
            raise FileNotFoundError(f"--gguf {gguf} is not a file")
    else:
        ctx = _context(config)
        record = run_export_record(ctx, args.run_id, _print) if args.run_id else champion_export(ctx, _print)
        gguf = gguf_of(ctx, record, DEFAULT_EXPORT_DIR / "serve")
    with serving(gguf, port=args.port, threads=args.threads) as endpoint:
        print(json.dumps({"base_url": endpoint.base_url, "model": endpoint.model, "gguf": str(gguf)}), flush=True)
        if args.check:
            print(json.dumps({"question": args.question, "answer": ask(endpoint, args.question)}), flush=True)
            return 0
        print("serving; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
