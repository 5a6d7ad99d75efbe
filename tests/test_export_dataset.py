"""The training data as a Hugging Face dataset (issue #18): each cycle's dataset step publishes
Parquet files and a card; ``datasets.load_dataset("parquet", ...)`` reads them from the folder
store and from S3 (the moto server) and gets exactly the pairs of the cycle's dataset checkpoint;
the fine-tuning step trains on that very file."""

from __future__ import annotations

import pytest

from fixtures_reliability import SMALL_GOLD, smallest_overrides
from kdflow.gold import load_gold
from kdflow.pipeline import execute
from kdflow.pipeline.context import RunContext
from kdflow.records import Question, Reference, TrainingPair

RUN = "manual__dataset"
PAIRS = [("What is a Pod?", "A Pod is the smallest deployable unit of computing in Kubernetes."),
         ("How does a Pod share storage?", "The containers of a Pod can share volumes.")]


def _cycle_with_references(overrides: dict) -> RunContext:
    ctx = RunContext.create(RUN, overrides)
    ctx.publish(None, "gold.jsonl", ctx.stage_rows(None, "gold.jsonl", load_gold(SMALL_GOLD).items))
    questions = [Question(id=f"pods-{n}", topic="pods", question=q, passage_ids=[f"pods/pods#p{n}"], cycle=1)
                 for n, (q, _) in enumerate(PAIRS)]
    references = [Reference(question_id=q.id, question=q.question, reference=a, passages=[{"id": "p", "text": a}])
                  for q, (_, a) in zip(questions, PAIRS, strict=True)]
    for name, schema, rows in (("questions.jsonl", "questions", questions),
                               ("references.jsonl", "references", references)):
        ctx.publish(1, name, ctx.stage_rows(1, name, rows), schema=schema)
    execute("cycle_start", run_id=RUN, overrides=overrides, cycle=1)
    return ctx


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_the_published_dataset_loads_with_datasets_and_is_what_was_trained_on(where, tmp_path, tiny_phi_dir,
                                                                               request):
    import datasets

    if where == "s3":
        # datasets refuses every remote URL while HF_HUB_OFFLINE is set (the tests set it, kdflow sets it for
        # its own processes); a user loading from MinIO runs without it
        request.getfixturevalue("monkeypatch").setattr(datasets.config, "HF_HUB_OFFLINE", False)
        s3_server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        options = {"client_kwargs": {"endpoint_url": s3_server}}
        store = {"url": f"s3://{bucket}/kdflow", "storage_options": options}
    else:
        options, store = {}, {"url": str(tmp_path / "store")}
    load_options = {"s3": options} if options else None  # datasets takes fsspec options per protocol
    overrides = {**smallest_overrides("unused", str(tiny_phi_dir)), "store": store}
    ctx = _cycle_with_references(overrides)
    dataset_step = execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=1)

    folder = dataset_step["summary"]["hf_dataset"]
    assert folder["summary"] == {"train": 2, "gold": 6, "held_out": 0}
    url = ctx.store.url_of(ctx.store.folder_key(folder, "train.parquet"))
    loaded = datasets.load_dataset("parquet", data_files={"train": url}, split="train", storage_options=load_options)
    checkpoint = [TrainingPair.model_validate(r) for r in ctx.rows(ctx.checkpoint(1, "dataset.jsonl"))]
    assert [(r["question_id"], r["prompt"], r["completion"]) for r in loaded] == [
        (p.question_id, p.prompt, p.completion) for p in checkpoint] and len(checkpoint) == 2
    assert [r["passage_ids"] for r in loaded] == [["pods/pods#p0"], ["pods/pods#p1"]]
    gold = datasets.load_dataset("parquet", data_files={"gold": ctx.store.url_of(ctx.store.folder_key(
        folder, "gold.parquet"))}, split="gold", storage_options=load_options)
    assert len(gold) == 6 and gold[0]["key_facts"]
    card = ctx.store.folder_file(folder, "README.md").decode()
    assert "path: train.parquet" in card and "| train | 2 |" in card and "Kubernetes v1.28" in card

    trained = execute("finetune_student", run_id=RUN, overrides=overrides, cycle=1,
                      inputs={"prepare_training_dataset": dataset_step})
    assert trained["summary"]["pairs"] == len(loaded)
