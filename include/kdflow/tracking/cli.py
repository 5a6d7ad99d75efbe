"""``track``: log a run to MLflow from its store checkpoints (a backfill).

    python -m kdflow track --run-id manual__2026-12-03T02:00:00+00:00
    python -m kdflow track --run-id cli__... --store artifacts --set tracking.mlflow_uri=http://127.0.0.1:5000

For a run whose tracker was down (its report's health section says so) or a run made before tracking
existed. The same calls as the live steps: a run that was tracked, fully or partly, keeps its one MLflow
run, and the metric points it already had are not repeated.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    track = subparsers.add_parser("track", help="log a run to MLflow from the store (backfill)")
    track.add_argument("--run-id", required=True, help="the run to log")
    track.add_argument("--store", help="artifact store URL")
    track.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config value, e.g. "
                       "tracking.mlflow_uri=http://127.0.0.1:5000")
    track.set_defaults(func=run_track)
    return track


def run_track(args: argparse.Namespace, config: Any) -> int:
    from kdflow.pipeline.context import RunContext
    from kdflow.tracking import resolve_uri
    from kdflow.tracking.backfill import backfill

    ctx = RunContext.create(args.run_id, config=config)
    uri = resolve_uri(config, ctx.store)
    if uri is None:
        print("kdflow: tracking is off (tracking.mlflow_uri is null); set it to log the run", flush=True)
        return 2
    done = backfill(ctx, uri, progress=lambda line: print(line, flush=True))
    left_out = f"; left out (not in the store): {', '.join(done['left_out'])}" if done["left_out"] else ""
    print(f"run {args.run_id}: MLflow run {done['mlflow_run_id']} at {done['uri']} "
          f"({len(done['logged'])} steps logged{left_out})")
    return 0
