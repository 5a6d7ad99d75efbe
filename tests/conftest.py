"""Shared fixtures. Nothing here needs the network beyond loopback or ../shared."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A private Airflow home per test session (SQLite), before anything imports airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="kdflow-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(Path(__file__).resolve().parents[1] / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
# Experiment tracking off unless a test turns it on (tests/test_tracking.py): each fresh store would
# otherwise get its own MLflow database, seconds of set-up per pipeline test.
os.environ.setdefault("KDFLOW__TRACKING__MLFLOW_URI", "null")
# The pipeline's tests train tiny students (or the embedded one for a cycle) and are not about reading the
# knowledge base, which trains every weight on every passage first (14 min for the embedded student): off here;
# tests/test_pipeline_reading.py turns it on for its runs.
os.environ.setdefault("KDFLOW__STUDENT__KB_READING__ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]
# The session fixture every deployment test shares (tests/fixtures_deploy.py): one Celery topology per
# pytest process, so under pytest-xdist all its tests must run in the same worker.
TOPOLOGY_FIXTURE = "airflow_topology"

pytest_plugins = ["fixtures_student", "fixtures_llm", "fixtures_batch", "fixtures_deploy", "fixtures_reliability"]


@functools.cache
def _uses_topology(module: str) -> bool:
    source = REPO / module
    return source.is_file() and TOPOLOGY_FIXTURE in source.read_text()


def work_unit(nodeid: str) -> str:
    """The pytest-xdist work unit of a test: ``airflow_topology`` for every module whose tests use the
    Celery topology (found in its source, so a new deployment test joins without a list to update),
    else its module, so a module-scoped pipeline run is set up in one worker only."""
    module = nodeid.split("::", 1)[0]
    return TOPOLOGY_FIXTURE if _uses_topology(module) else module


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; without xdist, nothing calls it
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``make test`` runs two pytest-xdist workers (``-n 2``). The topology tests are one work unit, so
    the topology is started once and its daemons, which mostly wait on the scheduler, run beside the
    other worker's modules. Units go out in collection order (no reordering by size), which puts the
    longest unit first: test_batch_airflow, the first topology module, sorts first. pytest-xdist's own
    ``--dist loadgroup`` cannot do this on pytest 9.2 (its group suffix on the node id is ignored,
    pytest-dev/pytest-xdist#1386)."""
    from xdist.scheduler import LoadScopeScheduling

    class TopologyFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False
    return TopologyFirst(config, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP server (moto) on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on the moto server, with credentials in the environment."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"kdflow-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name
