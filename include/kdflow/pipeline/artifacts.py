"""What several steps read or write besides their own checkpoint: the cycle's start record, the run's
questions and gold items, published scores, the champion records, the teacher sessions and their
usage ledgers.

Step modules import these from here and never from each other, so a step module is only ever
imported by the registry. Every checkpoint read goes through :meth:`RunContext.checkpoint`, which
checks it against the running step's declared inputs: a helper here reads what its caller declared.
Heavy libraries (the KB loader, the LLM client, the gold set) are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdflow.gold import GoldItem
from kdflow.kb import load_from_config
from kdflow.pipeline.context import RunContext
from kdflow.records import Question, ScoreRow
from kdflow.store import Pointer, run_key, safe_part

if TYPE_CHECKING:
    import openai

    from kdflow.llm.cache import UsageLedger
    from kdflow.llm.server import Endpoint

log = logging.getLogger(__name__)

CHAMPION_PREFIX = "champion"
DONE_FILE = ".kdflow-complete"  # written last into a fetched student folder: a folder without it is incomplete
LEGACY_CHAMPION_KEY = "champion/current.json"  # one champion for the whole store (before issue #15): read only


# -- the cycle plan and the cycle's start ---------------------------------------------------------
def allocate_questions(topics: list[str], per_cycle: int, cycle: int) -> dict[str, int]:
    """Spread a cycle's questions round-robin over the topics, rotating the start each cycle."""
    counts = dict.fromkeys(topics, 0)
    for i in range(per_cycle):
        counts[topics[(i + cycle - 1) % len(topics)]] += 1
    return {t: c for t, c in counts.items() if c}


def start_record(ctx: RunContext, cycle: int) -> dict[str, Any]:
    """What cycle_start recorded: the adapter the cycle starts from and the question bank."""
    return ctx.store.read_json(ctx.checkpoint(cycle, "start.json"))


def start_adapter(ctx: RunContext, cycle: int) -> Pointer | None:
    adapter = start_record(ctx, cycle)["start_adapter"]
    return Pointer.of(adapter) if adapter else None


# -- the student base: the configured student, or the one that read the knowledge base -------------
READ_SUFFIX = "+kb-reading:"  # a read student's name: <student.model>+kb-reading:<reading key>
READING_CACHE_PREFIX = "cache/kb-reading"


def reading_cache_key(model: str, key: str) -> str:
    """Where a reading of ``model`` is kept in the store, shared by every run: ``cache/kb-reading/<model>/<key>``
    (the model's folder name as the champion's)."""
    return f"{READING_CACHE_PREFIX}/{champion_dir(model).split('/', 1)[1]}/{key}"


def student_base(ctx: RunContext) -> dict[str, Any]:
    """What ``read_knowledge_base`` published: ``base_model`` (the name the run's adapters belong to) and
    ``model`` (the read folder's pointer, None for the configured student). A run from before that step
    has the configured student."""
    if ctx.has_checkpoint(None, "student_base.json"):
        return ctx.store.read_json(ctx.checkpoint(None, "student_base.json"))
    return {"read": False, "base_model": ctx.config.student.model, "model": None}


