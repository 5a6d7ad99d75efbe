"""A person in the loop (issue 21), without a scheduler: what each review answer does to the training
dataset and to the promotion, what the reviewer is shown, and the review tasks of the DAG resumed with an
answer as Airflow resumes them (``execute_complete`` with the event the REST API's response produces).
The scheduler-driven runs are in tests/test_native_review.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fixtures_reliability import SMALL_GOLD
from kdflow.config import load_config
from kdflow.gold import load_gold
from kdflow.pipeline import execute
from kdflow.pipeline.context import RunContext
from kdflow.pipeline.final_steps import with_review
from kdflow.pipeline.params import params_to_overrides
from kdflow.pipeline.review import (
    APPROVE,
    DROP,
    DROP_PARAM,
    KEEP,
    PROMOTE,
    REJECT,
    ReviewError,
    dataset_review_body,
    decide,
    read_decision,
    record_decision,
    review_key,
    run_decisions,
)
from kdflow.records import Question, Reference, TrainingPair

RUN = "manual__review"
AT = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)
PARAMS = {"topics": ["pods"], "cycles": 2, "held_out_per_topic": 0}
# cycle -> (question id, question, reference, gate)
CYCLES = {
    1: [("pods-1", "What is a Pod?", "A Pod is the smallest deployable unit of computing in Kubernetes.",
         {"decision": "kept", "reason": "supported", "scores": {"support": 0.91}}),
        ("pods-2", "How do the containers of a Pod share storage?", "The containers of a Pod can share volumes.",
         {"decision": "rewritten", "reason": "one unsupported sentence cut", "scores": {"support": 0.77}}),
        ("pods-3", "Who painted the Sistine Chapel ceiling?", "Michelangelo.",
         {"decision": "dropped", "reason": "no passage sentence answers the question", "scores": {}})],
    2: [("pods-4", "What restarts the containers of a Pod?", "The kubelet restarts failed containers of a Pod.",
         {"decision": "kept", "reason": "supported", "scores": {"support": 0.88}})],
}


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Two cycles of questions and gated references published as the teacher steps would; the store and
    the gold set come from the environment, as on a worker, so a review task's config is the run's."""
    monkeypatch.setenv("KDFLOW__STORE__URL", str(tmp_path / "store"))
    monkeypatch.setenv("KDFLOW__EVALUATION__GOLD_PATH", str(SMALL_GOLD))
    monkeypatch.setenv("KDFLOW__EVALUATION__TEACHER_CEILING", "false")
    overrides = params_to_overrides(PARAMS)
    ctx = RunContext.create(RUN, overrides)
    ctx.publish(None, "gold.jsonl", ctx.stage_rows(None, "gold.jsonl", load_gold(SMALL_GOLD).items))
    for cycle, items in CYCLES.items():
        questions = [Question(id=qid, topic="pods", question=q, passage_ids=[f"pods/pods#p{n}"], cycle=cycle)
                     for n, (qid, q, _, _) in enumerate(items)]
        references = [Reference(question_id=qid, question=q, reference=a, gate=gate, passages=[{"id": "p", "text": a}])
                      for qid, q, a, gate in items]
        for name, schema, rows in (("questions.jsonl", "questions", questions),
                                   ("references.jsonl", "references", references)):
            ctx.publish(cycle, name, ctx.stage_rows(cycle, name, rows), schema=schema)
    return ctx, overrides


def _dataset(ctx: RunContext, overrides: dict, cycle: int) -> tuple[list[str], dict]:
    pointer = execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=cycle)
    return [TrainingPair.model_validate(r).question_id for r in ctx.rows(pointer)], pointer["summary"]


def _train_ids(ctx: RunContext, cycle: int) -> list[str]:
    """The question ids of the Parquet file fine-tuning reads (the published hf_dataset checkpoint)."""
    import io

    import pyarrow.parquet as pq

    data = ctx.store.folder_file(ctx.checkpoint(cycle, "hf_dataset"), "train.parquet")
    return pq.read_table(io.BytesIO(data)).column("question_id").to_pylist()


