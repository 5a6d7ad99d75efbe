"""A person in the loop: what a reviewer is shown, what each answer means, and where it is recorded.

Two reviews, both off by default (``review.dataset``, ``review.promotion``): after "Prepare Training
Dataset" of each cycle a reviewer approves the cycle's pairs, rejects the cycle (the run stops, nothing
is trained) or drops named pairs (the dataset step removes them before training and records who dropped
what); before a promotion the gate proposes, a reviewer approves the new champion or keeps the current one.
A review not answered within ``review.timeout`` takes the configured default (``review.dataset_default``,
``review.promotion_default``), recorded as a timeout.

This module is Airflow-free: the Airflow operators that ask (Airflow's human-in-the-loop operators) live in
:mod:`kdflow.pipeline.review_tasks`; they build the review body here and turn the answer into a
:class:`ReviewDecision` here, which the dataset step and the promotion then read from the run's store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from kdflow.store import ArtifactStore, Pointer, cycle_key, run_key

Review = Literal["dataset", "promotion"]
Outcome = Literal["approved", "dropped", "rejected", "promoted", "kept"]

# The options the reviewer picks from (the UI shows them as buttons; the REST API takes them as chosen_options).
APPROVE = "Approve"
DROP = "Drop the chosen pairs"
REJECT = "Reject the cycle"
PROMOTE = "Promote"
KEEP = "Keep the champion"
DATASET_OPTIONS = [APPROVE, DROP, REJECT]
PROMOTION_OPTIONS = [PROMOTE, KEEP]
DROP_PARAM = "drop"  # the review form's field: question ids of the pairs to drop (with the DROP option)

_OUTCOMES: dict[str, Outcome] = {APPROVE: "approved", DROP: "dropped", REJECT: "rejected", PROMOTE: "promoted",
                                 KEEP: "kept"}
DEFAULT_OPTIONS = {("dataset", "reject"): REJECT, ("dataset", "approve"): APPROVE,
                   ("promotion", "keep"): KEEP, ("promotion", "promote"): PROMOTE}
_SHOWN_CHARS = 300  # a question or reference longer than this is cut in the review body


class ReviewError(ValueError):
    """A review answer that cannot be applied (e.g. dropping a pair the dataset does not hold)."""


class ReviewDecision(BaseModel):
    """One answered review: who (``by``; None when the timeout took the default), when, and what."""

    review: Review
    cycle: int | None = None  # the dataset review's cycle; None for the promotion
    outcome: Outcome
    option: str
    dropped: list[str] = Field(default_factory=list)  # question ids the reviewer dropped
    by: str | None = None
    at: str
    timed_out: bool = False

    @property
    def reason(self) -> str:
        """One line for the task log, the skip reason and the report."""
        who = "the review timed out; default taken" if self.timed_out else f"{self.by or 'a reviewer'}"
        what = {"approved": "approved the pairs", "dropped": f"dropped {', '.join(self.dropped)}",
                "rejected": "rejected the cycle: nothing is trained", "promoted": "approved the new champion",
                "kept": "kept the current champion"}[self.outcome]
        where = f"cycle {self.cycle} " if self.cycle else ""
        return f"{where}{self.review} review: {what} ({who}, {self.at})"


def decide(review: Review, chosen: list[str], params_input: Mapping[str, Any] | None, *, by: str | None,
           at: dt.datetime | str, timed_out: bool = False, cycle: int | None = None,
           pair_ids: Iterable[str] = ()) -> ReviewDecision:
    """The decision an answer means: ``chosen`` options (one) and the form's ``params_input``; ``pair_ids``
    are the question ids a dataset review may drop."""
    options = DATASET_OPTIONS if review == "dataset" else PROMOTION_OPTIONS
    if len(chosen) != 1 or chosen[0] not in options:
        raise ReviewError(f"{review} review: expected one of {options}, got {chosen}")
    dropped = [str(i) for i in (params_input or {}).get(DROP_PARAM) or []] if chosen[0] == DROP else []
    if chosen[0] == DROP:
        unknown = sorted(set(dropped) - set(pair_ids))
        if not dropped or unknown:
            raise ReviewError(f"cycle {cycle} review chose {DROP!r} but "
                              + (f"named pairs the dataset does not hold: {unknown}" if unknown
                                 else f"named no pair in the {DROP_PARAM!r} field"))
    at = at.isoformat() if isinstance(at, dt.datetime) else str(at)
    return ReviewDecision(review=review, cycle=cycle, outcome=_OUTCOMES[chosen[0]], option=chosen[0],
                          dropped=list(dict.fromkeys(dropped)), by=by, at=at, timed_out=timed_out)


def review_key(run_id: str, review: Review, cycle: int | None = None) -> str:
    """``runs/<run>/cycle_<n>/review_dataset.json`` or ``runs/<run>/review_promotion.json``."""
    return cycle_key(run_id, cycle, f"review_{review}", ".json") if cycle else run_key(run_id, f"review_{review}.json")


def record_decision(store: ArtifactStore, run_id: str, decision: ReviewDecision) -> Pointer:
    """Write the decision under its run/cycle key, atomically (an answer to a rerun's review replaces it)."""
    return store.write_json(review_key(run_id, decision.review, decision.cycle), decision.model_dump(mode="json"))


def read_decision(store: ArtifactStore, run_id: str, review: Review, cycle: int | None = None) -> ReviewDecision | None:
    key = review_key(run_id, review, cycle)
    return ReviewDecision.model_validate(store.read_json(key)) if store.exists(key) else None


def run_decisions(store: ArtifactStore, run_id: str, cycles: Iterable[int]) -> list[dict[str, Any]]:
    """Every answered review of the run, cycles first: what the report lists."""
    found = [read_decision(store, run_id, "dataset", n) for n in cycles]
    found.append(read_decision(store, run_id, "promotion"))
    return [{**d.model_dump(mode="json"), "reason": d.reason} for d in found if d is not None]


def reviewer_drops(store: ArtifactStore, run_id: str, up_to_cycle: int) -> dict[str, ReviewDecision]:
    """Question id -> the dataset review that dropped it, over cycles 1..``up_to_cycle`` (a pair dropped in
    cycle 1 stays out of every later cycle's accumulated dataset)."""
    drops: dict[str, ReviewDecision] = {}
    for n in range(1, up_to_cycle + 1):
        decision = read_decision(store, run_id, "dataset", n)
        if decision is not None and decision.outcome == "dropped":
            drops.update({qid: decision for qid in decision.dropped})
    return drops


def _cut(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 1] + "…"


def _scores(gate: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in (gate.get("scores") or {}).items()) or "-"


def dataset_review_body(cycle: int, pairs: list[Mapping[str, Any]], references: Mapping[str, Mapping[str, Any]],
                        summary: Mapping[str, Any]) -> str:
    """Markdown for the reviewer: this cycle's pairs (question, reference, gate decision and scores) and the
    references the gate dropped, with their reason. ``pairs`` are the dataset's rows of this cycle,
    ``references`` the cycle's references by question id, ``summary`` the dataset checkpoint's summary."""
    lines = [f"**Cycle {cycle}**: {len(pairs)} new pair(s) would be trained on "
             f"({summary.get('pairs', len(pairs))} in the accumulated dataset). "
             f"Approve, reject the cycle (the run stops, nothing is trained), or choose "
             f"*{DROP}* and name their ids in the **{DROP_PARAM}** field.", "",
             "| id | question | reference | gate | scores |", "|---|---|---|---|---|"]
    for pair in pairs:
        gate = (references.get(pair["question_id"]) or {}).get("gate") or {}
        lines.append(f"| `{pair['question_id']}` | {_cut(pair['prompt'])} | {_cut(pair['completion'])} "
                     f"| {gate.get('decision', 'none')} | {_scores(gate)} |")
    dropped = [d for d in summary.get("dropped_items") or [] if d.get("cycle", cycle) == cycle]
    if dropped:
        lines += ["", f"**Dropped by the gate** ({len(dropped)}; never trained on):", "",
                  "| id | question | reason |", "|---|---|---|"]
        lines += [f"| `{d['question_id']}` | {_cut(d['question'])} | {_cut(d['reason'])} |" for d in dropped]
    if summary.get("decontaminated"):
        lines += ["", f"{len(summary['decontaminated'])} pair(s) left out as too close to an evaluation question."]
    return "\n".join(lines)


def promotion_review_body(gate: Mapping[str, Any], overall: Mapping[str, Any] | None) -> str:
    """Markdown for the reviewer of a promotion the gate proposes: its verdict and the run's comparison
    (``overall``: ``split.metric`` -> verdict and mean change, as Calculate Overall Improvement logs it)."""
    lines = [f"The promotion gate proposes a new champion: **{gate.get('reason', '')}**", "",
             f"- metric: {gate.get('metric')} on the {gate.get('split')} set, {gate.get('questions')} question(s)",
             f"- candidate mean {gate.get('candidate_mean')}, model the run started from "
             f"({gate.get('incumbent', 'base model')}) {gate.get('champion_mean')}",
             f"- paired delta {gate.get('delta')} (interval {gate.get('ci_low')} .. {gate.get('ci_high')}), "
             f"verdict {gate.get('verdict')}"]
    if overall:
        lines += ["", "| split.metric | verdict (mean change) |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in overall.items()]
    lines += ["", f"*{PROMOTE}* makes it the champion; *{KEEP}* leaves the current one."]
    return "\n".join(lines)
