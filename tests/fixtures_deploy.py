"""The docker-compose topology, natively: Postgres, Redis, an S3 server, api-server, scheduler,
dag-processor and two Celery workers (queues ``default`` and ``gpu``), all on 127.0.0.1.

One session fixture (``airflow_topology``) serves the native topology test and the browser test, so
Airflow starts once. Every process runs in its own session and is stopped by its PID (its process
group) at the end. ``worker_hostname`` is the ``AIRFLOW__CORE__HOSTNAME_CALLABLE`` the two workers
use, so each task instance records which worker ran it (both run on the same machine here).
``kill``/``restart`` let the fault tests take one component down and bring it back with its own
command line.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from kdflow.pipeline.spec import DAG_ID  # noqa: F401 - the deployment tests take it from here

REPO = Path(__file__).resolve().parents[1]
WORKERS = {"default": "worker-default", "gpu": "worker-gpu"}  # queue -> hostname its tasks record
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379"
ADMIN_USER = "admin"
CONN_ID = "minio"

# The smallest pipeline that still runs every step (no judge calls); the same knobs as docker-compose's env.
FAST_PIPELINE_ENV = {
    "KDFLOW__STUDENT__EPOCHS": "1",
    "KDFLOW__STUDENT__MAX_NEW_TOKENS": "32",
    "KDFLOW__EVALUATION__METRICS": "[semantic_similarity, rouge_l]",
    # two gold questions per topic, no open-book teacher ceiling: the topology, not the verdict, is under test
    "KDFLOW__EVALUATION__GOLD_PATH": str(Path(__file__).parent / "data" / "gold-small.jsonl"),
    "KDFLOW__EVALUATION__TEACHER_CEILING": "false",
}
# A killed worker's task is found by its missing heartbeat: 30 s here instead of 300 s, so the fault
# tests wait seconds, not minutes. Test-only, like the pipeline knobs above (not in docker-compose).
FAST_HEARTBEAT_ENV = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
}


def worker_hostname() -> str:
    """Hostname a task records: the worker's name from KDFLOW_WORKER_NAME (set per worker process)."""
    import socket

    return os.environ.get("KDFLOW_WORKER_NAME") or socket.getfqdn()