def test_an_answer_is_one_decision_and_a_bad_drop_is_refused_naming_the_pairs():
    ids = ["pods-1", "pods-2"]
    approved = decide("dataset", [APPROVE], {}, by="alice (1)", at=AT, cycle=1, pair_ids=ids)
    assert (approved.outcome, approved.dropped, approved.by, approved.timed_out) == ("approved", [], "alice (1)", False)
    dropped = decide("dataset", [DROP], {DROP_PARAM: ["pods-2", "pods-2"]}, by="bob (2)", at=AT, cycle=1, pair_ids=ids)
    assert (dropped.outcome, dropped.dropped) == ("dropped", ["pods-2"])
    assert dropped.reason == "cycle 1 dataset review: dropped pods-2 (bob (2), 2026-12-03T08:00:00+00:00)"
    timed_out = decide("dataset", [REJECT], {DROP_PARAM: []}, by=None, at=AT, cycle=1, timed_out=True)
    assert timed_out.outcome == "rejected" and "timed out; default taken" in timed_out.reason
    # a drop names nothing, or a pair the dataset does not hold: refused with the ids
    with pytest.raises(ReviewError, match="named no pair"):
        decide("dataset", [DROP], {DROP_PARAM: []}, by="bob", at=AT, cycle=1, pair_ids=ids)
    with pytest.raises(ReviewError, match=r"does not hold: \['pods-9'\]"):
        decide("dataset", [DROP], {DROP_PARAM: ["pods-9"]}, by="bob", at=AT, cycle=1, pair_ids=ids)
    with pytest.raises(ReviewError, match="expected one of"):
        decide("promotion", [APPROVE], {}, by="bob", at=AT)
    assert decide("promotion", [KEEP], None, by="carol (3)", at=AT).outcome == "kept"


def test_the_dataset_review_shows_the_cycles_pairs_their_gate_and_the_gate_drops(run):
    ctx, overrides = run
    _, summary = _dataset(ctx, overrides, 1)
    pairs = [r for r in ctx.rows(ctx.checkpoint(1, "dataset.jsonl")) if r["cycle"] == 1]
    references = {r["question_id"]: r for r in ctx.rows(ctx.checkpoint(1, "references.jsonl"))}
    body = dataset_review_body(1, pairs, references, summary)
    assert "**Cycle 1**: 2 new pair(s)" in body
    assert "| `pods-1` | What is a Pod? | A Pod is the smallest deployable unit" in body
    assert "| kept | support 0.91 |" in body and "| rewritten | support 0.77 |" in body
    assert "**Dropped by the gate** (1; never trained on)" in body
    assert "| `pods-3` | Who painted the Sistine Chapel ceiling? | no passage sentence answers the question |" in body


def test_dropped_pairs_leave_this_and_later_cycles_and_the_dataset_says_who_dropped_them(run):
    ctx, overrides = run
    before, _ = _dataset(ctx, overrides, 1)
    assert before == ["pods-1", "pods-2"]
    decision = decide("dataset", [DROP], {DROP_PARAM: ["pods-2"]}, by="alice (1)", at=AT, cycle=1,
                      pair_ids=before)
    record_decision(ctx.store, RUN, decision)
    assert ctx.store.exists(review_key(RUN, "dataset", 1))
    after, summary = _dataset(ctx, overrides, 1)
    assert after == ["pods-1"] and _train_ids(ctx, 1) == ["pods-1"]  # what fine-tuning reads
    assert summary["reviewer_dropped"] == [{"cycle": 1, "question_id": "pods-2",
                                            "question": "How do the containers of a Pod share storage?",
                                            "by": "alice (1)", "at": AT.isoformat(), "review_cycle": 1}]
    # cycle 2 accumulates cycle 1's pairs: the dropped one stays out
    second, summary = _dataset(ctx, overrides, 2)
    assert second == ["pods-1", "pods-4"] and [d["question_id"] for d in summary["reviewer_dropped"]] == ["pods-2"]


