"""What a step is: its box text, its kind, the function it runs, what it reads and what it publishes.

Kept apart from the table of steps (registry.py), which imports every step module: the run context
checks a step's reads against its declaration here without importing any step.

A step reads two kinds of input, both declared in ``inputs`` and both handed out by the run context
(:meth:`RunContext.pointer`, :meth:`RunContext.checkpoint`), which refuses anything undeclared:

- ``step("generate_questions")``: the pointer another step of the same cycle (or of the setup or
  final steps) returned, carried by XCom in Airflow and in memory by the CLI runner; used for what
  is staged and not yet published;
- a published checkpoint of the run manifest: ``this("questions")`` of the step's own cycle,
  ``previous("adapter")`` of the cycle before, ``earlier("questions")`` of every earlier cycle,
  ``every_cycle("results")`` of every cycle (final steps), ``run("held_out")`` of the run.

The DAG draws one edge per declared input (from the step that returned the pointer or published the
checkpoint) on top of the diagram's order, so the declaration is also the dependency graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

DAG_ID = "knowledge_distillation"  # the DAG of dags/knowledge_distillation.py, whose runs write the reports

Kind = Literal["setup", "teacher", "student", "evaluation", "checkpoint", "report"]
Scope = Literal["step", "this", "previous", "earlier", "every_cycle", "run"]


@dataclass(frozen=True)
class Input:
    """One declared input: a step's pointer (``scope="step"``, ``name`` its id) or a checkpoint
    (``name`` its manifest name without cycle or extension, e.g. ``questions``)."""

    scope: Scope
    name: str

    def covers(self, step_cycle: int | None, cycle: int | None, name: str) -> bool:
        """Whether reading checkpoint ``name`` of ``cycle`` (None: run level) from a step running in
        ``step_cycle`` is what this declaration allows."""
        if self.scope == "step" or self.name != name:
            return False
        if cycle is None:
            return self.scope == "run"
        if self.scope == "every_cycle":
            return True
        if step_cycle is None:
            return False
        return {"this": cycle == step_cycle, "previous": cycle == step_cycle - 1,
                "earlier": cycle < step_cycle}.get(self.scope, False)


def step(step_id: str) -> Input:
    return Input("step", step_id)


def this(name: str) -> Input:
    return Input("this", name)


def previous(name: str) -> Input:
    return Input("previous", name)


def earlier(name: str) -> Input:
    return Input("earlier", name)


def every_cycle(name: str) -> Input:
    return Input("every_cycle", name)


def run(name: str) -> Input:
    return Input("run", name)


StepFunction = Callable[..., dict[str, Any]]  # step(ctx: RunContext, cycle: int | None) -> pointer/summary dict


@dataclass(frozen=True)
class StepSpec:
    id: str
    # box text; {n} cycle, {prev} cycle before, {q} questions, {pairs} accumulated pairs, {teacher},
    # {student}, {kb} knowledge base, {topics}, {metric} the headline (promotion) metric
    display: str
    kind: Kind
    func: StepFunction
    inputs: tuple[Input, ...] = ()
    produces: tuple[str, ...] = ()  # checkpoints it publishes (run level for setup and final steps)
    display_later: str | None = None  # box text in cycles after the first, where the diagram differs

    def display_name(self, cycle: int | None = None, **names: object) -> str:
        template = self.display_later if (cycle or 0) > 1 and self.display_later else self.display
        return template.format(n=cycle, **names)

    @property
    def uses_student(self) -> bool:
        return self.kind == "student"

    @property
    def step_inputs(self) -> tuple[str, ...]:
        """Ids of the steps whose returned pointers this step reads."""
        return tuple(i.name for i in self.inputs if i.scope == "step")

    @property
    def checkpoint_inputs(self) -> tuple[Input, ...]:
        return tuple(i for i in self.inputs if i.scope != "step")

    def declares_read(self, step_cycle: int | None, cycle: int | None, name: str) -> bool:
        return any(i.covers(step_cycle, cycle, name) for i in self.checkpoint_inputs)
