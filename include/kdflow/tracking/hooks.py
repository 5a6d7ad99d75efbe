"""What each step logs to MLflow, read from the checkpoints it published (so a live step and a backfill,
:mod:`kdflow.tracking.backfill`, log the same numbers).

- start_pipeline (run): created, named after the run id, started at the run's start; dag id, git tags.
- load_configuration (run): the effective config as params (secrets masked); teacher/judge/student tags.
- load_knowledge_base (run): knowledge base name and hash tags.
- cycle_start (cycle): created, nested under the run; where the cycle started from.
- prepare_training_dataset (cycle): pair, gate-drop and decontamination counts, KB coverage; the dataset.
- save_adapter (cycle): the adapter folder.
- finetuning_complete (cycle): the training loss per step (a metric history), steps, time, throughput.
- save_cycle_results (cycle, and run at step = cycle): per split and metric the baseline and fine-tuned
  means, the paired delta, its interval and p-value.
- save_pipeline_results (both): gate counts per cycle; usage (calls, tokens, cost); the overall deltas;
  the promotion decision; results.json and the report; the champion's model version.
- pipeline_complete (run): FINISHED.

Folders larger than ``tracking.artifact_max_mb`` are not copied: the run gets the tag
``kdflow.link.<name>`` with the folder's store URL instead (every logged artifact also has a
``kdflow.store.<name>`` tag naming its source in the store).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kdflow.pipeline.context import RunContext
from kdflow.pipeline.spec import DAG_ID
from kdflow.store import Pointer
from kdflow.tracking import embedded_home, record_key
from kdflow.tracking.client import RUN_TAG, Tracker, flatten

log = logging.getLogger(__name__)

Hook = Callable[[Tracker, RunContext, "int | None", Mapping[str, Pointer]], None]
STEP_HOOKS: dict[str, Hook] = {}


def hook(step_id: str) -> Callable[[Hook], Hook]:
    def register(func: Hook) -> Hook:
        STEP_HOOKS[step_id] = func
        return func
    return register


def open_tracker(ctx: RunContext, uri: str) -> Tracker:
    """The tracker at ``uri``. A SQLite store keeps the artifacts of the experiment it creates beside its
    database (``<folder>/artifacts``; MLflow's own default is ``./mlruns`` under whatever folder the task runs
    in); a server decides for itself."""
    root = None
    if ctx.config.tracking.mlflow_uri == "embedded":
        root = (embedded_home(ctx.store) / "artifacts").as_uri()
    elif uri.startswith("sqlite:///"):
        root = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return Tracker(uri, ctx.config.tracking.experiment, timeout_s=ctx.config.tracking.timeout_s, artifact_root=root)


def run_hook(ctx: RunContext, uri: str, step_id: str, cycle: int | None, outputs: Mapping[str, Pointer]) -> None:
    """Log what step ``step_id`` of ``cycle`` published (``outputs``: checkpoint name -> pointer)."""
    STEP_HOOKS[step_id](open_tracker(ctx, uri), ctx, cycle, outputs)


def _ms(iso: str | None) -> int | None:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000) if iso else None


# -- setup ---------------------------------------------------------------------------------------
@hook("start_pipeline")
def _start(t: Tracker, ctx: RunContext, cycle: None, outputs: Mapping[str, Pointer]) -> None:
    started = ctx.store.read_json(outputs["run"]) if "run" in outputs else {}
    tags = {"kdflow.dag_id": DAG_ID, "kdflow.store": ctx.store.url,
            "mlflow.source.git.commit": started.get("git_revision")}  # the code that ran; unknown for older runs
    run = t.run(ctx.run_id, start_ms=_ms(started.get("started_at")))
    t.set_tags(run, {k: v for k, v in tags.items() if v})
    experiment = ctx.config.tracking.experiment
    ctx.store.write_json(record_key(ctx.run_id, "mlflow.json"), {
        "uri": ctx.mask(t.uri), "experiment": experiment, "experiment_id": t.experiment_id,
        "mlflow_run_id": run.info.run_id, "run_name": ctx.run_id})


def roles(config: Mapping[str, Any]) -> dict[str, str]:
    """Teacher, judge (the teacher's endpoint) and student of a stored effective config."""
    teacher = config.get("teacher", {})
    if teacher.get("provider") == "embedded":
        name = Path(teacher["gguf_path"]).name if teacher.get("gguf_path") else "SmolLM2-135M-Instruct"
        teacher_name = f"embedded llama.cpp ({name})"
    else:
        teacher_name = f"{teacher.get('model')}" + (f" at {teacher['base_url']}" if teacher.get("base_url") else "")
    return {"kdflow.teacher": teacher_name, "kdflow.judge": teacher_name,
            "kdflow.student": str(config.get("student", {}).get("model"))}


@hook("load_configuration")
def _config(t: Tracker, ctx: RunContext, cycle: None, outputs: Mapping[str, Pointer]) -> None:
    config = ctx.store.read_json(outputs["config"])  # the config as the run stored it: secrets already masked
    run = t.run(ctx.run_id)
    t.log_params(run, flatten(ctx.mask(config)))
    t.set_tags(run, ctx.mask(roles(config)))


@hook("load_knowledge_base")
def _kb(t: Tracker, ctx: RunContext, cycle: None, outputs: Mapping[str, Pointer]) -> None:
    kb = ctx.store.read_json(outputs["knowledge_base"])
    t.set_tags(t.run(ctx.run_id), {"kdflow.kb_hash": kb.get("kb_hash"), "kdflow.kb_name": kb.get("name")})


# -- cycles --------------------------------------------------------------------------------------
@hook("cycle_start")
def _cycle(t: Tracker, ctx: RunContext, cycle: int, outputs: Mapping[str, Pointer]) -> None:
    run = t.cycle_run(ctx.run_id, cycle)
    if "start" in outputs:
        t.set_tags(run, {"kdflow.origin": outputs["start"].summary.get("origin")})


def _folder_bytes(ctx: RunContext, pointer: Pointer) -> int:
    files = ctx.store.read_json(pointer)["files"]
    return sum(ctx.store.fs.size(ctx.store._fs_path(ctx.store.folder_key(pointer, rel))) for rel in files)


def log_folder(t: Tracker, run: Any, ctx: RunContext, pointer: Pointer, name: str) -> bool:
    """Copy a store folder into ``run``'s artifacts under ``name``, or (larger than
    ``tracking.artifact_max_mb``) tag its store URL as ``kdflow.link.<name>``. Returns whether copied."""
    url = ctx.store.folder_url(pointer)
    size = _folder_bytes(ctx, pointer)
    limit = ctx.config.tracking.artifact_max_mb * 1024 * 1024
    if size > limit:
        t.set_tags(run, {f"kdflow.link.{name}": url, f"kdflow.store.{name}": url})
        log.info("%s (%.1f MB) is larger than tracking.artifact_max_mb: linked, not copied: %s", name, size / 2**20,
                 url)
        return False
    with tempfile.TemporaryDirectory(prefix="kdflow-track-") as tmp:
        t.log_dir(run, ctx.store.download_dir(pointer, tmp), name)
    t.set_tags(run, {f"kdflow.store.{name}": url})
    return True


@hook("prepare_training_dataset")
def _dataset(t: Tracker, ctx: RunContext, cycle: int, outputs: Mapping[str, Pointer]) -> None:
    run = t.cycle_run(ctx.run_id, cycle)
    dataset = outputs["dataset"]
    summary = dataset.summary
    t.log_metrics(run, {"dataset.pairs": summary.get("pairs"), "dataset.gate_dropped": summary.get("dropped"),
                        "dataset.decontaminated": len(summary.get("decontaminated") or []),
                        "dataset.kb_coverage": (summary.get("coverage") or {}).get("share")})
    with tempfile.TemporaryDirectory(prefix="kdflow-track-") as tmp:
        path = Path(tmp) / "dataset.jsonl"
        path.write_bytes(ctx.store.read_verified(dataset))
        t.log_file(run, path, "dataset")
    t.set_tags(run, {"kdflow.store.dataset": dataset.url})
    if "hf_dataset" in outputs:
        log_folder(t, run, ctx, outputs["hf_dataset"], "hf_dataset")


@hook("save_adapter")
def _adapter(t: Tracker, ctx: RunContext, cycle: int, outputs: Mapping[str, Pointer]) -> None:
    log_folder(t, t.cycle_run(ctx.run_id, cycle), ctx, outputs["adapter"], "adapter")


@hook("finetuning_complete")
def _training(t: Tracker, ctx: RunContext, cycle: int, outputs: Mapping[str, Pointer]) -> None:
    training = ctx.store.read_json(outputs["training"])
    run = t.cycle_run(ctx.run_id, cycle)
    losses = training.get("losses") or []
    t.log_points(run, (("train.loss", loss, step) for step, loss in enumerate(losses, 1)))
    t.log_metrics(run, {"train.steps": training.get("steps"), "train.wall_s": training.get("wall_s"),
                        "train.tokens_per_s": training.get("tokens_per_s"),
                        "train.final_loss": losses[-1] if losses else None})
    # What training really used: the run's ``student.*`` params are the config, which for a model matched
    # only by the generic ``*`` profile holds its values, while the model's architecture profile decides.
    profile = training.get("profile") or {}
    t.log_params(run, {f"train.{key}": json.dumps(value) if isinstance(value, list) else str(value)
                       for key, value in profile.items() if value is not None})


IMPROVEMENT_FIELDS = ("baseline_mean", "finetuned_mean", "mean_delta", "ci_low", "ci_high", "p_value",
                      "improved_share", "paired")

OVERALL_FIELDS = ("n", "before_mean", "after_mean", "mean_delta", "ci_low", "ci_high", "p_value")


@hook("save_cycle_results")
def _cycle_results(t: Tracker, ctx: RunContext, cycle: int, outputs: Mapping[str, Pointer]) -> None:
    """Per split (gold, held_out, train) and metric: ``<split>.<metric>.<field>`` in the cycle's run, and
    in the pipeline run at step = cycle (one chart across cycles)."""
    improvement = ctx.store.read_json(outputs["improvement"])
    values = {f"{key}.{f}": row.get(f) for key, row in improvement.items() for f in IMPROVEMENT_FIELDS}
    run = t.cycle_run(ctx.run_id, cycle)
    t.log_metrics(run, values)
    t.set_tags(run, {f"verdict.{key}": row.get("verdict") for key, row in improvement.items()})
    t.log_metrics(t.run(ctx.run_id), values, step=cycle)
    t.finish(run)


# -- final ---------------------------------------------------------------------------------------
def usage_metrics(usage: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``usage.teacher.calls``, ``usage.judge.cost_usd``, ...: every number of the run's usage totals."""
    return {f"usage.{role}.{k}": v for role, totals in usage.items() for k, v in totals.items()}


def gold_per_cycle(all_cycles: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The gold set per cycle, named like the cycle's other splits: ``gold.<metric>.baseline_mean`` (the
    model the cycle started from, scored where the gold set was last answered), ``finetuned_mean``, the
    paired ``mean_delta`` and its interval. Computed across cycles (compare_all_cycles), so logged here."""
    fields = {"before_mean": "baseline_mean", "after_mean": "finetuned_mean", "mean_delta": "mean_delta",
              "ci_low": "ci_low", "ci_high": "ci_high", "p_value": "p_value", "n": "paired"}
    found = []
    for entry in (all_cycles.get("gold") or {}).get("per_cycle", []):
        found.append((int(entry["cycle"]), {f"gold.{metric}.{name}": row.get(key)
                                            for metric, row in entry["metrics"].items()
                                            for key, name in fields.items()}))
    return found


def champion_name(student: str) -> str:
    """The registered model of a student base model's champions: ``kdflow-<model as its champion folder>``."""
    from kdflow.pipeline.artifacts import champion_dir

    return "kdflow-" + champion_dir(student).split("/", 1)[1]


@hook("save_pipeline_results")
def _results(t: Tracker, ctx: RunContext, cycle: None, outputs: Mapping[str, Pointer]) -> None:
    results = ctx.store.read_json(outputs["results"])
    run = t.run(ctx.run_id)
    for cycle_result in results.get("cycles", []):
        gate = cycle_result.get("gate") or {}
        t.log_metrics(t.cycle_run(ctx.run_id, cycle_result["cycle"]), {f"gate.{k}": v for k, v in gate.items()})
        t.log_metrics(run, {f"gate.{k}": v for k, v in gate.items()}, step=cycle_result["cycle"])
    for n, values in gold_per_cycle(ctx.store.read_json(outputs["all_cycles"]) if "all_cycles" in outputs else {}):
        t.log_metrics(t.cycle_run(ctx.run_id, n), values)
        t.log_metrics(run, values, step=n)
    t.log_metrics(run, usage_metrics(results.get("usage") or {}))
    if "overall" in outputs:
        overall = ctx.store.read_json(outputs["overall"])
        values = {f"overall.{split}.{metric}.{f}": row.get(f) for split, metrics in overall.items()
                  for metric, row in metrics.items() for f in OVERALL_FIELDS}
        values |= {f"overall.{split}.{metric}.gap_closed": (row.get("gap_closed") or {}).get("share")
                   for split, metrics in overall.items() for metric, row in metrics.items()}
        t.log_metrics(run, values)
    promotion = results.get("promotion") or {}
    t.log_metrics(run, {"promotion.promoted": int(bool(promotion.get("promote"))),
                        "promotion.delta": promotion.get("delta")})
    t.set_tags(run, {"kdflow.promotion": "promoted" if promotion.get("promote") else "refused",
                     "kdflow.promotion_reason": str(promotion.get("reason", ""))[:5000]})
    with tempfile.TemporaryDirectory(prefix="kdflow-track-") as tmp:
        path = Path(tmp) / "results.json"
        path.write_bytes(ctx.store.read_verified(outputs["results"]))
        t.log_file(run, path)
    if "report" in outputs:
        log_folder(t, run, ctx, outputs["report"], "report")
    if promotion.get("promote"):
        register_champion(t, ctx, results)


def register_champion(t: Tracker, ctx: RunContext, results: Mapping[str, Any]) -> Any:
    """The run's last adapter as a version of its student's registered model; the alias ``champion``
    moves to it while it is the store's champion (a backfill of an older promoted run registers its
    version without taking the alias from a newer champion)."""
    from kdflow.pipeline.artifacts import champion_key

    student = ctx.config.student.model
    last = max(c["cycle"] for c in results["cycles"])
    cycle_run = t.cycle_run(ctx.run_id, last)
    champion = ctx.store.read_json(champion_key(student)) if ctx.store.exists(champion_key(student)) else {}
    copied = any(f.path == "adapter" for f in t.client.list_artifacts(cycle_run.info.run_id))
    # The version's run is the one holding its source (a tracking server refuses a run artifact as the
    # source of a version of another run): the last cycle's run, or the run itself for a store URL.
    source_run = cycle_run if copied else t.run(ctx.run_id)
    if copied:
        source = t.artifact_uri(cycle_run, "adapter")
    elif champion.get("run_id") == ctx.run_id:
        source = ctx.store.folder_url(champion["adapter"])
    else:
        source = cycle_run.data.tags.get("kdflow.link.adapter") or ctx.store.url
    promotion = results.get("promotion") or {}
    tags = {RUN_TAG: ctx.run_id, "kdflow.cycle": str(last), "kdflow.base_model": student,
            "kdflow.metric": str(promotion.get("metric")), "kdflow.delta": str(promotion.get("delta"))}
    version = t.register_champion(champion_name(student), source, source_run, tags,
                                  make_champion=champion.get("run_id") == ctx.run_id)
    log.info("registered %s version %s (%s)", champion_name(student), version.version, source)
    return version


@hook("pipeline_complete")
def _complete(t: Tracker, ctx: RunContext, cycle: None, outputs: Mapping[str, Pointer]) -> None:
    record = ctx.store.read_json(outputs["completion"]) if "completion" in outputs else {}
    t.finish(t.run(ctx.run_id), _ms(record.get("finished_at")))
