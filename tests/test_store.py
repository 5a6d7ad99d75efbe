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
    # a second upload with fewer files leaves no stale file behind
    (src / "sub" / "weights.bin").unlink()
    store.upload_dir(src, "runs/r/cycle_1/adapter")
    assert not any(k.endswith("weights.bin") for k in store.list_keys("runs/r/cycle_1/adapter"))


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
