"""What every step needs: the validated config, the store, the run id, and the stage/publish
protocol of checkpoints.

A "Generate ..." step *stages* its rows under ``cycle_<n>/staging/<name>``; the matching
"Save ..." step validates them (schema, count, hash), *publishes* them under the final key
``cycle_<n>/<name>`` and records the pointer in the run manifest. Keys depend only on run id,
cycle and step, so a rerun overwrites its own objects and nothing else.

A context bound to a step (:meth:`RunContext.for_step`) is how that step receives its inputs: the
pointers of the steps it names (:meth:`RunContext.pointer`) and published checkpoints
(:meth:`RunContext.checkpoint`), each refused unless the registry declares it, and each recorded,
as is every checkpoint the step publishes. An unbound context (tests, library use) checks nothing.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ValidationError

from kdflow.config import KdflowConfig, load_config, mask_secrets
from kdflow.pipeline.spec import StepSpec
from kdflow.records import SCHEMAS
from kdflow.store import ArtifactStore, Pointer, StoreError, cycle_key, run_key

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A staged checkpoint failed validation; nothing was published."""


class UndeclaredInputError(RuntimeError):
    """A step read a pointer or checkpoint, or published a checkpoint, that its registry entry does not declare."""


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if name.endswith((".json", ".jsonl")) else name


@dataclass
class StepAccess:
    """The running step: its declaration, the pointers it was handed, and what it read and published
    (``(cycle, checkpoint)`` pairs, cycle None at run level)."""

    spec: StepSpec
    cycle: int | None
    pointers: dict[str, Any]
    reads: list[tuple[int | None, str]] = field(default_factory=list)
    published: list[tuple[int | None, str]] = field(default_factory=list)
    outputs: dict[str, Pointer] = field(default_factory=dict)  # checkpoint name -> the pointer published

    def read(self, cycle: int | None, name: str) -> None:
        if not self.spec.declares_read(self.cycle, cycle, name):
            where = "the run" if cycle is None else f"cycle {cycle}"
            raise UndeclaredInputError(f"step {self.spec.id} (cycle {self.cycle}) read checkpoint {name} of {where}, "
                                       "which its registry entry does not declare")
        self.reads.append((cycle, name))

    def check_publish(self, name: str) -> None:
        if name not in self.spec.produces:
            raise UndeclaredInputError(f"step {self.spec.id} published {name}, "
                                       "which its registry entry does not declare")

    def publish(self, cycle: int | None, name: str, pointer: Pointer | None = None) -> None:
        self.check_publish(name)
        self.published.append((cycle, name))
        if pointer is not None:
            self.outputs[name] = pointer