@dataclass
class AirflowTopology:
    base_url: str
    env: dict[str, str]
    home: Path
    bucket: str
    s3_endpoint: str
    password: str
    database: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    commands: dict[str, tuple[tuple[str, ...], dict[str, str]]] = field(default_factory=dict)
    store_prefix: str = "artifacts"
    mlflow_uri: str = ""  # the `mlflow server` every task logs to (docker-compose's mlflow service)

    # -- processes ---------------------------------------------------------------------------
    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None,
              program: str = "airflow") -> subprocess.Popen:
        log = open(self.home / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([str(Path(sys.executable).with_name(program)), *args],
                                env={**self.env, **(extra_env or {})},
                                stdout=log, stderr=subprocess.STDOUT, cwd=self.home, start_new_session=True)
        log.close()
        self.processes[name] = proc
        self.commands[name] = (args, dict(extra_env or {}))
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 120) -> None:
        """Signal a component's process group and every descendant (the task runner of a worker
        has a group of its own), as a container kill would; wait until its leader has exited."""
        import psutil

        proc = self.processes[name]
        try:
            tree = psutil.Process(proc.pid).children(recursive=True) if sig == signal.SIGKILL else []
        except psutil.NoSuchProcess:
            tree = []
        _signal_group(proc, sig)
        for child in tree:
            try:
                child.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} still running {timeout}s after signal {sig}:\n{self.log_tail(name)}") from None
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"{name}: processes outlived the kill: {alive}"

    def restart(self, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a stopped component again with the command line and environment it first had;
        ``extra_env`` adds to that environment for this start only (the next restart drops it)."""
        assert self.processes[name].poll() is not None, f"{name} is still running"
        args, first_env = self.commands[name]
        program = "mlflow" if name == "mlflow" else "airflow"
        proc = self.start(name, *args, extra_env={**first_env, **(extra_env or {})}, program=program)
        self.commands[name] = (args, first_env)
        return proc

    @contextmanager
    def mlflow_client(self):
        """An MlflowClient of the topology's server, logged in as the tasks are (MLflow's client reads the
        login from the environment, so it is set only while the block runs)."""
        from mlflow import MlflowClient

        login = {k: v for k, v in self.env.items() if k.startswith("MLFLOW_TRACKING_")}
        with mock.patch.dict(os.environ, login):
            yield MlflowClient(tracking_uri=self.mlflow_uri, registry_uri=self.mlflow_uri)

    def log_size(self, name: str) -> int:
        return (self.home / "logs" / f"{name}.log").stat().st_size

    def wait_for_log(self, name: str, text: str, since: int, timeout: float = 180) -> None:
        """Wait until ``text`` appears in the component's log after byte offset ``since``."""
        path, deadline = self.home / "logs" / f"{name}.log", time.monotonic() + timeout
        while time.monotonic() < deadline:
            with path.open("rb") as log:
                log.seek(since)
                if text.encode() in log.read():
                    return
            self.assert_alive()
            time.sleep(1)
        raise TimeoutError(f"{name} did not log {text!r} in {timeout}s:\n{self.log_tail(name)}")

    def airflow_cli(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([str(Path(sys.executable).with_name("airflow")), *args], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({done.returncode}): {done.stderr[-3000:]}")
        return done.stdout

    def stop(self) -> None:
        """SIGTERM each process group by its leader's PID, then SIGKILL what is left."""
        for proc in self.processes.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # the group may outlive its leader (celery/uvicorn children)
            proc.wait(timeout=10)

    def assert_alive(self) -> None:
        dead = {name: proc.returncode for name, proc in self.processes.items() if proc.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow processes exited: {dead}; logs in {self.home / 'logs'}")

    def socket_events(self) -> list[tuple[str, object]]:
        """(event, target) of every socket bind, connect and address lookup any Airflow process of the
        topology made (tasks included), from the audit hook :func:`_audit_sockets` put into them."""
        log = self.home / "sockets.jsonl"
        return [tuple(json.loads(line)) for line in log.read_text().splitlines() if line] if log.exists() else []

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return (self.home / "logs" / f"{name}.log").read_text(errors="replace")[-chars:]

    @property
    def airflow_config(self):
        """kdflow's ``airflow`` config section as every component reads it (GPU pool, queues)."""
        from kdflow.config import load_config

        return load_config(environ=self.env).airflow

    # -- REST API v2 -------------------------------------------------------------------------
    def client(self):
        """An httpx client on /api/v2 with a bearer token from /auth/token."""
        import httpx

        token = httpx.post(f"{self.base_url}/auth/token", json={"username": ADMIN_USER, "password": self.password},
                           timeout=30).raise_for_status().json()["access_token"]
        return httpx.Client(base_url=f"{self.base_url}/api/v2",
                            headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def wait_for_run(self, api, run_id: str, timeout: float, states=("success", "failed"),
                     dag_id: str = DAG_ID) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()
            if run["state"] in states:
                return run
            self.assert_alive()
            time.sleep(3)
        raise TimeoutError(f"run {run_id} not in {states} after {timeout}s; scheduler "
                           f"log:\n{self.log_tail('scheduler')}")

    @staticmethod
    def hitl_url(run_id: str, task_id: str, dag_id: str = DAG_ID) -> str:
        """The REST resource of a review task's question and answer (Airflow's human-in-the-loop details)."""
        return f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"

    def wait_for_review(self, api, run_id: str, task_id: str, timeout: float) -> dict:
        """Wait until ``task_id`` waits for a person (``awaiting_input``); return what the reviewer is shown."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ti = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}").raise_for_status().json()
            if ti["state"] == "awaiting_input":
                return api.get(self.hitl_url(run_id, task_id)).raise_for_status().json()
            assert ti["state"] not in ("failed", "upstream_failed", "skipped", "success"), (
                task_id, ti["state"], f"logs in {self.home}")
            self.assert_alive()
            time.sleep(3)
        raise TimeoutError(f"{task_id} of {run_id} did not wait for a reviewer in {timeout}s")

    @staticmethod
    def asset_events(api, run_id: str, dag_id: str = DAG_ID) -> list[dict]:
        """The asset events a run of ``dag_id`` emitted (the pipeline's champion event, if any)."""
        return api.get("/assets/events", params={"source_dag_id": dag_id, "source_run_id": run_id}
                       ).raise_for_status().json()["asset_events"]

    @staticmethod
    def dag_runs(api, dag_id: str) -> list[dict]:
        return api.get(f"/dags/{dag_id}/dagRuns", params={"limit": 100}).raise_for_status().json()["dag_runs"]

    def task_instances(self, api, run_id: str, dag_id: str = DAG_ID) -> list[dict]:
        return api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                       params={"limit": 1000}).raise_for_status().json()[
            "task_instances"]

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def s3_keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the process group whose leader is this PID (start_new_session=True)
    except ProcessLookupError:
        pass


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def topology_env(*, home: Path, database: str, redis_db: int, port: int, s3_endpoint: str, bucket: str,
                 password: str) -> dict[str, str]:
    """The environment every component shares; docker-compose's x-airflow-common sets the same keys."""
    from cryptography.fernet import Fernet

    (home / "passwords.json").write_text(json.dumps({ADMIN_USER: password}))
    sql = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{database}"
    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
    return {
        **{k: os.environ[k] for k in keep if k in os.environ},
        "AIRFLOW_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(REPO / "tests")]),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql,
        "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sql.replace("+psycopg2", ""),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(48),  # 96 bytes, shared by every component
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",  # as docker-compose.yaml (no CI=true here to hide it)
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(conn),
        "AIRFLOW__CORE__XCOM_BACKEND": "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"s3://{CONN_ID}@{bucket}/xcom",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "65536",
        "KDFLOW__STORE__URL": f"s3://{CONN_ID}@{bucket}/artifacts",
        "HF_HUB_OFFLINE": "1",
        "RAGAS_DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **FAST_PIPELINE_ENV,
        "KDFLOW__AIRFLOW__SCHEDULE": "null",  # no nightly run on unpause: the test's runs are the only ones
        "MLFLOW_DISABLE_TELEMETRY": "true",  # as docker-compose.yaml
    }


def start_mlflow_server(topo: AirflowTopology, s3_endpoint: str) -> None:
    """What docker-compose's mlflow service is: `mlflow server` behind its basic-auth app, with its runs in a
    Postgres database of its own and its artifacts proxied to the bucket's ``mlflow/`` prefix; every task
    logs to it (``KDFLOW__TRACKING__MLFLOW_URI`` and the login, set before the workers start)."""
    from conftest import free_port

    database = f"{topo.database}_mlflow"
    _psql(f"CREATE DATABASE {database}")
    port = free_port()
    backend = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{database}"
    login = {"MLFLOW_TRACKING_USERNAME": "kdflow", "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(12)}
    auth_config = topo.home / "mlflow-auth.ini"
    auth_config.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{topo.home / 'mlflow-auth.db'}\n"
        f"admin_username = {login['MLFLOW_TRACKING_USERNAME']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    proc = topo.start("mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
                      "--workers", "1", "--backend-store-uri", backend, "--serve-artifacts",
                      "--artifacts-destination", f"s3://{topo.bucket}/mlflow", program="mlflow",
                      extra_env={"MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                                 "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                                 "MLFLOW_AUTH_ADMIN_PASSWORD": login["MLFLOW_TRACKING_PASSWORD"],
                                 "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})
    topo.mlflow_uri = f"http://127.0.0.1:{port}"
    topo.env["KDFLOW__TRACKING__MLFLOW_URI"] = topo.mlflow_uri
    topo.env.update(login)
    _wait_http(f"{topo.mlflow_uri}/health", 180, proc)


def _audit_sockets(topo: AirflowTopology) -> None:
    """Every Airflow process of the topology records its sockets (the evaluation egress test's audit
    hook, as a sitecustomize on PYTHONPATH), so a test can check they stay on loopback. Their
    environment is built from scratch (topology_env), so CI, which would hide Airflow telemetry, is unset."""
    from fixtures_reliability import SOCKET_AUDIT_SITECUSTOMIZE

    hook = topo.home / "socket-audit"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SOCKET_AUDIT_SITECUSTOMIZE)
    topo.env["PYTHONPATH"] = os.pathsep.join([str(hook), topo.env["PYTHONPATH"]])
    topo.env["KDFLOW_SOCKET_AUDIT"] = str(topo.home / "sockets.jsonl")


def _psql(sql: str) -> None:
    subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", "postgres",
                    "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def airflow_topology(s3_server, tiny_phi_dir):
    """Start the two-worker Celery topology once per session; yields an :class:`AirflowTopology`.
    The student is the tiny random Phi-2 model: the topology, not the model, is under test here."""
    from conftest import free_port

    home = Path(tempfile.mkdtemp(prefix="kdflow-topology-"))
    (home / "logs").mkdir()
    database = f"kdflow_topology_{uuid.uuid4().hex[:8]}"
    bucket = f"kdflow-{uuid.uuid4().hex[:8]}"
    port = free_port()
    password = secrets.token_urlsafe(12)
    topo = AirflowTopology(base_url=f"http://127.0.0.1:{port}", home=home, bucket=bucket, s3_endpoint=s3_server,
                           password=password, database=database,
                           env=topology_env(home=home, database=database, redis_db=1 + secrets.randbelow(15), port=port,
                                            s3_endpoint=s3_server, bucket=bucket, password=password))
    topo.env["KDFLOW__STUDENT__MODEL"] = str(tiny_phi_dir)
    topo.env.update(FAST_HEARTBEAT_ENV)
    _audit_sockets(topo)
    _psql(f"CREATE DATABASE {database}")
    topo.s3().create_bucket(Bucket=bucket)
    try:
        # What docker-compose's airflow-init does.
        topo.airflow_cli("db", "migrate")
        pool = topo.airflow_config
        topo.airflow_cli("pools", "set", pool.gpu_pool, str(pool.gpu_pool_slots), "GPU slots: student steps")
        start_mlflow_server(topo, s3_server)
        api = topo.start("api-server", "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1")
        topo.start("scheduler", "scheduler", "--skip-serve-logs")
        topo.start("dag-processor", "dag-processor")
        for queue, name in WORKERS.items():
            topo.start(f"worker-{queue}", "celery", "worker", "-q", queue, "-c", "1", "--skip-serve-logs",
                       "--celery-hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
                       extra_env={"KDFLOW_WORKER_NAME": name,
                                  "AIRFLOW__CORE__HOSTNAME_CALLABLE": "fixtures_deploy.worker_hostname"})
        _wait_http(f"{topo.base_url}/api/v2/monitor/health", 180, api)
        with topo.client() as client:
            _wait_for_dag(topo, client)
        yield topo
    finally:
        topo.stop()
        for name in (database, f"{database}_mlflow"):
            try:
                _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except subprocess.CalledProcessError:
                pass


def _wait_for_dag(topo: AirflowTopology, api, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get(f"/dags/{DAG_ID}").status_code == 200:
            return
        topo.assert_alive()
        time.sleep(2)
    raise TimeoutError(f"dag-processor did not register {DAG_ID} in {timeout}s:\n{topo.log_tail('dag-processor')}")
