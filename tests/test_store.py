import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from kdflow.store import ArtifactStore, Pointer, StoreError, cycle_key, run_key, safe_part


def _roundtrip(store: ArtifactStore):
    key = cycle_key("manual__2026-11-25T10:00:00+00:00", 1, "questions", ".jsonl")
    rows = [{"id": "q1", "question": "What is a Pod?"}, {"id": "q2", "question": "What is a Service?"}]
    pointer = store.write_jsonl(key, rows, summary={"topics": ["pods"]})
    assert pointer.count == 2 and pointer.key == key and pointer.url.endswith(key)
    assert len(pointer.sha256) == 64 and pointer.bytes > 0
    assert store.read_jsonl(pointer) == rows
    assert store.read_jsonl(key) == rows
    # A rerun overwrites the same key; the old pointer no longer verifies.
    pointer2 = store.write_jsonl(key, rows[:1])
    assert store.list_keys("runs").count(key) == 1
    with pytest.raises(StoreError, match="changed since it was recorded"):
        store.read_verified(pointer)
    assert store.read_jsonl(pointer2) == rows[:1]
    # JSON, folders, manifest
    store.write_json("runs/r/cycle_1/summary.json", {"a": 1})
    assert store.read_json("runs/r/cycle_1/summary.json") == {"a": 1}
    store.record_checkpoint("r", "cycle_1.questions", pointer2)
    assert store.manifest("r")["cycle_1.questions"]["sha256"] == pointer2.sha256
    with pytest.raises(StoreError, match="artifact not found"):
        store.read_bytes("runs/r/missing.json")
    return pointer2


def _folder_roundtrip(store: ArtifactStore, tmp_path):
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(2048))
    pointer = store.upload_dir(src, "runs/r/cycle_1/adapter")
    assert pointer.count == 2
    out = store.download_dir(pointer, tmp_path / "out")
    assert (out / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()
    # a second upload with fewer files is a new version; the first stays whole until the manifest has
    # switched to the second, and then no stale file is left behind
    store.record_checkpoint("r", "cycle_1.adapter", pointer)
    (src / "sub" / "weights.bin").unlink()
    second = store.upload_dir(src, "runs/r/cycle_1/adapter")
    assert second.key != pointer.key and store.download_dir(pointer, tmp_path / "old").joinpath("sub",
                                                                                                "weights.bin").exists()
    store.record_checkpoint("r", "cycle_1.adapter", second)
    assert store.list_keys("runs/r/cycle_1/adapter") == sorted([second.key,
                                                                store.folder_key(second, "adapter_config.json")])
    assert store.folder_file(store.checkpoint_pointer("r", "cycle_1.adapter"), "adapter_config.json") == b'{"r": 8}'


def test_local_store_roundtrip(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    assert store.url.startswith("file://")
    _roundtrip(store)
    _folder_roundtrip(store, tmp_path)
    leftovers = [p for p in (tmp_path / "store").rglob(".tmp-*")]
    assert leftovers == []


def test_s3_store_roundtrip_through_upath(s3_server, s3_bucket, tmp_path):
    store = ArtifactStore(f"s3://{s3_bucket}/kdflow", {"client_kwargs": {"endpoint_url": s3_server}})
    _roundtrip(store)
    _folder_roundtrip(store, tmp_path)
    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert "kdflow/runs/r/cycle_1/summary.json" in keys


def test_s3_store_through_airflow_connection(s3_server, s3_bucket, monkeypatch, tmp_path):
    conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"endpoint_url": s3_server}}
    monkeypatch.setenv("AIRFLOW_CONN_MINIO", json.dumps(conn))
    store = ArtifactStore(f"s3://minio@{s3_bucket}/kdflow")
    _roundtrip(store)


def test_keys_are_sanitised_and_cannot_escape_the_run():
    assert run_key("../../etc", "cycle_1", "x.json") == "runs/etc/cycle_1/x.json"
    assert safe_part("scheduled__2026-11-25T02:00:00+00:00") == "scheduled__2026-11-25T02_00_00_00_00"
    with pytest.raises(StoreError):
        safe_part("../..")
    with pytest.raises(StoreError, match="invalid store key"):
        ArtifactStore("memory://kd").path("runs/../../x")


def test_unknown_scheme_is_refused():
    with pytest.raises(StoreError, match="unknown store scheme 'ftp'"):
        ArtifactStore("ftp://example/x")


def test_pointer_is_small_plain_data(tmp_path):
    pointer = ArtifactStore(str(tmp_path)).write_json("runs/r/x.json", {"big": "x" * 10000}, count=1)
    payload = pointer.to_xcom()
    assert set(payload) == {"url", "key", "sha256", "bytes", "count", "summary"}
    assert len(json.dumps(payload)) < 500
    assert Pointer.of(payload) == pointer


