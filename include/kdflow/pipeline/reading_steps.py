"""The student reads the knowledge base before cycle 1 (a box beyond the diagram, between "Select Topics"
and "Prepare Held-out Questions"): every weight trained on the selected topics' passages as plain text
(:mod:`kdflow.student.kb_reading`, why it is the profile: docs/benchmarks/evaluation.md).

A reading is kept in the store under ``cache/kb-reading/<student>/<key>``, the key naming the student,
the passages and the settings (:func:`kdflow.student.kb_reading.reading_key`): the first run pays for it
(13-14 min for the embedded student on 2 CPU cores), later runs with the same key reuse it. The step
publishes ``student_base.json``: the model every student step of the run loads (the read folder, or the
configured student when it does not read) and the name the run's adapters and champion are tied to.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from kdflow.kb import load_from_config
from kdflow.pipeline.artifacts import READ_SUFFIX, reading_cache_key
from kdflow.pipeline.context import RunContext
from kdflow.store import Pointer, StoreError

log = logging.getLogger(__name__)


def cached_reading(ctx: RunContext, key: str) -> Pointer | None:
    """The stored reading under ``key``, None when there is none (or its folder no longer checks out)."""
    index = f"{key}.json"
    if not ctx.store.exists(index):
        return None
    pointer = Pointer.of(ctx.store.read_json(index))
    try:
        ctx.store.read_verified(pointer)
    except (StoreError, FileNotFoundError) as exc:
        log.warning("the stored reading %s is unusable (%s): reading again", ctx.store.url_of(key), exc)
        return None
    return pointer


def model_identity(model: str, model_path: Path | str) -> str:
    """What names the student in a reading's key: for the embedded model or a GGUF file, the converted folder's name,
    which carries the file's content hash (an upgraded package is read again); otherwise ``student.model`` as given
    (a hub id, or a folder: the same on every worker)."""
    if model == "embedded" or model.endswith(".gguf"):
        return Path(str(model_path)).name
    return model


def read_knowledge_base(ctx: RunContext, cycle: None) -> dict[str, Any]:
    """Publish the run's student base: the stored reading for this student, passages and settings, read
    now when there is none; or the configured student when reading does not apply (recorded why)."""
    from kdflow.student.kb_reading import read_knowledge_base as read
    from kdflow.student.kb_reading import reading_key, reading_plan
    from kdflow.student.models import resolve_student

    cfg = ctx.config.student
    plan, why = reading_plan(cfg)
    record: dict[str, Any] = {"read": False, "reason": why, "base_model": cfg.model, "model": None}
    if plan is not None:
        topics = ctx.config.pipeline.topics
        documents = load_from_config(ctx.config).documents(topics)
        model_path = resolve_student(cfg.model)
        key = reading_key(model_identity(cfg.model, model_path), documents, cfg, ctx.config.seed)
        store_key = reading_cache_key(cfg.model, key)
        pointer = cached_reading(ctx, store_key)
        if pointer is None:
            log.info("the student reads %d passages (%s) for the first time under key %s: every weight, %s x %d "
                     "epochs", len(documents), ", ".join(topics), key, cfg.kb_reading.learning_rate,
                     cfg.kb_reading.epochs)
            clock = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="kdflow-read-") as tmp:
                result = read(cfg, model_path, documents, Path(tmp) / "model", plan=plan, seed=ctx.config.seed)
                summary = {**{k: result.get(k) for k in ("initial_loss", "final_loss", "steps", "wall_s")},
                           "run_id": ctx.run_id}
                pointer = ctx.store.upload_dir(Path(tmp) / "model", store_key, summary=summary)
            ctx.store.write_json(f"{store_key}.json", pointer.to_xcom())  # the index, written last: the switch
            log.info("read in %.0f s, kept at %s", time.perf_counter() - clock, ctx.store.url_of(store_key))
        else:
            log.info("the student read these %d passages before (key %s): reusing %s", len(documents), key,
                     ctx.store.folder_url(pointer))
        record = {"read": True, "reason": why, "base_model": f"{cfg.model}{READ_SUFFIX}{key}", "key": key,
                  "model": pointer.to_xcom(), "documents": len(documents), "topics": topics,
                  "learning_rate": cfg.kb_reading.learning_rate, "epochs": cfg.kb_reading.epochs,
                  # the run that read it (this one, or an earlier run whose reading is reused): a rerun records the same
                  "read_in_run": pointer.summary.get("run_id"), "training": pointer.summary}
    summary = {k: record.get(k) for k in ("read", "base_model", "read_in_run")}
    log.info("student base: %s", summary if record["read"] else f"{cfg.model} (not read: {why})")
    return ctx.publish_json(None, "student_base.json", record, summary=summary).to_xcom()