def test_an_approval_or_no_review_leaves_the_dataset_as_it_was(run):
    ctx, overrides = run
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=1)
    unreviewed = ctx.checkpoint(1, "dataset.jsonl").sha256
    record_decision(ctx.store, RUN, decide("dataset", [APPROVE], {}, by="alice", at=AT, cycle=1))
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=1)
    assert ctx.checkpoint(1, "dataset.jsonl").sha256 == unreviewed


GATE_PROMOTES = {"promote": True, "reason": "beats the model the run started from", "split": "gold"}


@pytest.mark.parametrize(("on", "answer", "promote", "reason"), [
    (False, None, True, "beats the model the run started from"),  # review off: the gate alone
    (True, PROMOTE, True, "beats the model the run started from"),
    (True, KEEP, False, "promotion review: kept the current champion (carol (3)"),
    (True, "timeout", False, "promotion review: kept the current champion (the review timed out; default taken"),
    (True, None, False, "no promotion review was answered; kept the champion"),  # fails closed
])
def test_a_promotion_needs_the_reviewers_approval_when_review_promotion_is_on(tmp_path, on, answer, promote, reason):
    overrides = {"store": {"url": str(tmp_path)}, "review": {"promotion": on}}
    ctx = RunContext.create(RUN, overrides)
    if answer is not None:
        timed_out = answer == "timeout"
        record_decision(ctx.store, RUN, decide("promotion", [KEEP if timed_out else answer], {},
                                               by=None if timed_out else "carol (3)", at=AT, timed_out=timed_out))
    decision = with_review(ctx, GATE_PROMOTES)
    assert decision["promote"] is promote and decision["reason"].startswith(reason)
    assert ("review" in decision) is (on and answer is not None)
    # a gate that refuses is never overruled
    assert with_review(ctx, {**GATE_PROMOTES, "promote": False})["promote"] is False


def test_the_report_lists_every_answered_review(tmp_path):
    ctx = RunContext.create(RUN, {"store": {"url": str(tmp_path)}})
    record_decision(ctx.store, RUN, decide("dataset", [DROP], {DROP_PARAM: ["q1"]}, by="a", at=AT, cycle=1,
                                           pair_ids=["q1"]))
    record_decision(ctx.store, RUN, decide("promotion", [KEEP], {}, by=None, at=AT, timed_out=True))
    reviews = run_decisions(ctx.store, RUN, [1, 2])
    assert [(r["review"], r["cycle"], r["outcome"], r["by"], r["timed_out"]) for r in reviews] == [
        ("dataset", 1, "dropped", "a", False), ("promotion", None, "kept", None, True)]
    assert reviews[1]["reason"].startswith("promotion review: kept the current champion (the review timed out")


def test_review_config_is_off_by_default_and_reads_durations():
    review = load_config().review
    assert (review.dataset, review.promotion, review.timeout) == (False, False, dt.timedelta(hours=24))
    assert (review.dataset_default, review.promotion_default) == ("reject", "keep")
    assert load_config({"review": {"timeout": "90s"}}).review.timeout == dt.timedelta(seconds=90)
    assert load_config({"review": {"timeout": "PT2H"}}).review.timeout == dt.timedelta(hours=2)
    from kdflow.config import ConfigError

    with pytest.raises(ConfigError, match="review.timeout: must be a duration such as 24h"):
        load_config({"review": {"timeout": "soon"}})
    with pytest.raises(ConfigError, match="review.timeout: must be a positive duration"):
        load_config({"review": {"timeout": 0}})
    overrides = params_to_overrides({"review_dataset": True, "review_promotion": False, "review_timeout": "30m"})
    assert overrides == {"review": {"dataset": True, "promotion": False, "timeout": "30m"}}


# -- the review tasks, resumed as Airflow resumes them --------------------------------------------------------
class FakeTI:
    map_index = -1
    id = "0193a1b2-0000-7000-8000-000000000021"

    def __init__(self):
        self.xcom: dict = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    from kdflow.pipeline.spec import DAG_ID

    return DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags")).dags[DAG_ID]


def _context(task, **params):
    ti = FakeTI()
    return {"params": {**PARAMS, DROP_PARAM: [], **params}, "run_id": RUN, "task": task, "ti": ti,
            "task_instance": ti}


