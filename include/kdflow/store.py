"""The artifact store: every artifact of every run lives under one fsspec URL.

``file:///abs/dir`` or a plain folder is the default; ``s3://<airflow-conn-id>@bucket/prefix``
goes through Airflow's ``ObjectStoragePath`` (credentials and ``endpoint_url`` from the
connection, so MinIO works); any other fsspec URL goes through universal-pathlib with
``storage_options``. Writes are atomic: a local file is written beside its target and renamed;
an object-store object is one PUT, which S3 never shows half-written. A folder (adapter, report)
is published as a new version beside the old one and becomes current when its pointer switches.

What moves between tasks is a :class:`Pointer` (URL, key, sha256, count), never the data.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

SUPPORTED_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "abfs", "az", "memory"})
_SAFE_PART = re.compile(r"[^A-Za-z0-9._-]+")
DIR_MARKER = "_COMPLETE.json"


class StoreError(RuntimeError):
    """An artifact is missing, corrupt or cannot be written."""


def _new_version() -> str:
    """A fresh, time-ordered folder version name (two publishes of one folder never share one)."""
    import datetime as dt
    import secrets

    return f"v{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}"


_VERSION = re.compile(r"^v\d{8}T\d{12}Z-[0-9a-f]{8}$")


def _folder_version(marker_key: str) -> tuple[str, str | None]:
    """(folder key, version) of a folder marker's key; version None when it is not a versioned one."""
    parts = marker_key.strip("/").split("/")
    if len(parts) >= 3 and parts[-1] == DIR_MARKER and _VERSION.match(parts[-2]):
        return "/".join(parts[:-2]), parts[-2]
    return "/".join(parts[:-1]), None


def url_scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def safe_part(value: str | int) -> str:
    """One path segment from untrusted text (run ids, topics): no separators, no ``..``."""
    text = _SAFE_PART.sub("_", str(value)).strip("._")
    if not text:
        raise StoreError(f"{value!r} cannot be used as a store key segment")
    return text[:200]


def run_key(run_id: str, *parts: str | int) -> str:
    """Key of an artifact of one run: ``runs/<run_id>/<parts...>`` with every part sanitised."""
    return "/".join(["runs", safe_part(run_id), *(safe_part(p) for p in parts)])


def cycle_key(run_id: str, cycle: int, step: str, suffix: str = "") -> str:
    return run_key(run_id, f"cycle_{int(cycle)}", f"{step}{suffix}")


