"""The champion across runs, through the pipeline's own steps on a real local store: a run that
beats the model it started from on the held-out set (a run without a gold set) becomes the champion, the next
run's cycle 1 starts from that adapter, a worse run is refused with its reason, and a rerun of the promoted run
still compares against the champion it started from; each student base model has its own champion and
history. The scores are hand-made checkpoints, so the decisions are known in advance."""

from __future__ import annotations

import pytest

from kdflow.pipeline.artifacts import champion_dir, champion_key, start_adapter, start_record
from kdflow.pipeline.context import RunContext
from kdflow.pipeline.final_steps import _promotion
from kdflow.pipeline.setup_steps import cycle_start
from kdflow.records import ScoreRow

METRIC = "semantic_similarity"
CHAMPION_KEY = champion_key("embedded")  # the default student
HELD_OUT = ("pods-h1", "services-h1", "storage-h1")


def _scores(stage: str, values: tuple[float, ...]) -> list[ScoreRow]:
    return [ScoreRow(question_id=qid, topic=qid.split("-")[0], split="held_out", stage=stage, cycle=1,
                     scores={METRIC: v}) for qid, v in zip(HELD_OUT, values, strict=True)]


def _record_adapter(ctx: RunContext, tmp_path) -> None:
    """Cycle 1's adapter as the run publishes it: a folder whose file holds the run id."""
    adapter_dir = tmp_path / f"adapter-{ctx.run_id}"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_model.safetensors").write_bytes(ctx.run_id.encode())
    ctx.store.record_checkpoint(ctx.run_id, "cycle_1.adapter", ctx.store.upload_dir(adapter_dir, ctx.key(1, "adapter")))


def _finish_run(store_url: str, run_id: str, baseline: tuple[float, ...], finetuned: tuple[float, ...],
                tmp_path, student: str = "embedded") -> tuple[RunContext, dict]:
    """A one-cycle run as its checkpoints leave it: start record, both score files and an adapter;
    then the promotion decision of its last step."""
    ctx = RunContext.create(run_id,
                            {"store": {"url": store_url}, "pipeline": {"cycles": 1}, "student": {"model": student},
                                     "evaluation": {"metrics": [METRIC], "gold_path": None},
                                     "promotion": {"metric": METRIC, "margin": 0.02}})
    cycle_start(ctx, 1)
    for stage, values in (("baseline", baseline), ("finetuned", finetuned)):
        ctx.publish(1, f"{stage}_scores.jsonl", ctx.stage_rows(1, f"{stage}_scores.jsonl", _scores(stage, values)))
    _record_adapter(ctx, tmp_path)
    return ctx, _promotion(ctx, 1)


def test_champion_is_promoted_then_started_from_then_defended(tmp_path):
    store = str(tmp_path / "store")

    first, decision = _finish_run(store, "nightly_1", baseline=(0.50, 0.50, 0.50),
                                  finetuned=(0.60, 0.58, 0.55), tmp_path=tmp_path)
    assert start_record(first, 1)["origin"] == "base model" and start_adapter(first, 1) is None
    assert decision["promote"] is True and decision["incumbent"] == "base model", decision
    assert decision["delta"] == pytest.approx(0.0767, abs=1e-4)
    champion = first.store.read_json(CHAMPION_KEY)
    assert champion["run_id"] == "nightly_1" and champion["metric"] == METRIC and champion["previous"] is None
    # The champion owns a copy of the run's adapter, the same files under its own folder ...
    assert champion["adapter"]["url"].startswith(first.store.url_of(champion_dir("embedded") + "/adapter/"))
    assert first.store.folder_file(champion["adapter"], "adapter_model.safetensors") == b"nightly_1"
    # ... so a rerun of the promoted run, which republishes its adapter and retires the version it
    # replaced, cannot take the champion's adapter with it.
    rerun_dir = tmp_path / "adapter-rerun"
    rerun_dir.mkdir()
    (rerun_dir / "adapter_model.safetensors").write_bytes(b"nightly_1 retrained")
    first.store.record_checkpoint("nightly_1", "cycle_1.adapter",
                                  first.store.upload_dir(rerun_dir, first.key(1, "adapter")))
    assert first.store.folder_file(champion["adapter"], "adapter_model.safetensors") == b"nightly_1"

    # The next nightly run starts from the champion's adapter and says so.
    second, refused = _finish_run(store, "nightly_2", baseline=(0.60, 0.58, 0.55),
                                  finetuned=(0.61, 0.58, 0.55), tmp_path=tmp_path)
    record = start_record(second, 1)
    assert record["origin"] == "champion from run nightly_1"
    assert start_adapter(second, 1).url == champion["adapter"]["url"]
    # ... and does not beat it by the margin: refused, the reason recorded, the champion unchanged.
    assert refused["promote"] is False and refused["incumbent"] == "champion of run nightly_1"
    assert "margin" in refused["reason"] and refused["delta"] == pytest.approx(0.0033, abs=1e-4)
    assert second.store.read_json(CHAMPION_KEY)["run_id"] == "nightly_1"

    # A third run that beats it by the margin takes over, keeping the one before as `previous`.
    third, promoted = _finish_run(store, "nightly_3", baseline=(0.60, 0.58, 0.55),
                                  finetuned=(0.70, 0.66, 0.60), tmp_path=tmp_path)
    assert promoted["promote"] is True and start_record(third, 1)["origin"] == "champion from run nightly_1"
    latest = third.store.read_json(CHAMPION_KEY)
    assert latest["run_id"] == "nightly_3" and latest["previous"]["run_id"] == "nightly_1"
    assert "previous" not in latest["previous"]  # the chain stays one link long
    # ... and the champion it replaced is kept in the model's history
    history = third.store.list_keys(f"{champion_dir('embedded')}/history")
    assert [third.store.read_json(k)["run_id"] for k in history] == ["nightly_1"], history

    # Rerunning the promoted run's first cycle starts from the champion it found, not from itself.
    cycle_start(third, 1)
    assert start_record(third, 1)["origin"] == "champion from run nightly_1"