def _event(option, drop=(), user=("alice", "1")):
    return {"chosen_options": [option], "params_input": {DROP_PARAM: list(drop)}, "responded_at": AT,
            "responded_by_user": {"name": user[0], "id": user[1]} if user else None, "timedout": user is None}


def test_with_review_off_the_review_tasks_return_at_once_without_asking(dag, run, monkeypatch):
    import airflow.providers.standard.operators.hitl as hitl

    asked = []
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: asked.append(kw))
    for task_id in ("cycle_1.review_dataset", "review_promotion"):
        task = dag.get_task(task_id)
        assert task.execute(_context(task)) == {"review": "off"}
    assert asked == []


def test_with_review_on_the_dataset_task_asks_with_the_pairs_and_the_run_timeout(dag, run, monkeypatch):
    import airflow.providers.standard.operators.hitl as hitl
    from airflow.sdk.exceptions import TaskAwaitingInput

    ctx, overrides = run
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=1)
    asked = []
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: asked.append(kw))
    task = dag.get_task("cycle_1.review_dataset")
    with pytest.raises(TaskAwaitingInput) as parked:  # awaiting_input: no worker slot held while a person decides
        task.execute(_context(task, review_dataset=True, review_timeout="90s"))
    assert parked.value.timeout == dt.timedelta(seconds=90)
    [request] = asked
    assert request["options"] == [APPROVE, DROP, REJECT] and request["defaults"] == [REJECT]
    assert "| `pods-2` | How do the containers of a Pod share storage?" in request["body"]
    assert request["params"][DROP_PARAM]["schema"]["items"]["enum"] == ["pods-1", "pods-2"]


def test_a_drop_answer_records_who_and_rebuilds_the_dataset_without_the_pairs(dag, run):
    ctx, overrides = run
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=1)
    task = dag.get_task("cycle_1.review_dataset")
    result = task.execute_complete(_context(task, review_dataset=True), _event(DROP, ["pods-1"]))
    assert result["decision"] == "dropped" and "alice (1)" in result["reason"]
    assert read_decision(ctx.store, RUN, "dataset", 1).dropped == ["pods-1"]
    assert [r["question_id"] for r in ctx.rows(ctx.checkpoint(1, "dataset.jsonl"))] == ["pods-2"]
    assert _train_ids(ctx, 1) == ["pods-2"]


def test_a_reject_answer_skips_every_later_task_of_the_run(dag, run):
    from airflow.sdk.exceptions import DownstreamTasksSkipped

    ctx, overrides = run
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=1)
    task = dag.get_task("cycle_1.review_dataset")
    with pytest.raises(DownstreamTasksSkipped) as skipped:
        task.execute_complete(_context(task, review_dataset=True), _event(REJECT, user=None))  # the timeout default
    later = set(skipped.value.tasks)
    assert {"cycle_1.finetune_student", "cycle_1.save_adapter", "cycle_2.cycle_start", "review_promotion",
            "save_pipeline_results", "show_sample_qa_pairs"} <= later
    assert not later & {"cycle_1.prepare_training_dataset", "cycle_1.save_questions"}
    decision = read_decision(ctx.store, RUN, "dataset", 1)
    assert (decision.outcome, decision.by, decision.timed_out) == ("rejected", None, True)
    assert not ctx.has_checkpoint(1, "adapter")


def test_an_approval_after_a_cleared_reviews_drop_puts_the_pairs_back(dag, run):
    """The latest answer is the cycle's decision: a review cleared and answered again rebuilds the dataset."""
    ctx, overrides = run
    execute("prepare_training_dataset", run_id=RUN, overrides=overrides, cycle=1)
    task = dag.get_task("cycle_1.review_dataset")
    task.execute_complete(_context(task, review_dataset=True), _event(DROP, ["pods-1"]))
    assert _train_ids(ctx, 1) == ["pods-2"]
    result = task.execute_complete(_context(task, review_dataset=True), _event(APPROVE))
    assert result["decision"] == "approved" and _train_ids(ctx, 1) == ["pods-1", "pods-2"]
