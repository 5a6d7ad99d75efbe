"""The review tasks of the DAG: Airflow's human-in-the-loop operator asking a person (``review.dataset``,
``review.promotion``), and where the DAG places them. Beyond the design diagram: they are extra tasks,
after "Prepare Training Dataset" of each cycle and before "Save Complete Pipeline Results" (which decides
the promotion); when the run's review is off they finish at once, changing nothing.

A waiting review parks its task in Airflow's ``awaiting_input`` state: no worker slot, no pool slot, no
triggerer. The reviewer answers in the UI (Browse -> Required Actions, or the task's page) or through the
REST API (``PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/-1/hitlDetails``); the scheduler
then resumes the task on a worker, which records the decision (:mod:`kdflow.pipeline.review`) and acts on it.
A review left unanswered for ``review.timeout`` is resumed by the scheduler with the configured default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import SkipMixin
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param, TriggerRule

from kdflow.config import AirflowConfig
from kdflow.pipeline.review import (
    DATASET_OPTIONS,
    DEFAULT_OPTIONS,
    DROP_PARAM,
    PROMOTION_OPTIONS,
    Review,
    ReviewDecision,
)

if TYPE_CHECKING:
    from kdflow.pipeline.context import RunContext

# The step each review follows, and the review's task id (in a cycle's group for the dataset review).
REVIEW_AFTER: dict[str, Review] = {"prepare_training_dataset": "dataset", "calculate_overall_improvement": "promotion"}
REVIEW_DISPLAY = {"dataset": "Review Cycle {n} Training Data (review.dataset)",
                  "promotion": "Review the Promotion (review.promotion)"}


def review_task_id(review: Review) -> str:
    return f"review_{review}"


def _run_context(context: Any) -> RunContext:
    """The run's context from the task's: its params (the DAG-run conf) as config overrides. The review
    form's own field is a task param, so only the DAG's params are read."""
    from kdflow.pipeline.context import RunContext
    from kdflow.pipeline.params import PARAM_FIELDS, params_to_overrides

    params = {k: v for k, v in context["params"].items() if k in PARAM_FIELDS}
    return RunContext.create(context["run_id"], params_to_overrides(params))


class _Review(HITLOperator, SkipMixin):
    """Ask only when the run's config turns this review on; otherwise return at once (no request, no wait)."""

    inherits_from_skipmixin = True
    review: Review

    def __init__(self, *, cycle: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cycle = cycle

    def ask(self, context: Any, ctx: RunContext) -> dict[str, Any] | None:
        """Prepare the request (``self.body``, ...); return a result instead to finish without asking."""
        raise NotImplementedError

    def act(self, context: Any, ctx: RunContext, decision: ReviewDecision) -> dict[str, Any]:
        raise NotImplementedError

    def execute(self, context: Any) -> Any:
        ctx = _run_context(context)
        review = ctx.config.review
        if not getattr(review, self.review):
            self.log.info("review.%s is off for this run: nothing to review", self.review)
            return {"review": "off"}
        done = self.ask(context, ctx)
        if done is not None:
            return done
        default = getattr(review, f"{self.review}_default")
        self.defaults = [DEFAULT_OPTIONS[(self.review, default)]]
        self.response_timeout = review.timeout
        self.log.info("waiting up to %s for a reviewer (then: %s)", review.timeout, self.defaults[0])
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from kdflow.pipeline.review import decide, record_decision

        answer = super().execute_complete(context, event)
        user = answer["responded_by_user"]
        ctx = _run_context(context)
        decision = decide(self.review, list(answer["chosen_options"]), answer["params_input"],
                          by=f"{user['name']} ({user['id']})" if user else None, at=answer["responded_at"],
                          timed_out=bool(event.get("timedout")) or user is None, cycle=self.cycle,
                          pair_ids=self.pair_ids(ctx))
        record_decision(ctx.store, ctx.run_id, decision)
        self.log.info("%s", decision.reason)
        return self.act(context, ctx, decision)

    def pair_ids(self, ctx: RunContext) -> list[str]:
        return []


class DatasetReview(_Review):
    """After "Prepare Training Dataset": approve the cycle's pairs, drop named ones, or reject the cycle."""

    review = "dataset"

    def __init__(self, **kwargs: Any) -> None:
        cycle = kwargs["cycle"]
        kwargs.pop("params", None)  # the DAG's params, handed down by Airflow: the run's, not this form's
        super().__init__(
            subject=f"Cycle {cycle}: review the training pairs before fine-tuning",
            options=list(DATASET_OPTIONS),
            params={DROP_PARAM: Param([], type="array", items={"type": "string"}, title="Pairs to drop", source="task",
                                      description="Question ids (first column) of the pairs to drop, with the "
                                                  f"option {DATASET_OPTIONS[1]!r}")},
            **kwargs)

    def _cycle_pairs(self, ctx: RunContext) -> list[dict[str, Any]]:
        return [row for row in ctx.rows(ctx.checkpoint(self.cycle, "dataset.jsonl")) if row["cycle"] == self.cycle]

    def pair_ids(self, ctx: RunContext) -> list[str]:
        return [row["question_id"] for row in self._cycle_pairs(ctx)]

    def ask(self, context: Any, ctx: RunContext) -> dict[str, Any] | None:
        from kdflow.pipeline.review import dataset_review_body

        dataset = ctx.checkpoint(self.cycle, "dataset.jsonl")
        pairs = self._cycle_pairs(ctx)
        references = {row["question_id"]: row for row in ctx.rows(ctx.checkpoint(self.cycle, "references.jsonl"))}
        self.body = dataset_review_body(self.cycle, pairs, references, dataset.summary or {})
        ids = [row["question_id"] for row in pairs]
        self.params = type(self.params)({DROP_PARAM: Param(
            [], type="array", items={"type": "string", "enum": ids} if ids else {"type": "string"},
            uniqueItems=True, title="Pairs to drop", source="task",
            description=f"The pairs to drop, with the option {DATASET_OPTIONS[1]!r}")})
        return None

    def act(self, context: Any, ctx: RunContext, decision: ReviewDecision) -> dict[str, Any]:
        if decision.outcome == "rejected":
            later = [t for t in context["task"].get_flat_relatives(upstream=False) if not t.is_teardown]
            self.log.warning("skipping %d later task(s) of the run: %s", len(later), decision.reason)
            self.skip(ti=context["ti"], tasks=later)  # raises: the task succeeds, everything after it is skipped
        result: dict[str, Any] = {"decision": decision.outcome, "reason": decision.reason}
        summary = ctx.checkpoint(self.cycle, "dataset.jsonl").summary or {}
        # an approval after a cleared review's earlier drop: the dataset must hold those pairs again
        stale = any(d.get("review_cycle") == self.cycle for d in summary.get("reviewer_dropped") or [])
        if decision.outcome == "dropped" or stale:
            from kdflow.pipeline import run_step
            from kdflow.pipeline.registry import ALL_STEPS

            # The dataset step again: it reads the recorded decision and leaves the dropped pairs out.
            result["dataset"] = run_step(ctx.for_step(ALL_STEPS["prepare_training_dataset"], self.cycle))
        return result


class PromotionReview(_Review):
    """Before "Save Complete Pipeline Results": approve the champion the gate proposes, or keep the current one.
    Asks only when the gate proposes a promotion (a person confirms a promotion; never forces one)."""

    review = "promotion"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(subject="Approve the new champion?", options=list(PROMOTION_OPTIONS), **kwargs)

    def ask(self, context: Any, ctx: RunContext) -> dict[str, Any] | None:
        from kdflow.pipeline.final_steps import completed_cycles, promotion_gate
        from kdflow.pipeline.review import promotion_review_body

        cycles = completed_cycles(ctx)
        gate = promotion_gate(ctx, cycles[-1])
        if not gate["promote"]:
            self.log.info("the gate keeps the champion; nothing to approve: %s", gate["reason"])
            return {"review": "not asked", "reason": gate["reason"]}
        overall = context["ti"].xcom_pull(task_ids="calculate_overall_improvement") or {}
        self.body = promotion_review_body(gate, overall.get("summary"))
        return None

    def act(self, context: Any, ctx: RunContext, decision: ReviewDecision) -> dict[str, Any]:
        return {"decision": decision.outcome, "reason": decision.reason}


def review_after(step_id: str, cycle: int | None, airflow_cfg: AirflowConfig, **extra: Any) -> _Review | None:
    """The review task that follows step ``step_id`` in the DAG, or None: on the default queue, no retries
    (a retry would ask again), the final one under the final steps' trigger rule."""
    review = REVIEW_AFTER.get(step_id)
    if review is None:
        return None
    operator = DatasetReview if review == "dataset" else PromotionReview
    if review == "promotion":
        extra.setdefault("trigger_rule", TriggerRule.NONE_FAILED)
    return operator(task_id=review_task_id(review), task_display_name=REVIEW_DISPLAY[review].format(n=cycle),
                    queue=airflow_cfg.default_queue, retries=0, cycle=cycle, **extra)
