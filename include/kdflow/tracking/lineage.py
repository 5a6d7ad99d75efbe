"""Lineage of one step: the store objects it read and the ones it published, as URIs an OpenLineage
dataset can be named by. Plain data: :func:`kdflow.pipeline.airflow_tasks.report_lineage` hands them to
Airflow's hook lineage collector, which the OpenLineage provider turns into each task's input and
output datasets.

Inputs are the checkpoints the step read through the run manifest and the staged objects whose pointers
it was handed (XCom); outputs are the checkpoints it published. A folder (an adapter, a report) is named
without its version, so a rerun's folder is the same dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdflow.store import DIR_MARKER, Pointer, StoreError

if TYPE_CHECKING:
    from kdflow.pipeline.context import RunContext


def dataset_uri(ctx: RunContext, pointer: Pointer | dict[str, Any]) -> str:
    """``file:///...`` or ``s3://bucket/...`` of a stored object (an Airflow connection id in an S3 URL's
    user part, ``s3://minio@bucket``, names credentials, not the object, and is left out)."""
    pointer = Pointer.of(pointer)
    url = ctx.store.folder_url(pointer) if pointer.key.endswith(DIR_MARKER) else pointer.url
    scheme, sep, rest = url.partition("://")
    if sep and scheme != "file":
        netloc, _, path = rest.partition("/")
        url = f"{scheme}://{netloc.rpartition('@')[2]}/{path}"
    return url


def step_datasets(ctx: RunContext) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of the step ``ctx`` is bound to, as dataset URIs, each once, in the order met."""
    access = ctx.access
    if access is None:
        return [], []
    inputs: list[str] = []
    for cycle, name in access.reads:
        try:
            inputs.append(dataset_uri(ctx, ctx.store.checkpoint_pointer(ctx.run_id, ctx.checkpoint_name(cycle, name))))
        except (StoreError, FileNotFoundError, OSError):  # read as absent (has_checkpoint): no dataset
            continue
    for pointer in access.pointers.values():
        if isinstance(pointer, dict) and {"url", "key", "sha256", "bytes"} <= set(pointer):
            inputs.append(dataset_uri(ctx, pointer))
    outputs = [dataset_uri(ctx, pointer) for pointer in access.outputs.values()]
    return list(dict.fromkeys(inputs)), list(dict.fromkeys(outputs))