def test_a_writer_killed_mid_write_leaves_the_old_object_whole(tmp_path):
    store = ArtifactStore(str(tmp_path))
    original = store.write_bytes("runs/r/blob.bin", b"old" * 1000)
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from kdflow.store import ArtifactStore
        store = ArtifactStore({str(tmp_path)!r})
        real_replace = os.replace
        def slow_replace(a, b):
            print("ready", flush=True); time.sleep(60); real_replace(a, b)
        os.replace = slow_replace
        store.write_bytes("runs/r/blob.bin", b"new" * 1000)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.read_verified(original) == b"old" * 1000


# -- atomic folder publishes ----------------------------------------------------------------------
FOLDER = "runs/r/cycle_1/adapter"


def _adapter(path, tag: bytes):
    (path / "sub").mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "sub/tokenizer.json"):
        (path / name).write_bytes(tag + name.encode() + os.urandom(256))
    return path


def _failing_writes(store: ArtifactStore, monkeypatch, *, after: int, truncate: bool = False):
    """Break the store's object writes under FOLDER after ``after`` of them: raise (a lost
    connection), or with ``truncate`` leave a cut object while the writer sees success (the case
    the check before the marker is for)."""
    real, done = store.write_bytes, []

    def write_bytes(key, data, **kw):
        broken = key.startswith(FOLDER + "/") and not key.endswith("_COMPLETE.json") and len(done) >= after
        done.append(key)
        if broken and not truncate:
            raise StoreError(f"injected failure writing {key}")
        pointer = real(key, data, **kw)
        if broken:
            real(key, data[: len(data) // 2])
        return pointer

    monkeypatch.setattr(store, "write_bytes", write_bytes)


def _publish_with_failure_midway(store: ArtifactStore, tmp_path, monkeypatch, *, truncate: bool = False):
    """Publish an adapter and record it; republish it with a failure injected after the first file:
    the manifest entry must still verify and point at the complete first version."""
    old = _adapter(tmp_path / "v1", b"old")
    store.record_checkpoint("r", "cycle_1.adapter", store.upload_dir(old, FOLDER))
    with monkeypatch.context() as patch:
        _failing_writes(store, patch, after=1, truncate=truncate)
        with pytest.raises(StoreError, match="injected failure" if not truncate else "bytes in the store, not"):
            store.upload_dir(_adapter(tmp_path / "v2", b"new"), FOLDER)
    entry = store.manifest("r")["cycle_1.adapter"]
    out = store.download_dir(entry, tmp_path / "out")  # checks every file against the marker
    for name in ("adapter_config.json", "adapter_model.safetensors", "sub/tokenizer.json"):
        assert (out / name).read_bytes() == (old / name).read_bytes(), name
    # the next publish that succeeds takes over and removes the old and the half-written versions
    new = store.upload_dir(tmp_path / "v2", FOLDER)
    store.record_checkpoint("r", "cycle_1.adapter", new)
    assert {k.split("/")[4] for k in store.list_keys(FOLDER)} == {new.key.split("/")[4]}
    assert store.download_dir(store.manifest("r")["cycle_1.adapter"], tmp_path / "out2").joinpath(
        "adapter_config.json").read_bytes() == (tmp_path / "v2" / "adapter_config.json").read_bytes()


@pytest.mark.parametrize("truncate", [False, True], ids=["write-fails", "object-cut"])
def test_a_folder_publish_failing_midway_leaves_the_manifest_on_the_whole_old_version_locally(tmp_path,
                                                                                              monkeypatch, truncate):
    _publish_with_failure_midway(ArtifactStore(str(tmp_path / "store")), tmp_path, monkeypatch, truncate=truncate)


@pytest.mark.parametrize("truncate", [False, True], ids=["write-fails", "object-cut"])
def test_a_folder_publish_failing_midway_leaves_the_manifest_on_the_whole_old_version_on_s3(
        s3_server, s3_bucket, tmp_path, monkeypatch, truncate):
    store = ArtifactStore(f"s3://{s3_bucket}/kdflow", {"client_kwargs": {"endpoint_url": s3_server}})
    _publish_with_failure_midway(store, tmp_path, monkeypatch, truncate=truncate)


def test_an_unrecorded_folder_upload_keeps_earlier_versions_until_retired(tmp_path):
    """A staged folder (pointer in an XCom, not the manifest) is retired explicitly by its writer."""
    store = ArtifactStore(str(tmp_path / "store"))
    first = store.upload_dir(_adapter(tmp_path / "a", b"a"), FOLDER)
    second = store.upload_dir(_adapter(tmp_path / "b", b"b"), FOLDER)
    assert store.folder_url(first) == store.folder_url(second) == store.url_of(FOLDER)  # what records name
    store.download_dir(first, tmp_path / "first")  # still whole
    store.retire_versions(second)
    with pytest.raises(StoreError, match="artifact not found"):
        store.read_verified(first)
    store.download_dir(second, tmp_path / "second")
