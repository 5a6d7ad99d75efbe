"""What every step needs: the validated config, the store, the run id, and the stage/publish
protocol of checkpoints.

A "Generate ..." step *stages* its rows under ``cycle_<n>/staging/<name>``; the matching
"Save ..." step validates them (schema, count, hash), *publishes* them under the final key
``cycle_<n>/<name>`` and records the pointer in the run manifest. Keys depend only on run id,
cycle and step, so a rerun overwrites its own objects and nothing else.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from kdflow.config import KdflowConfig, load_config, mask_secrets
from kdflow.records import SCHEMAS
from kdflow.store import ArtifactStore, Pointer, StoreError, cycle_key, run_key

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A staged checkpoint failed validation; nothing was published."""


@dataclass
class RunContext:
    config: KdflowConfig
    store: ArtifactStore
    run_id: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, run_id: str, overrides: Mapping[str, Any] | None = None) -> RunContext:
        """Validate the configuration (defaults < file < env < ``overrides``) and open the store."""
        config = load_config(overrides or {})
        return cls(config=config, store=ArtifactStore.from_config(config), run_id=run_id, overrides=dict(overrides or {}))

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
    def stage_rows(self, cycle: int | None, name: str, rows: Iterable[BaseModel | Mapping[str, Any]], **kw: Any) -> Pointer:
        return self.store.write_jsonl(self.staging_key(cycle, name), rows, **self._masked_kw(kw))

    def stage_json(self, cycle: int | None, name: str, obj: Any, **kw: Any) -> Pointer:
        return self.store.write_json(self.staging_key(cycle, name), self.mask(obj), **self._masked_kw(kw))

    def publish(self, cycle: int | None, name: str, staged: Pointer | Mapping[str, Any], *, schema: str | None = None) -> Pointer:
        """Validate a staged artifact and publish it under its final key, atomically."""
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
        self.store.record_checkpoint(self.run_id, self.checkpoint_name(cycle, name), final)
        log.info("published %s (%s rows, sha256 %s)", final.url, count, final.sha256[:12])
        return final

    def publish_json(self, cycle: int | None, name: str, obj: Any, **kw: Any) -> Pointer:
        """Write a small summary object directly under its final key and record it."""
        pointer = self.store.write_json(self.key(cycle, name), self.mask(obj), **self._masked_kw(kw))
        self.store.record_checkpoint(self.run_id, self.checkpoint_name(cycle, name), pointer)
        return pointer

    @staticmethod
    def checkpoint_name(cycle: int | None, name: str) -> str:
        stem = name.rsplit(".", 1)[0] if name.endswith((".json", ".jsonl")) else name
        return stem if cycle is None else f"cycle_{cycle}.{stem}"

    def checkpoint(self, cycle: int | None, name: str) -> Pointer:
        """The published pointer of a checkpoint of this run (from the manifest)."""
        key = run_key(self.run_id, "manifest", f"{self.checkpoint_name(cycle, name)}.json")
        if not self.store.exists(key):
            raise CheckpointError(f"checkpoint {self.checkpoint_name(cycle, name)} of run {self.run_id} is not published yet")
        return Pointer.of(self.store.read_json(key))

    def has_checkpoint(self, cycle: int | None, name: str) -> bool:
        return self.store.exists(run_key(self.run_id, "manifest", f"{self.checkpoint_name(cycle, name)}.json"))

    def rows(self, pointer: Pointer | Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.store.read_jsonl(pointer)
