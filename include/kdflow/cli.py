"""Command line: ``python -m kdflow <group> <command>``: run, config, report, teacher, student, gold,
export, serve, track.

Everything the DAG does is reachable here without Airflow. It is the only command line of the
library: each group module (``kdflow.teacher.cli``, ``kdflow.student.cli``, ``kdflow.gold_cli``) has
a ``register(subparsers)`` that adds its commands and is listed in :data:`GROUPS`; none has a
``main`` of its own. Every command's handler is ``func(args, config) -> int`` (set with
``set_defaults(func=...)``): :func:`main` loads and validates the configuration once, from
defaults.yaml, ``--config``/``KDFLOW_CONFIG``, ``KDFLOW__*`` variables and the command's own
overrides (``--set``, ``--topics``, ``--student``...), and hands it to the handler."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from kdflow import gold_cli
from kdflow.config import ConfigError, KdflowConfig, load_config
from kdflow.export import cli as export_cli
from kdflow.student import cli as student_cli
from kdflow.teacher import cli as teacher_cli
from kdflow.tracking import cli as tracking_cli

Handler = Callable[[argparse.Namespace, KdflowConfig], int]
# Every group of commands besides run/config/report, each registered by its module's register(subparsers).
# Imported at the top: a group module that fails to import fails the command line, loudly.
GROUPS: tuple[ModuleType, ...] = (teacher_cli, student_cli, gold_cli, export_cli, tracking_cli)


def _configure_environment() -> None:
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of a command's options; any command may declare them (``--topics``, ``--cycles``,
    ``--questions``, ``--held-out``, ``--student``, ``--seed``, ``--store``, ``--set``), with these dests."""
    from kdflow.config import deep_merge, set_overrides
    from kdflow.pipeline.params import params_to_overrides

    params = {
        "topics": args.topics.split(",") if getattr(args, "topics", None) else None,
        "cycles": getattr(args, "cycles", None),
        "questions_per_cycle": getattr(args, "questions", None),
        "held_out_per_topic": getattr(args, "held_out", None),
        "student_model": getattr(args, "student", None),
        "seed": getattr(args, "seed", None),
    }
    overrides = params_to_overrides(params)
    if getattr(args, "store", None):
        overrides = deep_merge(overrides, {"store": {"url": args.store}})
    return deep_merge(overrides, set_overrides(getattr(args, "set", None)))


def _cmd_run(args: argparse.Namespace, config: KdflowConfig) -> int:
    """Run the pipeline (each step loads the same overrides), then print its report."""
    from kdflow.pipeline.runner import run_pipeline

    outputs = run_pipeline(_overrides(args), run_id=args.run_id, progress=lambda line: print(line, flush=True))
    args.run_id = outputs["run_id"]
    return _cmd_report(args, config)


def _cmd_report(args: argparse.Namespace, config: KdflowConfig) -> int:
    """Print a finished run's report tables and where its HTML report is."""
    from kdflow.evaluation.report import render_tables
    from kdflow.store import ArtifactStore, run_key

    store = ArtifactStore.from_config(config)
    run_id = args.run_id
    if run_id is None:
        finished = []
        for key in store.list_keys("runs"):
            if key.endswith("/results.json") and key.count("/") == 2:
                completion = key.rsplit("/", 1)[0] + "/completion.json"
                finished_at = store.read_json(completion)["finished_at"] if store.exists(completion) else ""
                finished.append((finished_at, key.split("/")[1]))
        if not finished:
            print(f"kdflow: no finished run with a report in {store.url}", file=sys.stderr)
            return 1
        run_id = max(finished)[1]
    results = store.read_json(run_key(run_id, "results.json"))
    tables = render_tables(results)
    for name in ("final_results", "performance_comparison", "improvement_statistics"):
        print(f"\n== {name.replace('_', ' ')} ==\n{tables[name]}")
    report = store.checkpoint_pointer(run_id, "report")  # the folder's current version
    print(f"\nrun {run_id}: report {store.url_of(store.folder_key(report, 'report.html'))}")
    return 0


def _cmd_config(args: argparse.Namespace, config: KdflowConfig) -> int:
    import yaml

    print(yaml.safe_dump(config.public_dict(), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdflow", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--config", help="YAML config file over defaults.yaml (default: $KDFLOW_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--topics", help="comma-separated topics, e.g. pods,services")
        p.add_argument("--cycles", type=int)
        p.add_argument("--questions", type=int, help="questions per cycle")
        p.add_argument("--held-out", type=int, help="held-out questions per topic (0 disables)")
        p.add_argument("--student", help="student model id, folder or GGUF ('embedded' = SmolLM2-135M)")
        p.add_argument("--seed", type=int)
        p.add_argument("--store", help="artifact store URL (folder, file://, s3://...)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config value, e.g. student.epochs=2")

    run = sub.add_parser("run", help="run the whole pipeline end to end, without Airflow")
    common(run)
    run.add_argument("--run-id", help="run id (default: cli__<timestamp>)")
    run.set_defaults(func=_cmd_run)

    config = sub.add_parser("config", help="print the effective configuration")
    common(config)
    config.set_defaults(func=_cmd_config)

    report = sub.add_parser("report", help="print a finished run's report tables (default: the latest run)")
    report.add_argument("--run-id", help="run id (default: the most recently finished run)")
    report.add_argument("--latest", action="store_true", help="the most recently finished run (the default)")
    report.add_argument("--store", help="artifact store URL")
    report.set_defaults(func=_cmd_report)

    for group in GROUPS:
        group.register(sub)
    return parser


def _exit_on_sigterm() -> None:
    """SIGTERM (``kill``, a supervisor, a CI timeout) unwinds like Ctrl-C: the ``with`` blocks that
    started llama.cpp servers stop them, instead of leaving them running after this process is gone."""
    import signal
    import threading

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        signal.signal(signal.SIGTERM, _exit)


def main(argv: list[str] | None = None) -> int:
    _configure_environment()
    _exit_on_sigterm()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "botocore", "s3fs", "fsspec", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.config:  # for every load of this process, the pipeline steps' included
        os.environ["KDFLOW_CONFIG"] = args.config
    handler: Handler = args.func
    try:
        return handler(args, load_config(_overrides(args)))
    except ConfigError as exc:
        print(f"kdflow: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one clear line for the user, traceback with -v
        if args.verbose:
            raise
        print(f"kdflow: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