def test_a_regressing_topic_blocks_promotion(tmp_path):
    run, decision = _finish_run(str(tmp_path / "store"), "nightly_1", baseline=(0.50, 0.50, 0.50),
                                finetuned=(0.80, 0.80, 0.30), tmp_path=tmp_path)
    assert decision["promote"] is False and decision["regressed_topics"] == ["storage"], decision
    assert "storage" in decision["reason"]
    assert not run.store.exists(CHAMPION_KEY)


def test_with_a_gold_set_promotion_reads_the_gold_scores_and_fails_closed_without_them(tmp_path):
    """The gold split decides when the run has one; gold answers scored after the last cycle but not
    at the start leave nothing to pair: no promotion, even though the held-out scores rose."""
    from kdflow.gold import BUILTIN_GOLD, load_gold

    items = load_gold(BUILTIN_GOLD).items[:6]
    ctx = RunContext.create("gold_run", {"store": {"url": str(tmp_path / "store")}, "pipeline": {"cycles": 1}})
    cycle_start(ctx, 1)
    ctx.publish(None, "gold.jsonl", ctx.stage_rows(None, "gold.jsonl", items))

    def gold_rows(stage: str, lift: float) -> list[ScoreRow]:
        return [ScoreRow(question_id=item.as_question().id, topic=item.topic, split="gold", stage=stage, cycle=1,
                         scores={"key_fact_recall": 0.2 + lift + 0.01 * i}) for i, item in enumerate(items)]

    for stage, rows in (("baseline", _scores("baseline", (0.5, 0.5, 0.5))),
                        ("finetuned", _scores("finetuned", (0.9, 0.9, 0.9)) + gold_rows("finetuned", 0.5))):
        ctx.publish(1, f"{stage}_scores.jsonl", ctx.stage_rows(1, f"{stage}_scores.jsonl", rows))
    _record_adapter(ctx, tmp_path)
    refused = _promotion(ctx, 1)
    assert refused["split"] == "gold" and refused["metric"] == "key_fact_recall"
    assert refused["promote"] is False and "fails closed" in refused["reason"] and not ctx.store.exists(CHAMPION_KEY)

    # with the start's gold answers scored, the same adapter is promoted on its paired gold gain
    baseline = _scores("baseline", (0.5, 0.5, 0.5)) + gold_rows("baseline", 0.0)
    ctx.publish(1, "baseline_scores.jsonl", ctx.stage_rows(1, "baseline_scores.jsonl", baseline))
    promoted = _promotion(ctx, 1)
    assert promoted["promote"] is True and promoted["delta"] == pytest.approx(0.5) and promoted["questions"] == 6
    assert ctx.store.read_json(CHAMPION_KEY)["split"] == "gold"


