"""Every input a step reads is declared in the registry: the run context refuses an undeclared read, and a
whole CLI run, watched at the store, reads no checkpoint of the run manifest that the reading step did not
declare. Registry rows name real functions, so go-to-definition finds each step."""

import inspect
import re

import pytest

from kdflow.pipeline import context as context_module
from kdflow.pipeline.context import RunContext, UndeclaredInputError
from kdflow.pipeline.registry import ALL_STEPS, CYCLE_STEPS, FINAL_STEPS, SETUP_STEPS
from kdflow.pipeline.spec import StepSpec, run, step, this
from kdflow.store import ArtifactStore, run_key

MANIFEST_KEY = re.compile(r"^runs/[^/]+/manifest/(?:cycle_(\d+)\.)?([^/]+)\.json$")


def test_every_step_is_an_ordinary_function_named_like_its_step():
    for spec in ALL_STEPS.values():
        assert inspect.isfunction(spec.func) and spec.func.__name__ == spec.id, spec.id
        assert spec.func.__module__.startswith("kdflow.pipeline.") and spec.func.__module__.endswith("_steps"), spec.id
        assert list(inspect.signature(spec.func).parameters) == ["ctx", "cycle"], spec.id


def test_every_declared_input_has_a_source():
    """A pointer comes from an earlier step of the same list; a checkpoint from a step that publishes it."""
    run_level = {name for s in (*SETUP_STEPS, *FINAL_STEPS) for name in s.produces}
    cycle_level = {name for s in CYCLE_STEPS for name in s.produces}
    for steps in (SETUP_STEPS, CYCLE_STEPS, FINAL_STEPS):
        for index, spec in enumerate(steps):
            earlier = {s.id for s in steps[:index]}
            assert set(spec.step_inputs) <= earlier, spec.id
            for item in spec.checkpoint_inputs:
                assert item.name in (run_level if item.scope == "run" else cycle_level), (spec.id, item)


def _bound(tmp_path, spec: StepSpec, cycle, pointers=None) -> RunContext:
    ctx = RunContext.create("inputs", {"store": {"url": str(tmp_path / "store")}})
    ctx.store.write_json(run_key("inputs", "manifest", "cycle_1.questions.json"), {"url": "x"})
    ctx.store.write_json(run_key("inputs", "manifest", "held_out.json"), {"url": "x"})
    return ctx.for_step(spec, cycle, pointers)


def test_a_step_reading_an_undeclared_checkpoint_or_pointer_is_stopped(tmp_path):
    spec = StepSpec("probe", "Probe", "setup", lambda ctx, cycle: {}, (this("questions"), step("source")), ("probe",))
    ctx = _bound(tmp_path, spec, 1, {"source": {"url": "staged"}})
    assert ctx.has_checkpoint(1, "questions.jsonl") and ctx.pointer("source") == {"url": "staged"}
    with pytest.raises(UndeclaredInputError, match="read checkpoint held_out of the run"):
        ctx.has_checkpoint(None, "held_out.jsonl")
    with pytest.raises(UndeclaredInputError, match="read checkpoint questions of cycle 2"):
        ctx.checkpoint(2, "questions.jsonl")  # this("questions") is cycle 1's only
    with pytest.raises(UndeclaredInputError, match="pointer of other"):
        ctx.pointer("other")
    with pytest.raises(UndeclaredInputError, match="published answers"):
        ctx.publish_json(1, "answers.json", {})
    assert not ctx.store.exists(ctx.key(1, "answers.json"))  # refused before anything was written
    assert ctx.access.reads == [(1, "questions")]
    later = _bound(tmp_path, StepSpec("probe", "Probe", "setup", spec.func, (run("held_out"),)), 2)
    assert later.has_checkpoint(None, "held_out.jsonl")


def test_an_unbound_context_checks_nothing(tmp_path):
    """Tests and library code read checkpoints without a step: nothing to check against."""
    ctx = RunContext.create("inputs", {"store": {"url": str(tmp_path / "store")}})
    assert not ctx.has_checkpoint(3, "anything")


@pytest.mark.slow
def test_a_cli_run_reads_only_declared_checkpoints(tmp_path, monkeypatch):
    """Two cycles through the CLI runner, each manifest read seen at the store and charged to the step
    running; reads through RunContext are recorded too. Neither may find an undeclared read."""
    from kdflow.pipeline import runner

    running: list[tuple[StepSpec, int | None]] = []
    undeclared: list[str] = []
    listing = [False]
    run_step, manifest = runner.run_step, ArtifactStore.manifest
    exists, read_bytes = ArtifactStore.exists, ArtifactStore.read_bytes

    def watch(key: str) -> None:
        match = MANIFEST_KEY.match(key)
        if match and running and not listing[0]:
            spec, step_cycle = running[-1]
            cycle = int(match.group(1)) if match.group(1) else None
            if not spec.declares_read(step_cycle, cycle, match.group(2)):
                undeclared.append(f"{spec.id} (cycle {step_cycle}) read {key}")

    def watched_step(ctx):
        running.append((ctx.access.spec, ctx.access.cycle))
        return run_step(ctx)

    def watched_manifest(self, run_id):  # save_cycle_results indexes the cycle's names and URLs: a listing
        listing[0] = True
        try:
            return manifest(self, run_id)
        finally:
            listing[0] = False

    monkeypatch.setattr(runner, "run_step", watched_step)
    monkeypatch.setattr(ArtifactStore, "exists", lambda self, key: (watch(key), exists(self, key))[1])
    monkeypatch.setattr(ArtifactStore, "read_bytes", lambda self, key: (watch(key), read_bytes(self, key))[1])
    monkeypatch.setattr(ArtifactStore, "manifest", watched_manifest)
    audit: list[context_module.StepAccess] = []
    overrides = {"store": {"url": str(tmp_path / "store")}, "seed": 3,
                 "pipeline": {"topics": ["pods"], "cycles": 2, "questions_per_cycle": 1, "held_out_per_topic": 1},
                 "student": {"epochs": 1, "max_new_tokens": 16},
                 "evaluation": {"metrics": ["rouge_l"], "gold_path": "tests/data/gold-small.jsonl",
                                "teacher_ceiling": False, "bootstrap_resamples": 1000}}
    runner.run_pipeline(overrides, run_id="declared", audit=audit)
    assert undeclared == []
    assert len(audit) == len(SETUP_STEPS) + 2 * len(CYCLE_STEPS) + len(FINAL_STEPS)
    for access in audit:
        assert all(access.spec.declares_read(access.cycle, c, name) for c, name in access.reads), access.spec.id
        assert {name for _, name in access.published} <= set(access.spec.produces), access.spec.id
    reads = {(a.spec.id, a.cycle, c, name) for a in audit for c, name in a.reads}
    assert ("cycle_start", 2, 1, "adapter") in reads and ("compare_performance", 1, 1, "training") in reads
