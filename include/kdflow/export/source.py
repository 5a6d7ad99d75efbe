"""What an export starts from: a run's last trained adapter, or the champion of a student model,
with the facts about its run that the model card states (read from the run's own checkpoints, so
the card describes how the model was made, not the exporting machine's configuration)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdflow.pipeline.artifacts import champion_dir, stored_champion
from kdflow.pipeline.context import RunContext
from kdflow.store import safe_part


class SourceError(ValueError):
    """Nothing exportable where the user pointed."""


@dataclass(frozen=True)
class ExportSource:
    run: RunContext  # the run that trained the adapter
    cycle: int
    adapter: dict[str, Any]  # pointer to the adapter folder
    run_config: dict[str, Any]  # the run's effective configuration (config.json checkpoint)
    champion: bool

    @property
    def student(self) -> str:
        return self.run_config["student"]["model"]

    def base_path(self) -> Path | str:
        """The model the adapter was trained on: the run's reading of the knowledge base where its student read
        one (fetched from the store), else the run's configured student."""
        from kdflow.pipeline.artifacts import student_base, student_model_path
        from kdflow.student.models import resolve_student

        base = student_base(self.run)
        return student_model_path(self.run, base) if base.get("model") else resolve_student(self.student)

    @property
    def version(self) -> str:
        """``<run id>-cycle<k>``: one export per trained adapter; exporting it again replaces it."""
        return f"{safe_part(self.run.run_id)}-cycle{self.cycle}"

    @property
    def models_prefix(self) -> str:
        """``models/<student>``: the student's folder name as the champion's (one per base model)."""
        return "models/" + champion_dir(self.student).split("/", 1)[1]

    def training(self) -> dict[str, Any]:
        return self.run.store.read_json(self.run.checkpoint(self.cycle, "training.json"))

    def gold_verdict(self) -> dict[str, Any] | None:
        """The run's verdict block on the gold set (None when the run scored none)."""
        if not self.run.has_checkpoint(None, "all_cycles.json"):
            return None
        return self.run.store.read_json(self.run.checkpoint(None, "all_cycles.json")).get("gold")

    def check_questions(self, per_topic: int = 2) -> list[str]:
        """Questions for the faithfulness checks: the first gold (else held-out) questions per topic."""
        for name in ("gold.jsonl", "held_out_questions.jsonl"):
            if self.run.has_checkpoint(None, name):
                rows, seen, picked = self.run.rows(self.run.checkpoint(None, name)), {}, []
                for row in rows:
                    if seen.setdefault(row["topic"], 0) < per_topic:
                        seen[row["topic"]] += 1
                        picked.append(row["question"])
                return picked
        return ["What is a Pod?", "What does a Service do?", "What is a PersistentVolume?"]


def _last_adapter_cycle(run: RunContext) -> int:
    cycles = [n for n in range(run.config.pipeline.max_cycles, 0, -1) if run.has_checkpoint(n, "adapter")]
    if not cycles:
        raise SourceError(f"run {run.run_id!r} has no trained adapter in {run.store.url} (is the run id right, and "
                          "did a cycle finish its training?)")
    return cycles[0]


def _run_config(run: RunContext) -> dict[str, Any]:
    if not run.has_checkpoint(None, "config.json"):
        raise SourceError(f"run {run.run_id!r} is not in the store {run.store.url}")
    return run.store.read_json(run.checkpoint(None, "config.json"))


def run_source(ctx: RunContext, run_id: str) -> ExportSource:
    """The last trained adapter of run ``run_id`` in ``ctx``'s store."""
    run = RunContext(config=ctx.config, store=ctx.store, run_id=run_id)
    run_config = _run_config(run)
    cycle = _last_adapter_cycle(run)
    return ExportSource(run, cycle, run.checkpoint(cycle, "adapter").to_xcom(), run_config, champion=False)


def champion_source(ctx: RunContext) -> ExportSource:
    """The current champion of ``ctx``'s student model (its own adapter copy, and its run's facts)."""
    champion = stored_champion(ctx)
    if champion is None:
        raise SourceError(f"no champion of student {ctx.config.student.model!r} in {ctx.store.url}: a run must "
                          "promote one first (or export a run with --run-id)")
    run = RunContext(config=ctx.config, store=ctx.store, run_id=champion["run_id"])
    return ExportSource(run, int(champion["cycle"]), champion["adapter"], _run_config(run), champion=True)