def student_model_path(ctx: RunContext, base: dict[str, Any] | None = None) -> Path | str:
    """The local folder (or hub id) of the run's student base: a read student is fetched from the store once
    per machine into ``~/.cache/kdflow/models/read-<marker hash>`` (each file checked against its marker), the
    configured one resolved as always."""
    from kdflow.student.models import DEFAULT_CACHE_DIR, resolve_student

    base = student_base(ctx) if base is None else base
    if not base.get("model"):
        return resolve_student(ctx.config.student.model)
    pointer = Pointer.of(base["model"])
    local = DEFAULT_CACHE_DIR.expanduser() / f"read-{pointer.sha256[:16]}"
    if not (local / DONE_FILE).exists():
        partial = local.with_name(f".{local.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # this process's own stopped download
        ctx.store.download_dir(pointer, partial)
        (partial / DONE_FILE).write_text(pointer.key)
        try:
            partial.rename(local)  # only complete folders are renamed into place, so none is ever replaced
        except OSError:  # another worker on this machine put the same folder in place first
            shutil.rmtree(partial, ignore_errors=True)
    return local


# -- questions, held-out and gold ---------------------------------------------------------------
def kb_hash(ctx: RunContext) -> str:
    return load_from_config(ctx.config).content_hash


def run_questions(ctx: RunContext, cycle: int) -> list[Question]:
    """This cycle's published questions followed by the run's held-out questions."""
    rows = ctx.rows(ctx.checkpoint(cycle, "questions.jsonl"))
    if ctx.has_checkpoint(None, "held_out.jsonl"):
        rows += ctx.rows(ctx.checkpoint(None, "held_out.jsonl"))
    return [Question.model_validate(r) for r in rows]


def run_gold(ctx: RunContext) -> list[GoldItem]:
    """This run's gold items, [] when the run has no gold set."""
    if not ctx.has_checkpoint(None, "gold.jsonl"):
        return []
    return [GoldItem.model_validate(row) for row in ctx.rows(ctx.checkpoint(None, "gold.jsonl"))]


def gold_answered_at(cycle: int, stage: str) -> bool:
    """The gold set is answered by the model the run starts from (cycle 1's baseline) and after
    every cycle; cycle k's baseline model is cycle k-1's adapter, already answered (greedy decoding)."""
    return stage == "finetuned" or cycle == 1


# -- scores -------------------------------------------------------------------------------------
def cycle_scores(ctx: RunContext, cycle: int, stage: str, *, only_stage: bool = False) -> list[ScoreRow]:
    """The rows of the cycle's ``<stage>_scores.jsonl``; with ``only_stage`` those of that stage alone (cycle 1's
    baseline file also holds the ``unread`` gold rows of a run whose student read the knowledge base)."""
    rows = [ScoreRow.model_validate(r) for r in ctx.rows(ctx.checkpoint(cycle, f"{stage}_scores.jsonl"))]
    return [r for r in rows if r.stage == stage] if only_stage else rows


def statistics_of(ctx: RunContext) -> dict[str, Any]:
    """The paired-statistics options of this run's config (bootstrap resamples, confidence, seed)."""
    from kdflow.evaluation.aggregate import statistics_options

    cfg = ctx.config.evaluation
    return statistics_options(resamples=cfg.bootstrap_resamples, confidence=cfg.confidence, seed=ctx.config.seed)


# -- the champion of each student model ---------------------------------------------------------
def champion_dir(model: str) -> str:
    """``champion/<model>``: each student base model has its own champion, so a run with another
    student never replaces it. The folder name is the model name made safe, with a short hash of the
    name when that changed it (``HuggingFaceTB/SmolLM2-135M-Instruct``, a local folder), so two
    names never share a folder."""
    part = safe_part(model)
    if part != model:
        part = f"{part[:180]}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"
    return f"{CHAMPION_PREFIX}/{part}"


def champion_key(model: str) -> str:
    return f"{champion_dir(model)}/current.json"


def champion_history_key(model: str, replaced: dict[str, Any]) -> str:
    """Where a replaced champion is kept: ``champion/<model>/history/<promoted_at>__<run>.json``, in
    promotion order when listed."""
    stamp = safe_part(replaced.get("promoted_at") or "undated")
    return f"{champion_dir(model)}/history/{stamp}__{safe_part(replaced.get('run_id') or 'unknown')}.json"


def stored_champion(ctx: RunContext) -> dict[str, Any] | None:
    """The champion record of this run's student model as stored (a store written before champions
    were kept per model has one ``champion/current.json``: it counts for the model it names)."""
    model = ctx.config.student.model
    if ctx.store.exists(champion_key(model)):
        return ctx.store.read_json(champion_key(model))
    if ctx.store.exists(LEGACY_CHAMPION_KEY):
        legacy = ctx.store.read_json(LEGACY_CHAMPION_KEY)
        if legacy.get("base_model") == model:
            return legacy
    return None


def current_champion(ctx: RunContext) -> dict[str, Any] | None:
    """The champion of this run's student model as this run found it.

    A rerun of the run that was promoted sees the champion from before that promotion, so a
    rerun starts where the first try started and reproduces its checkpoints."""
    champion = stored_champion(ctx)
    while champion and champion.get("run_id") == ctx.run_id:
        champion = champion.get("previous")
    if not champion:
        return None
    base_model = student_base(ctx)["base_model"]
    if champion.get("base_model") != base_model:
        log.info("champion %s was trained from %s, not %s: starting from the base model",
                 champion.get("run_id"), champion.get("base_model"), base_model)
        return None
    return champion


def start_model(ctx: RunContext) -> str:
    """The model cycle 1 started from, in words."""
    return describe_start(current_champion(ctx))


def describe_start(champion: dict[str, Any] | None) -> str:
    """A start champion (:func:`current_champion`, None for the base model) in words."""
    return f"champion of run {champion['run_id']}" if champion else "base model"


# -- teacher and judge sessions -----------------------------------------------------------------
BATCH_TASK_PREFIX = "batch_"  # usage ledgers of the calls a step sent through the Batch API: batch_<step id>


def usage_key(ctx: RunContext, cycle: int | None, task: str) -> str:
    return run_key(ctx.run_id, "usage", f"{'run' if cycle is None else f'cycle_{cycle}'}__{task}.json")


@contextmanager
def endpoint_session(ctx: RunContext, cycle: int | None, task: str) -> Iterator[tuple[Endpoint, UsageLedger]]:
    """A live teacher/judge endpoint and a usage ledger, saved even when the task fails."""
    from kdflow.llm.cache import UsageLedger
    from kdflow.llm.server import teacher_endpoint

    ledger = UsageLedger.from_config(ctx.config.teacher)
    try:
        with teacher_endpoint(ctx.config.teacher) as endpoint:
            yield endpoint, ledger
    finally:
        pointer = ledger.save(ctx.store, usage_key(ctx, cycle, task))
        log.info("%s: LLM usage %s", task, pointer.summary)


@contextmanager
def teacher_session(ctx: RunContext, cycle: int | None, task: str) -> Iterator[tuple[Endpoint, openai.OpenAI]]:
    """A live endpoint and a caching client whose calls are counted under ``task``."""
    from kdflow.llm.client import make_client

    cfg = ctx.config.teacher
    with endpoint_session(ctx, cycle, task) as (endpoint, ledger):
        yield endpoint, make_client(endpoint, ctx.store, ledger, task=task, timeout_s=cfg.timeout_s,
                                    max_retries=cfg.max_retries)
