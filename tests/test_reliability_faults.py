"""Faults during a run: the teacher down for a while (retried, then success), the S3 server
unreachable during a write (fails cleanly, the published object and manifest intact, the rerun
succeeds), CUDA out of memory while training (one recorded retry on a smaller batch).
Covered elsewhere: SIGKILL mid-write (test_store.py), a middle task failed then rerun
(test_dag_end_to_end.py). Celery worker killed / scheduler restarted belong to the native
topology test (test_native_topology.py)."""

from __future__ import annotations

import pytest

from fixtures_reliability import relay, smallest_overrides  # noqa: F401 - fixture
from kdflow.pipeline import execute
from kdflow.pipeline.context import RunContext
from kdflow.records import Question, Reference
from kdflow.store import ArtifactStore, StoreError

RUN = "manual__faults"


@pytest.mark.slow
def test_a_teacher_that_is_down_for_a_while_is_retried_then_answers(tmp_path, monkeypatch, embedded_endpoint,
                                                                    relay):  # noqa: F811
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-faults")
    teacher = relay(embedded_endpoint.base_url).start(drop_first=2)  # the first two requests are hung up on
    overrides = smallest_overrides(str(tmp_path / "store"), "unused", teacher={
        "provider": "openai", "base_url": teacher.url("/v1"),
        "structured_output": "json_object_schema", "max_retries": 5})
    result = execute("prepare_held_out_questions", run_id=RUN, overrides=overrides)
    assert result["count"] == 1 and teacher.requests > teacher.dropped == 2
    store = ArtifactStore(str(tmp_path / "store"))
    [usage_key] = store.list_keys("runs/manual__faults/usage")
    usage = store.read_json(usage_key)["tasks"]["held_out_questions"]
    assert usage["errors"] >= 2, "the dropped attempts were not counted"
    assert usage["calls"] > usage["errors"], usage


def test_s3_unreachable_during_a_write_fails_cleanly_and_the_rerun_succeeds(tmp_path, s3_server, s3_bucket,
                                                                            relay):  # noqa: F811
    s3 = relay(s3_server).start()
    options = {"client_kwargs": {"endpoint_url": s3.url()},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    overrides = {"store": {"url": f"s3://{s3_bucket}/kdflow", "storage_options": options}, "seed": 1}
    first = execute("load_configuration", run_id=RUN, overrides=overrides)
    ctx = RunContext.create(RUN, overrides)
    assert ctx.checkpoint(None, "config.json").sha256 == first["sha256"]

    s3.stop()
    with pytest.raises(StoreError, match=rf"cannot write s3://{s3_bucket}/kdflow/runs/manual__faults/config\.json: "):
        execute("load_configuration", run_id=RUN, overrides={**overrides, "seed": 2})
    s3.start()

    ctx = RunContext.create(RUN, overrides)
    published = ctx.checkpoint(None, "config.json")
    assert published.sha256 == first["sha256"]  # the manifest still points at the first, whole object
    assert ctx.store.read_json(published)["seed"] == 1  # read_verified: the object matches its pointer
    rerun = execute("load_configuration", run_id=RUN, overrides={**overrides, "seed": 2})
    ctx = RunContext.create(RUN, overrides)
    assert ctx.checkpoint(None, "config.json").sha256 == rerun["sha256"] != first["sha256"]
    assert ctx.store.read_json(ctx.checkpoint(None, "config.json"))["seed"] == 2
    assert ctx.store.list_keys("runs/manual__faults") == ["runs/manual__faults/config.json",
                                                          "runs/manual__faults/manifest/config.json"]


def test_cuda_out_of_memory_while_training_retries_once_on_half_the_batch(tmp_path, monkeypatch, tiny_phi_dir):
    """KDFLOW_SIMULATE_OOM_ABOVE_BATCH=1 raises torch.cuda.OutOfMemoryError for any batch above 1."""
    from kdflow.student.train import SIMULATE_OOM_ENV

    overrides = smallest_overrides(str(tmp_path / "store"), str(tiny_phi_dir))
    ctx = RunContext.create(RUN, overrides)
    question = Question(id="pods-1", topic="pods", question="What is a Pod?", passage_ids=["pods-p1"], cycle=1)
    second = Question(id="pods-2", topic="pods", question="What does a Service do?", passage_ids=["pods-p2"], cycle=1)
    references = [Reference(question_id=q.id, question=q.question, reference=a, passages=[{"id": "p", "text": a}])
                  for q, a in ((question, "A Pod is the smallest deployable unit."),
                               (second, "A Service exposes Pods."))]
    for name, schema, rows in (("questions.jsonl", "questions", [question, second]),
                               ("references.jsonl", "references", references)):
        ctx.publish(1, name, ctx.stage_rows(1, name, rows), schema=schema)
    execute("cycle_start", run_id=RUN, overrides=overrides, cycle=1)
    outputs = {"prepare_training_dataset": execute("prepare_training_dataset", run_id=RUN,
                                                   overrides=overrides, cycle=1)}

    monkeypatch.setenv(SIMULATE_OOM_ENV, "1")
    staged = execute("finetune_student", run_id=RUN, overrides=overrides, cycle=1, inputs=outputs)
    assert staged["summary"]["oom_fallback"] == "batch_size 2 -> 1"
    saved = execute("save_adapter", run_id=RUN, overrides=overrides, cycle=1, inputs={"finetune_student": staged})
    done = execute("finetuning_complete", run_id=RUN, overrides=overrides, cycle=1, inputs={"save_adapter": saved})
    training = ctx.store.read_json(done)
    fallback = training["oom_fallback"]
    assert fallback["change"] == "batch_size 2 -> 1" and "CUDA out of memory" in fallback["error"]
    assert (fallback["batch_size"], fallback["gradient_accumulation_steps"]) == (1, 2)
    assert training["steps"] == 1 and training["pairs"] == 2  # 2 pairs, batch 1 x 2 accumulated: one step per epoch

    monkeypatch.setenv(SIMULATE_OOM_ENV, "0")  # out of memory at any batch: one retry, then the task fails
    import torch

    with pytest.raises(torch.cuda.OutOfMemoryError, match="simulated"):
        execute("finetune_student", run_id=RUN, overrides=overrides, cycle=1, inputs=outputs)
    assert ctx.store.read_json(ctx.checkpoint(1, "training.json"))["oom_fallback"]["change"] == "batch_size 2 -> 1"
