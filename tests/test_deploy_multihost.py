"""A GPU worker on another host, and airflow-init's refusal of .env.example's placeholders, checked
on the compose files as Docker renders them: ``docker compose config`` where Docker exists, else the
same rendering here (YAML, ``<<`` merges, the overlay merged over the main file, ``${VAR:-default}``
and ``${VAR:?message}`` interpolation and ``$$`` escapes, as compose does them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MAIN, OVERLAY = "docker-compose.yaml", "docker-compose.gpu-worker.yaml"
# .env.example's values, as env_file hands them to every Airflow container.
EXAMPLE_ENV = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (REPO / ".env.example").read_text(), re.M))
PLACEHOLDERS = sorted(name for name, value in EXAMPLE_ENV.items() if value.startswith("change-me"))
REAL = {name: f"real-{name.lower()}-0123456789" for name in PLACEHOLDERS}
FIRST_HOST = "10.20.30.40"
# What the remote worker connects to, by the service on the first host and the port inside its container.
NEEDED = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ("postgres", 5432),
    "AIRFLOW__CELERY__RESULT_BACKEND": ("postgres", 5432),
    "AIRFLOW__CELERY__BROKER_URL": ("redis", 6379),
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": ("airflow-apiserver", 8080),
    "AIRFLOW_CONN_MINIO": ("minio", 9000),
    "KDFLOW__TRACKING__MLFLOW_URI": ("mlflow", 5000),
}
PASSWORDS = ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_ADMIN_PASSWORD",
             "MLFLOW_TRACKING_PASSWORD"]


class RenderError(RuntimeError):
    pass


# -- rendering -------------------------------------------------------------------------------------
# ${NAME:-default} where the default may itself hold one ${...} (compose nests them)
_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])((?:[^${}]|\$\{[^}]*\})*))?\}"
                  r"|([A-Za-z_][A-Za-z0-9_]*))")


def _interpolate(value, env: dict[str, str]):
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        escaped, name, colon, op, arg, bare = match.groups()
        if escaped:
            return "$"
        name = name or bare
        have = env.get(name)
        unset = have is None or (colon == ":" and have == "")
        if op == "?" and unset:
            raise RenderError(f"required variable {name} is missing a value: {arg}")
        return _interpolate(arg, env) if op == "-" and unset else (have or "")

    return _VAR.sub(one, value)


def _merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in over.items()}}
    if isinstance(base, list) and isinstance(over, list):
        return base + [v for v in over if v not in base]
    return over


def _render_here(files: list[str], env: dict[str, str]) -> dict:
    merged: dict = {}
    for name in files:
        merged = _merge(merged, yaml.safe_load((REPO / name).read_text()))
    merged.pop("x-airflow-common", None)
    return _interpolate(merged, env)


def _render_with_docker(docker: str, files: list[str], env: dict[str, str], tmp: Path) -> dict:
    for name in files:
        shutil.copy(REPO / name, tmp / name)
    (tmp / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    done = subprocess.run([docker, "compose", *[a for f in files for a in ("-f", f)], "config", "--format", "json"],
                          cwd=tmp, env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **env},
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    return json.loads(done.stdout)


def render(files: list[str], env: dict[str, str], tmp: Path) -> dict:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return _render_with_docker(docker, files, env, tmp)
    return _render_here(files, env)


def _published(rendered: dict) -> dict[tuple[str, int], tuple[str, int]]:
    """(host address, host port) -> (service, container port) of every published port, from the short
    syntax ("ip:published:target") or docker compose config's long one."""
    out = {}
    for service, spec in rendered["services"].items():
        for port in spec.get("ports", []):
            if isinstance(port, str):
                host_ip, published, target = port.rsplit(":", 2)
            else:
                host_ip, published, target = port.get("host_ip", ""), port["published"], port["target"]
            out[(host_ip, int(published))] = (service, int(target))
    return out


def _endpoint(name: str, value: str) -> tuple[str, int]:
    url = json.loads(value)["extra"]["endpoint_url"] if name.startswith("AIRFLOW_CONN_") else value
    parts = urlsplit(url)
    return parts.hostname, parts.port


# -- multi-host ------------------------------------------------------------------------------------
@pytest.fixture()
def remote(tmp_path):
    """Both files rendered as on the GPU host, and the main file as on the first host, for one address."""
    env = {**EXAMPLE_ENV, **REAL, "KDFLOW_BIND_ADDRESS": FIRST_HOST, "KDFLOW_MAIN_HOST": FIRST_HOST}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    return render([MAIN, OVERLAY], env, tmp_path / "a"), render([MAIN], env, tmp_path / "b")


def test_every_address_the_remote_gpu_worker_needs_is_published_on_the_bind_address(remote):
    on_gpu_host, on_first_host = remote
    worker = {k: str(v) for k, v in on_gpu_host["services"]["airflow-worker-gpu"]["environment"].items()}
    published = _published(on_first_host)
    for name, (service, container_port) in NEEDED.items():
        host, port = _endpoint(name, worker[name])
        assert host == FIRST_HOST, f"{name} points at {host}, not the first host"
        assert published.get((FIRST_HOST, port)) == (service, container_port), \
            f"{name} needs {FIRST_HOST}:{port} ({service}:{container_port}); published: {published}"
    # nothing of the worker still names a service of the first host's Docker network
    in_network = re.compile(r"@(postgres|redis|minio)[:/]|//(minio|airflow-apiserver|postgres|redis)[:/]")
    assert not [k for k, v in worker.items() if in_network.search(v)], worker
    # the overlay changes only where the worker connects: queue, image, GPU reservation are the main file's
    gpu_worker = "airflow-worker-gpu"
    assert on_gpu_host["services"][gpu_worker]["command"] == on_first_host["services"][gpu_worker]["command"]