@dataclass
class RunContext:
    config: KdflowConfig
    store: ArtifactStore
    run_id: str
    overrides: dict[str, Any] = field(default_factory=dict)
    access: StepAccess | None = None

    @classmethod
    def create(cls, run_id: str, overrides: Mapping[str, Any] | None = None, *,
               config: KdflowConfig | None = None) -> RunContext:
        """Open the store of ``config``, the configuration validated from defaults < file < env <
        ``overrides`` (validated here when not given: pass it when the caller already has it)."""
        config = config if config is not None else load_config(overrides or {})
        store = ArtifactStore.from_config(config)
        return cls(config=config, store=store, run_id=run_id, overrides=dict(overrides or {}))

    def for_step(self, spec: StepSpec, cycle: int | None, pointers: Mapping[str, Any] | None = None) -> RunContext:
        """This context bound to one step of one cycle, with the pointers its ``step(...)`` inputs returned."""
        return replace(self, access=StepAccess(spec, cycle, dict(pointers or {})))

    def pointer(self, step_id: str) -> dict[str, Any]:
        """The pointer/summary that step ``step_id`` returned (staged, not yet published)."""
        if self.access is None:
            raise UndeclaredInputError(f"no step is running: nothing hands out the pointer of {step_id}")
        if step_id not in self.access.spec.step_inputs:
            raise UndeclaredInputError(f"step {self.access.spec.id} read the pointer of {step_id}, "
                                       "which its registry entry does not declare")
        if step_id not in self.access.pointers:
            raise CheckpointError(f"step {self.access.spec.id} was not handed the pointer of {step_id}")
        return self.access.pointers[step_id]

    # -- secrets -------------------------------------------------------------------------------
    @functools.cached_property
    def secrets(self) -> frozenset[str]:
        return self.config.secret_values()

    def mask(self, obj: Any) -> Any:
        """``obj`` without any of the run's secret values (store credentials, the teacher's API key):
        every JSON object and summary a step writes goes through here, so no artifact, manifest or
        task output holds one, whichever way it came in (``--set``, env var, DAG param)."""
        return mask_secrets(obj, self.secrets)

    def _masked_kw(self, kw: dict[str, Any]) -> dict[str, Any]:
        return {**kw, "summary": self.mask(kw["summary"])} if kw.get("summary") else kw

    # -- keys ----------------------------------------------------------------------------------
    def key(self, cycle: int | None, name: str) -> str:
        return run_key(self.run_id, name) if cycle is None else cycle_key(self.run_id, cycle, name)

    def staging_key(self, cycle: int | None, name: str) -> str:
        return run_key(self.run_id, *(["staging"] if cycle is None else [f"cycle_{cycle}", "staging"]), name)

    # -- rows ----------------------------------------------------------------------------------
    def stage_rows(
        self, cycle: int | None, name: str, rows: Iterable[BaseModel | Mapping[str, Any]], **kw: Any
    ) -> Pointer:
        return self.store.write_jsonl(self.staging_key(cycle, name), rows, **self._masked_kw(kw))

    def stage_json(self, cycle: int | None, name: str, obj: Any, **kw: Any) -> Pointer:
        return self.store.write_json(self.staging_key(cycle, name), self.mask(obj), **self._masked_kw(kw))

    def publish(
        self, cycle: int | None, name: str, staged: Pointer | Mapping[str, Any], *, schema: str | None = None
    ) -> Pointer:
        """Validate a staged artifact and publish it under its final key, atomically."""
        self._may_publish(name)
        staged = Pointer.of(staged)
        try:
            data = self.store.read_verified(staged)
        except StoreError as exc:
            raise CheckpointError(f"cannot publish {name}: {exc}") from None
        count = staged.count
        if schema is not None:
            model = SCHEMAS[schema]
            lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
            if staged.count is not None and len(lines) != staged.count:
                raise CheckpointError(f"{name}: staged {staged.count} rows but found {len(lines)}")
            for number, line in enumerate(lines, 1):
                try:
                    model.model_validate(json.loads(line))
                except (ValidationError, json.JSONDecodeError) as exc:
                    raise CheckpointError(f"{name}: row {number} does not match the {schema} schema: {exc}") from None
            count = len(lines)
        final = self.store.write_bytes(self.key(cycle, name), data, count=count, summary=staged.summary)
        self.record(cycle, name, final)
        log.info("published %s (%s rows, sha256 %s)", final.url, count, final.sha256[:12])
        return final

    def publish_json(self, cycle: int | None, name: str, obj: Any, **kw: Any) -> Pointer:
        """Write a small summary object directly under its final key and record it."""
        self._may_publish(name)
        pointer = self.store.write_json(self.key(cycle, name), self.mask(obj), **self._masked_kw(kw))
        self.record(cycle, name, pointer)
        return pointer

    def _may_publish(self, name: str) -> None:
        """Refuse an undeclared checkpoint before anything is written under its final key."""
        if self.access is not None:
            self.access.check_publish(_stem(name))

    def record(self, cycle: int | None, name: str, pointer: Pointer) -> None:
        """Record ``pointer`` in the run manifest as checkpoint ``name`` (written under its final key)."""
        if self.access is not None:
            self.access.publish(cycle, _stem(name), pointer)
        self.store.record_checkpoint(self.run_id, self.checkpoint_name(cycle, name), pointer)

    @staticmethod
    def checkpoint_name(cycle: int | None, name: str) -> str:
        return _stem(name) if cycle is None else f"cycle_{cycle}.{_stem(name)}"

    def _read(self, cycle: int | None, name: str) -> str:
        """The manifest key of a checkpoint, once the running step is allowed to read it."""
        if self.access is not None:
            self.access.read(cycle, _stem(name))
        return run_key(self.run_id, "manifest", f"{self.checkpoint_name(cycle, name)}.json")

    def checkpoint(self, cycle: int | None, name: str) -> Pointer:
        """The published pointer of a checkpoint of this run (from the manifest)."""
        key = self._read(cycle, name)
        if not self.store.exists(key):
            raise CheckpointError(
                f"checkpoint {self.checkpoint_name(cycle, name)} of run {self.run_id} is not published yet")
        return Pointer.of(self.store.read_json(key))

    def has_checkpoint(self, cycle: int | None, name: str) -> bool:
        return self.store.exists(self._read(cycle, name))

    def rows(self, pointer: Pointer | Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.store.read_jsonl(pointer)