class Pointer(BaseModel):
    """What XCom carries: where an artifact is and how to check it, plus tiny summaries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    key: str
    sha256: str
    bytes: int
    count: int | None = None
    summary: dict[str, Any] = {}

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def of(cls, value: Pointer | Mapping[str, Any]) -> Pointer:
        return value if isinstance(value, Pointer) else cls.model_validate(dict(value))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _normalise_local(url: str) -> str:
    if "://" not in url:
        return Path(url).expanduser().resolve().as_uri()
    return url


def _open_root(url: str, storage_options: Mapping[str, Any]) -> Any:
    scheme = url_scheme(url)
    if scheme not in SUPPORTED_SCHEMES:
        raise StoreError(f"unknown store scheme {scheme!r} in {url!r}; use one of {sorted(SUPPORTED_SCHEMES)}")
    netloc = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    if "@" in netloc:  # s3://conn_id@bucket/...: credentials come from an Airflow connection
        from airflow.sdk import BaseHook, ObjectStoragePath

        conn_id = netloc.split("@", 1)[0]
        try:  # Airflow would fall back to anonymous access to AWS itself: refuse instead
            BaseHook.get_connection(conn_id)
        except Exception as exc:  # noqa: BLE001 - AirflowNotFoundException and lookup failures alike
            raise StoreError(f"store URL {url!r} names the Airflow connection {conn_id!r}, which is not defined "
                             f"({type(exc).__name__}); create it or set AIRFLOW_CONN_{conn_id.upper()}") from None
        return ObjectStoragePath(url)
    from upath import UPath

    return UPath(_normalise_local(url), **dict(storage_options))


class ArtifactStore:
    """Atomic, hash-checked reads and writes of artifacts under one root URL."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.root = _open_root(url, storage_options or {})
        self.url = str(self.root).rstrip("/")
        self.is_local = url_scheme(self.url) == "file"

    @classmethod
    def from_config(cls, config: Any) -> ArtifactStore:
        return cls(config.store.url, config.store.storage_options)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, key: str) -> Any:
        key = key.strip("/")
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise StoreError(f"invalid store key {key!r}")
        return self.root / key

    def url_of(self, key: str) -> str:
        return f"{self.url}/{key.strip('/')}"

    @property
    def fs(self) -> Any:
        return self.root.fs

    def _fs_path(self, key: str) -> str:
        return self.path(key).path

    # -- writes --------------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes, *, count: int | None = None,
                    summary: Mapping[str, Any] | None = None) -> Pointer:
        """Write ``data`` at ``key`` atomically and return its pointer (overwrites a rerun's copy)."""
        target = self._fs_path(key)
        if self.is_local:
            directory = os.path.dirname(target)
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            try:
                self.fs.pipe_file(target, data)
            except Exception as exc:  # noqa: BLE001 - re-raised with the key named
                raise StoreError(f"cannot write {self.url_of(key)}: {exc}") from exc
        return Pointer(
            url=self.url_of(key), key=key, sha256=sha256_bytes(data), bytes=len(data), count=count,
            summary=dict(summary or {})
        )

    def write_json(self, key: str, obj: Any, **kw: Any) -> Pointer:
        data = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False, default=str).encode("utf-8")
        return self.write_bytes(key, data, **kw)

    def write_jsonl(self, key: str, rows: Iterable[Mapping[str, Any] | BaseModel], **kw: Any) -> Pointer:
        lines = [
            json.dumps(r.model_dump(mode="json") if isinstance(r, BaseModel) else r, ensure_ascii=False, default=str)
            for r in rows
        ]
        data = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
        return self.write_bytes(key, data, count=len(lines), **kw)

    # -- reads ---------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.fs.exists(self._fs_path(key))

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._fs_path(key))
        except FileNotFoundError:
            raise StoreError(f"artifact not found: {self.url_of(key)}") from None

    def read_verified(self, pointer: Pointer | Mapping[str, Any]) -> bytes:
        """Read what a pointer points at and check its hash: a rerun upstream shows up here."""
        pointer = Pointer.of(pointer)
        data = self.read_bytes(pointer.key)
        digest = sha256_bytes(data)
        if digest != pointer.sha256:
            raise StoreError(
                f"artifact {pointer.url} changed since it was recorded (sha256 {digest[:12]} != "
                f"{pointer.sha256[:12]}); rerun the task that produced it and its downstream tasks"
            )
        return data

    def read_json(self, key_or_pointer: str | Pointer | Mapping[str, Any]) -> Any:
        return json.loads(self._read_any(key_or_pointer))

    def read_jsonl(self, key_or_pointer: str | Pointer | Mapping[str, Any]) -> list[dict[str, Any]]:
        text = self._read_any(key_or_pointer).decode("utf-8")
        return [json.loads(line) for line in io.StringIO(text) if line.strip()]

    def _read_any(self, key_or_pointer: str | Pointer | Mapping[str, Any]) -> bytes:
        if isinstance(key_or_pointer, str):
            return self.read_bytes(key_or_pointer)
        return self.read_verified(key_or_pointer)

    def list_keys(self, prefix: str) -> list[str]:
        """Keys of all files under ``prefix`` (recursive), relative to the store root, sorted."""
        base = self._fs_path(prefix)
        if not self.fs.exists(base):
            return []
        root = self._fs_path("x")[:-1]
        found = self.fs.find(base)
        return sorted(f[len(root) :] if f.startswith(root) else f.split(root.lstrip("/"), 1)[-1] for f in found)

    def delete_prefix(self, prefix: str) -> None:
        base = self._fs_path(prefix)
        if self.fs.exists(base):
            self.fs.rm(base, recursive=True)

    # -- folders (adapters, reports) -----------------------------------------------------------
    # A folder is many objects, and S3 has no rename: replacing one in place is never atomic. So every
    # upload is a new version under ``<key>/<version>/``, its marker written last; whoever points at it
    # (the run manifest, an XCom) switches to the new marker in one write, and only then are the
    # versions it replaced removed. A failure at any point leaves the old pointer and its files whole.
    def upload_dir(self, local_dir: str | os.PathLike[str], key: str, *,
                   summary: Mapping[str, Any] | None = None) -> Pointer:
        """Upload a folder as a fresh version of ``key`` and return the pointer to its marker (every
        file's hash, written last after each file was checked in the store). Earlier versions stay
        until :meth:`record_checkpoint` (or :meth:`retire_versions`) has switched to this one."""
        local_dir = Path(local_dir)
        base = f"{key.strip('/')}/{_new_version()}"
        files, sizes = {}, {}
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = file.relative_to(local_dir).as_posix()
            data = file.read_bytes()
            files[rel], sizes[rel] = self.write_bytes(f"{base}/{rel}", data).sha256, len(data)
        for rel, size in sizes.items():  # an object store that lost or cut a file fails here, not at a reader
            try:
                stored = self.fs.size(self._fs_path(f"{base}/{rel}"))
            except FileNotFoundError:
                stored = None
            if stored != size:
                raise StoreError(f"{self.url_of(base + '/' + rel)} is {stored} bytes in the store, not {size}; "
                                 "the folder was not published")
        return self.write_json(f"{base}/{DIR_MARKER}", {"files": files}, count=len(files), summary=summary)

    def retire_versions(self, pointer: Pointer | Mapping[str, Any]) -> None:
        """Remove every other version of the folder ``pointer`` names (older publishes, failed
        half-uploads, a pre-versioning layout): call it only once nothing points at them any more."""
        folder, version = _folder_version(Pointer.of(pointer).key)
        if version is None:
            return
        base = self._fs_path(folder)
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache(base)
        for child in self.fs.ls(base, detail=False):
            if child.rstrip("/").rsplit("/", 1)[-1] != version:
                self.fs.rm(child, recursive=True)

    def copy_dir(self, pointer: Pointer | Mapping[str, Any], key: str) -> Pointer:
        """A published folder copied, checked file by file, as a fresh version of ``key``. A champion
        keeps its own copy of its adapter: a rerun of the run that trained it republishes the run's
        adapter and retires the versions it replaced, which must not take the champion with them."""
        with tempfile.TemporaryDirectory(prefix="kdflow-copy-") as tmp:
            return self.upload_dir(self.download_dir(pointer, tmp), key)

    def download_dir(self, pointer: Pointer | Mapping[str, Any], local_dir: str | os.PathLike[str]) -> Path:
        """Fetch a folder written by :meth:`upload_dir`, checking every file against the marker."""
        pointer, local_dir = Pointer.of(pointer), Path(local_dir)
        for rel in json.loads(self.read_verified(pointer))["files"]:
            out = local_dir / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(self.folder_file(pointer, rel))
        return local_dir

    def folder_file(self, pointer: Pointer | Mapping[str, Any], rel: str) -> bytes:
        """One file of a published folder, checked against the folder's marker (readers that want a
        single file, like the report view, follow the pointer instead of guessing a path)."""
        pointer = Pointer.of(pointer)
        digest = json.loads(self.read_verified(pointer))["files"].get(rel)
        if digest is None:
            raise StoreError(f"{rel!r} is not a file of the folder {pointer.url.rsplit('/', 1)[0]}")
        data = self.read_bytes(self.folder_key(pointer, rel))
        if sha256_bytes(data) != digest:
            raise StoreError(f"{self.url_of(self.folder_key(pointer, rel))} does not match its folder marker")
        return data

    def folder_url(self, pointer: Pointer | Mapping[str, Any]) -> str:
        """The folder's address without its version, for records that name an adapter: republishing
        the same files must not change them (a rerun's checkpoints stay byte-identical)."""
        return self.url_of(_folder_version(Pointer.of(pointer).key)[0])

    @staticmethod
    def folder_key(pointer: Pointer | Mapping[str, Any], rel: str) -> str:
        """Key of a file of the folder version ``pointer`` names."""
        return f"{Pointer.of(pointer).key.rsplit('/', 1)[0]}/{rel}"

    # -- run manifest --------------------------------------------------------------------------
    def record_checkpoint(self, run_id: str, name: str, pointer: Pointer | Mapping[str, Any]) -> Pointer:
        """Record a published checkpoint in the run's manifest (one object per checkpoint, so
        concurrent tasks never race on a shared file and a rerun replaces its own entry)."""
        pointer = Pointer.of(pointer)
        entry = self.write_json(run_key(run_id, "manifest", f"{safe_part(name)}.json"), pointer.to_xcom())
        self.retire_versions(pointer)  # the manifest has switched: the folder versions it replaced can go
        return entry

    def checkpoint_pointer(self, run_id: str, name: str) -> Pointer:
        """The pointer the run's manifest holds for checkpoint ``name`` (a folder's current version)."""
        return Pointer.of(self.read_json(run_key(run_id, "manifest", f"{safe_part(name)}.json")))

    def manifest(self, run_id: str) -> dict[str, dict[str, Any]]:
        prefix = run_key(run_id, "manifest")
        entries = {}
        for key in self.list_keys(prefix):
            if key.endswith(".json"):
                entries[key.rsplit("/", 1)[-1][: -len(".json")]] = self.read_json(key)
        return entries