def test_everything_is_published_on_loopback_unless_the_bind_address_is_set(tmp_path):
    rendered = render([MAIN], {**EXAMPLE_ENV, **REAL, "KDFLOW_BIND_ADDRESS": ""}, tmp_path)
    published = _published(rendered)
    needed = {"postgres", "redis", "minio", "airflow-apiserver", "mlflow"}
    assert {service for service, _ in published.values()} >= needed
    assert {host for host, _ in published} == {"127.0.0.1"}, published
    main = (REPO / MAIN).read_text()
    written = {(service, port) for service, spec in yaml.safe_load(main)["services"].items()
               for port in spec.get("ports", [])}
    on_bind_address = {service for service, port in written if port.startswith("${KDFLOW_BIND_ADDRESS:-127.0.0.1}:")}
    assert on_bind_address == {"postgres", "redis", "minio", "airflow-apiserver", "mlflow"}, written
    # the rest (MinIO's console) stays on loopback whatever the bind address
    assert all(port.startswith("127.0.0.1:") for service, port in written if service not in on_bind_address), written
    assert "AIRFLOW_BIND_ADDRESS" not in main
    assert "KDFLOW_BIND_ADDRESS=127.0.0.1" in (REPO / ".env.example").read_text()


@pytest.mark.parametrize("missing", [*PASSWORDS, "KDFLOW_MAIN_HOST"])
def test_published_services_cannot_start_without_their_password(tmp_path, missing):
    env = {**EXAMPLE_ENV, **REAL, "KDFLOW_BIND_ADDRESS": FIRST_HOST, "KDFLOW_MAIN_HOST": FIRST_HOST}
    env.pop(missing)
    with pytest.raises(RenderError, match=missing):
        render([MAIN, OVERLAY], env, tmp_path)


def test_the_published_services_check_their_password():
    services = yaml.safe_load((REPO / MAIN).read_text())["services"]
    assert "--requirepass" in services["redis"]["command"]
    assert "POSTGRES_HOST_AUTH_METHOD" not in services["postgres"]["environment"]  # the image then wants the password
    overlay = (REPO / OVERLAY).read_text()
    assert "--no-deps airflow-worker-gpu" in overlay  # the documented command starts the worker alone


# -- airflow-init refuses placeholders -------------------------------------------------------------
def _run_init(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """airflow-init's command as compose renders it, under bash, with ``airflow`` and ``python`` stubs
    that record their calls (and the login file written under tmp_path instead of /opt/airflow/auth)."""
    rendered = render([MAIN], env, tmp_path)
    init_service = rendered["services"]["airflow-init"]
    entrypoint, (flag, script) = init_service["entrypoint"], init_service["command"]
    assert (entrypoint if isinstance(entrypoint, str) else entrypoint[0], flag) == ("/bin/bash", "-c")
    stubs, calls = tmp_path / "bin", tmp_path / "calls"
    stubs.mkdir()
    for tool in ("airflow", "python"):
        (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n')
        (stubs / tool).chmod(0o755)
    container_env = {**env, **{k: str(v) for k, v in rendered["services"]["airflow-init"]["environment"].items()}}
    container_env["PATH"] = f"{stubs}:{os.environ['PATH']}"
    script = script.replace("/opt/airflow/auth/", f"{tmp_path}/")
    done = subprocess.run(["bash", "-c", script], env=container_env, capture_output=True, text=True, timeout=60)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_init_refuses_every_change_me_placeholder_naming_the_variables(tmp_path):
    assert {"POSTGRES_PASSWORD", "AIRFLOW__CORE__FERNET_KEY", "MINIO_ROOT_PASSWORD"} <= set(PLACEHOLDERS)
    done, calls = _run_init(tmp_path, dict(EXAMPLE_ENV))
    assert done.returncode == 1 and calls == [], (done.stderr, calls)  # nothing migrated, no login written
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("kdflow: .env still holds the change-me placeholder of .env.example in: ")
    assert line.split(": ", 2)[2].split(" (")[0].split() == PLACEHOLDERS


def test_init_names_the_one_placeholder_left(tmp_path):
    done, calls = _run_init(tmp_path, {**EXAMPLE_ENV, **REAL, "REDIS_PASSWORD": "change-me"})
    assert done.returncode == 1 and calls == []
    assert "in: REDIS_PASSWORD (" in done.stderr and done.stderr.count("\n") == 1


def test_init_goes_on_once_every_placeholder_is_replaced(tmp_path):
    done, calls = _run_init(tmp_path, {**EXAMPLE_ENV, **REAL})
    assert done.returncode == 0, done.stderr
    assert calls[0] == "airflow db migrate" and any(c.startswith("airflow pools set") for c in calls), calls