def test_a_run_with_another_student_never_touches_the_champion_of_a_model(tmp_path):
    """A phi-like tiny student's champion, then a promoted run of the embedded student on the same
    store: each model keeps its own champion, and the tiny one is still current for its model."""
    store = str(tmp_path / "store")
    tiny = str(tmp_path / "tiny-phi")  # a local folder's path, as the test students are named

    phi, promoted = _finish_run(store, "phi_1", baseline=(0.50, 0.50, 0.50), finetuned=(0.60, 0.58, 0.55),
                                tmp_path=tmp_path, student=tiny)
    assert promoted["promote"] is True
    tiny_champion = phi.store.read_json(champion_key(tiny))
    assert tiny_champion["run_id"] == "phi_1" and tiny_champion["base_model"] == tiny
    assert champion_key(tiny).startswith("champion/") and champion_key(tiny).count("/") == 2  # one safe folder

    embedded, also_promoted = _finish_run(store, "embedded_1", baseline=(0.50, 0.50, 0.50),
                                          finetuned=(0.60, 0.58, 0.55), tmp_path=tmp_path)
    assert start_record(embedded, 1)["origin"] == "base model"  # not the tiny model's champion
    assert also_promoted["promote"] is True and also_promoted["incumbent"] == "base model"
    assert embedded.store.read_json(CHAMPION_KEY)["run_id"] == "embedded_1"
    assert phi.store.read_json(champion_key(tiny)) == tiny_champion  # untouched
    assert phi.store.list_keys(f"{champion_dir(tiny)}/history") == []

    # the tiny model's next run still starts from its own champion
    again = RunContext.create("phi_2", {"store": {"url": store}, "pipeline": {"cycles": 1}, "student": {"model": tiny}})
    cycle_start(again, 1)
    assert start_record(again, 1)["origin"] == "champion from run phi_1"


def test_a_champion_stored_before_champions_were_kept_per_model_is_still_found(tmp_path):
    """``champion/current.json`` of an older store counts for the model it names, and is kept in that
    model's history when a run beats it."""
    from kdflow.pipeline.artifacts import LEGACY_CHAMPION_KEY

    store = str(tmp_path / "store")
    first, _ = _finish_run(store, "old_1", baseline=(0.50, 0.50, 0.50), finetuned=(0.60, 0.58, 0.55), tmp_path=tmp_path)
    first.store.write_bytes(LEGACY_CHAMPION_KEY, first.store.read_bytes(CHAMPION_KEY))
    first.store.delete_prefix(champion_dir("embedded"))

    second, promoted = _finish_run(store, "new_1", baseline=(0.60, 0.58, 0.55),
                                   finetuned=(0.70, 0.66, 0.60), tmp_path=tmp_path)
    assert start_record(second, 1)["origin"] == "champion from run old_1" and promoted["promote"] is True
    history = second.store.list_keys(f"{champion_dir('embedded')}/history")
    assert [second.store.read_json(k)["run_id"] for k in history] == ["old_1"]


def test_a_run_that_read_the_knowledge_base_is_judged_against_the_student_before_reading(tmp_path):
    """With no champion of the read base, the incumbent is what the user had: the base model as it was before
    reading (cycle 1's "unread" gold rows), not the read student; the champion belongs to the read base."""
    from kdflow.gold import BUILTIN_GOLD, load_gold

    items = load_gold(BUILTIN_GOLD).items[:6]
    ctx = RunContext.create("read_run", {"store": {"url": str(tmp_path / "store")}, "pipeline": {"cycles": 1}})
    folder = {"url": "file:///store/cache/kb-reading/embedded/k/v/.folder", "key": "cache/kb-reading/embedded/k",
              "sha256": "0" * 64, "bytes": 1}
    ctx.publish_json(None, "student_base.json", {"read": True, "reason": "auto", "model": folder,
                                                 "base_model": "embedded+kb-reading:k"})
    cycle_start(ctx, 1)
    ctx.publish(None, "gold.jsonl", ctx.stage_rows(None, "gold.jsonl", items))

    def gold_rows(stage: str, value: float) -> list[ScoreRow]:
        return [ScoreRow(question_id=item.as_question().id, topic=item.topic, split="gold", stage=stage, cycle=1,
                         scores={"key_fact_recall": value + 0.01 * i}) for i, item in enumerate(items)]

    scores = {"baseline": gold_rows("baseline", 0.5) + gold_rows("unread", 0.2),
              "finetuned": gold_rows("finetuned", 0.5)}
    for stage, rows in scores.items():
        ctx.publish(1, f"{stage}_scores.jsonl", ctx.stage_rows(1, f"{stage}_scores.jsonl", rows))
    _record_adapter(ctx, tmp_path)
    decision = _promotion(ctx, 1)
    assert decision["promote"] is True and decision["delta"] == pytest.approx(0.3), decision
    assert decision["incumbent"] == "base model before reading the knowledge base"
    champion = ctx.store.read_json(CHAMPION_KEY)
    assert champion["base_model"] == "embedded+kb-reading:k" and champion["student_base"] == folder
