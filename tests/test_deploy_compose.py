"""docker-compose.yaml and the Dockerfile, checked statically (no Docker engine on our machines):
services, queues, pool, env, volumes, healthchecks, and that everything they reference exists in
the repo and agrees with kdflow's config and with the native topology test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures_deploy import CONN_ID, topology_env
from kdflow.config import load_config

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (REPO / "Dockerfile").read_text()
ENV_EXAMPLE = (REPO / ".env.example").read_text()
AIRFLOW_CFG = load_config(environ={}).airflow
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-worker-gpu", "airflow-init"]
LONG_RUNNING = ["postgres", "redis", "minio", *[s for s in AIRFLOW_SERVICES if s != "airflow-init"], "local-teacher",
                "mlflow", "vllm"]
VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")
# The config's own override variables for airflow.gpu_pool / gpu_pool_slots, with their defaults.
GPU_POOL_VARS = {"KDFLOW__AIRFLOW__GPU_POOL": AIRFLOW_CFG.gpu_pool,
                 "KDFLOW__AIRFLOW__GPU_POOL_SLOTS": AIRFLOW_CFG.gpu_pool_slots}


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service]["environment"].items()}


def _command(service: str) -> str:
    command = SERVICES[service]["command"]
    return command if isinstance(command, str) else " ".join(command)


def _queues(service: str) -> list[str]:
    match = re.search(r"(?:-q|--queues)\s+(\S+)", _command(service))
    assert match, f"{service} names no Celery queue"
    return match.group(1).split(",")


def test_every_service_of_the_topology_is_there():
    assert set(SERVICES) == {"postgres", "redis", "minio", "minio-init", *AIRFLOW_SERVICES, "local-teacher", "mlflow",
                             "vllm"}
    for service in AIRFLOW_SERVICES:
        assert _env(service)["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", service
    assert _command("airflow-apiserver").startswith("api-server")
    assert _command("airflow-scheduler").startswith("scheduler")
    assert _command("airflow-dag-processor").startswith("dag-processor")
    assert _command("airflow-triggerer").startswith("triggerer")


def test_workers_split_the_queues_like_the_dag_assigns_them():
    assert _queues("airflow-worker") == [AIRFLOW_CFG.default_queue]
    assert _queues("airflow-worker-gpu") == [AIRFLOW_CFG.gpu_queue]
    for service in ("airflow-worker", "airflow-worker-gpu", "airflow-scheduler", "airflow-triggerer"):
        assert "--skip-serve-logs" in _command(service), service


def test_gpu_worker_reserves_an_nvidia_gpu_and_uses_the_cuda_image():
    gpu = SERVICES["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert [(d["driver"], d["capabilities"]) for d in devices] == [("nvidia", ["gpu"])]
    assert gpu["build"]["args"]["TORCH_FLAVOR"] == "gpu"
    assert gpu["image"] != SERVICES["airflow-worker"]["image"]
    assert "deploy" not in SERVICES["airflow-worker"]
    assert SERVICES["airflow-worker"]["build"]["args"]["TORCH_FLAVOR"] == "cpu"


def test_init_migrates_and_creates_the_gpu_pool_before_anything_starts():
    script = _command("airflow-init")
    assert "airflow db migrate" in script
    assert 'airflow pools set "$${KDFLOW__AIRFLOW__GPU_POOL}" "$${KDFLOW__AIRFLOW__GPU_POOL_SLOTS}"' in script
    assert "passwords.json" in script
    for service in AIRFLOW_SERVICES:
        if service != "airflow-init":
            depends = SERVICES[service]["depends_on"]
            assert depends["airflow-init"]["condition"] == "service_completed_successfully", service
            assert depends["minio-init"]["condition"] == "service_completed_successfully", service


def _local_script_pool(**overrides: str) -> list[str]:
    """The pool scripts/airflow-local.sh creates: it prints it with ``gpu-pool`` (name, slots)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDFLOW")}  # no user config leaks in
    env.update(KDFLOW_VENV=str(Path(sys.executable).parents[1]), **overrides)
    out = subprocess.run([str(REPO / "scripts" / "airflow-local.sh"), "gpu-pool"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_gpu_pool_comes_from_the_config_in_compose_the_local_script_and_the_native_topology():
    # compose: every Airflow service (the DAG's parser and workers, and airflow-init, which creates the
    # pool) reads the config's own override variables, defaulting to the config's defaults
    for var, default in GPU_POOL_VARS.items():
        for service in AIRFLOW_SERVICES:
            assert _env(service)[var] == f"${{{var}:-{default}}}", (service, var)
        assert re.search(rf"^{var}={default}$", ENV_EXAMPLE, re.M), f".env.example must document {var}={default}"
    overridden = load_config(environ={"KDFLOW__AIRFLOW__GPU_POOL": "gpu-a100",
                                      "KDFLOW__AIRFLOW__GPU_POOL_SLOTS": "4"}).airflow
    assert (overridden.gpu_pool, overridden.gpu_pool_slots) == ("gpu-a100", 4)  # what the DAG then uses
    # scripts/airflow-local.sh creates the pool the config names, overrides included
    local = (REPO / "scripts" / "airflow-local.sh").read_text()
    assert 'airflow pools set "$POOL_NAME" "$POOL_SLOTS"' in local and "pools set gpu" not in local
    assert _local_script_pool() == [AIRFLOW_CFG.gpu_pool, str(AIRFLOW_CFG.gpu_pool_slots)]
    assert _local_script_pool(KDFLOW__AIRFLOW__GPU_POOL="gpu-a100",
                              KDFLOW__AIRFLOW__GPU_POOL_SLOTS="4") == ["gpu-a100", "4"]
    # the native topology (tests/fixtures_deploy.py) creates the pool its components' config names
    fixture = (REPO / "tests" / "fixtures_deploy.py").read_text()
    assert '"pools", "set", pool.gpu_pool, str(pool.gpu_pool_slots)' in fixture
    assert '"pools", "set", "gpu"' not in fixture


def test_store_and_xcom_backend_point_at_minio_through_one_aws_connection():
    env = _env("airflow-worker")
    conn_uri = env[f"AIRFLOW_CONN_{CONN_ID.upper()}"]
    conn = json.loads(conn_uri.replace("${MINIO_ROOT_USER:?set MINIO_ROOT_USER in .env}", "u")
                      .replace("${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD in .env}", "p"))
    assert conn["conn_type"] == "aws" and conn["extra"]["endpoint_url"] == "http://minio:9000"
    bucket = "${KDFLOW_BUCKET:-kdflow}"
    assert env["KDFLOW__STORE__URL"] == f"s3://{CONN_ID}@{bucket}/artifacts"
    assert env["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH"] == f"s3://{CONN_ID}@{bucket}/xcom"
    assert env["AIRFLOW__CORE__XCOM_BACKEND"].endswith("XComObjectStorageBackend")
    assert "mc mb --ignore-existing" in _command("minio-init") and "KDFLOW_BUCKET" in _command("minio-init")
    load_config(environ={"KDFLOW__STORE__URL": env["KDFLOW__STORE__URL"].replace(bucket,
                                                                                 "kdflow")})  # a valid store URL


def test_compose_sets_every_key_the_native_topology_sets(tmp_path):
    native = topology_env(home=tmp_path, database="db", redis_db=1, port=8080, s3_endpoint="http://127.0.0.1:9000",
                          bucket="kdflow", password="pw")
    test_only = {"PYTHONPATH", "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER",
                 "AIRFLOW__CELERY__WORKER_CONCURRENCY", "KDFLOW__AIRFLOW__SCHEDULE",
                 "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"}
    shared = {k for k in native if k.startswith(("AIRFLOW", "KDFLOW__STORE", "HF_", "RAGAS", "TOKENIZERS"))} - test_only
    for service in AIRFLOW_SERVICES:
        missing = shared - set(_env(service))
        assert not missing, f"{service} lacks {sorted(missing)} that tests/fixtures_deploy.py sets"
    assert _env("airflow-worker")["RAGAS_DO_NOT_TRACK"] == "true"


def test_secrets_come_from_env_file_and_are_never_baked_in():
    for service in AIRFLOW_SERVICES:
        assert SERVICES[service]["env_file"] == [{"path": ".env", "required": True}], service
    secrets = ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW__CORE__FERNET_KEY",
               "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD"]
    text = (REPO / "docker-compose.yaml").read_text()
    for name in secrets:
        assert re.search(rf"\$\{{{name}:\?", text), f"{name} must be required from .env, never defaulted"
    assert not re.search(r"^\s*(ENV|ARG)\s+.*(PASSWORD|SECRET|API_KEY|FERNET)", DOCKERFILE, re.M | re.I)
    assert not re.search(r"(?i)(sk-[A-Za-z0-9]{20,}|password\s*=\s*[^$\s])", DOCKERFILE)


def test_every_variable_compose_reads_is_documented_in_env_example():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE, re.M))
    compose = (REPO / "docker-compose.yaml").read_text() + (REPO / "docker-compose.gpu-worker.yaml").read_text()
    used = set(VAR.findall(compose))
    undocumented = {name for name, _ in used} - documented
    assert not undocumented, f"document these in .env.example: {sorted(undocumented)}"
    assert "change-me" in ENV_EXAMPLE and "sk-" not in ENV_EXAMPLE.replace("sk-...", "")


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_long_running_services_have_healthchecks(service):
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1


def test_volumes_are_declared_and_logs_shared_or_remote():
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in declared, f"{name} mounts undeclared volume {source}"
    env = _env("airflow-worker-gpu")
    assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "true" and env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == CONN_ID


def test_api_server_binds_to_loopback_by_default():
    (port,) = SERVICES["airflow-apiserver"]["ports"]
    assert port.startswith("${KDFLOW_BIND_ADDRESS:-127.0.0.1}:")  # tests/test_deploy_multihost.py: the other hosts
    assert "KDFLOW_BIND_ADDRESS=127.0.0.1" in ENV_EXAMPLE


def test_usage_data_collection_is_off_wherever_kdflow_starts_airflow(tmp_path):
    """Airflow's usage-data collection (Scarf) is off in compose, the local scripts and the native
    topology. The option's name is checked against the installed Airflow: 3.3.2 no longer has the
    section at all, so the setting only matters for an image built from an earlier Airflow."""
    import airflow

    option, var = "enabled", "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED"
    template = yaml.safe_load((Path(airflow.__file__).parent / "config_templates" / "config.yml").read_text())
    section = template.get("usage_data_collection")
    assert section is None or option in section["options"], "Airflow renamed its usage-data option: update the variable"
    for service in AIRFLOW_SERVICES:
        assert _env(service)[var] == "False", service
    for script in ("airflow-local.sh", "run-dag.sh"):
        assert re.search(rf"^export {var}=False\b", (REPO / "scripts" / script).read_text(), re.M), script
    native = topology_env(home=tmp_path, database="db", redis_db=1, port=8080, s3_endpoint="http://127.0.0.1:9000",
                          bucket="kdflow", password="pw")
    assert native[var] == "False" and "CI" not in native


def test_dockerfile_builds_on_airflow_3_3_2_with_pinned_requirements_and_explicit_torch_builds():
    assert re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:3\.3\.2$", DOCKERFILE, re.M)
    assert "FROM ${AIRFLOW_IMAGE}" in DOCKERFILE
    assert re.search(r"^FROM base AS torch-cpu$", DOCKERFILE,
                     re.M) and re.search(r"^FROM base AS torch-gpu$", DOCKERFILE, re.M)
    assert "FROM torch-${TORCH_FLAVOR}" in DOCKERFILE
    assert "whl/cpu" in DOCKERFILE and "-r /opt/kdflow/requirements-gpu.txt" in DOCKERFILE
    assert "-r /opt/kdflow/requirements.txt" in DOCKERFILE
    gpu_reqs = (REPO / "requirements-gpu.txt").read_text()
    torch_pin = re.search(r"^torch==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert re.search(rf"^torch=={re.escape(torch_pin)}$", gpu_reqs, re.M), "GPU torch must match requirements.txt's pin"
    assert "apache-airflow[postgres]==3.3.2" in (REPO / "requirements.txt").read_text()


def test_everything_referenced_exists_in_the_repo():
    copied = [src for line in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", DOCKERFILE, re.M) for src in line.split()[:-1]]
    assert {"dags/", "plugins/", "include/"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repo"
    assert ".env" not in copied
    # The local teacher serves the GGUF that kdflow packages; its launcher function must exist.
    from kdflow.llm.server import packaged_gguf

    assert callable(packaged_gguf) and "kdflow.llm.server import packaged_gguf" in _command("local-teacher")
    assert SERVICES["local-teacher"]["profiles"] == ["local-teacher"]
    for script in re.findall(r"(scripts/[\w.-]+)", (REPO / "docker-compose.yaml").read_text() + DOCKERFILE):
        assert (REPO / script).exists(), script
    assert (REPO / "dags" / "knowledge_distillation.py").exists() and (REPO / "plugins" / "kdflow_reports.py").exists()


def test_mlflow_keeps_runs_in_its_own_postgres_database_and_artifacts_in_minio():
    """The tracker of every run: Postgres database ``mlflow`` (created by airflow-init), artifacts proxied to
    the bucket's ``mlflow/`` prefix, bound like the other services, and the URI every Airflow service logs to."""
    command = _command("mlflow")
    assert "mlflow server" in command and "@postgres/mlflow" in command and "--serve-artifacts" in command
    assert '--artifacts-destination "s3://$${KDFLOW_BUCKET:-kdflow}/mlflow"' in command
    assert "--allowed-hosts" in command and "mlflow:5000" in command  # the Host header the workers send
    init = _command("airflow-init")
    assert 'CREATE DATABASE {db}' in init and '("mlflow", "mlflow_auth")' in init
    # published like the others, so behind a password: MLflow's basic-auth app, users in Postgres, the
    # admin (the tasks' login, which MLflow's client reads from the environment) created from .env
    assert "--app-name basic-auth" in command and "MLFLOW_AUTH_CONFIG_PATH=" in command
    assert "@postgres/mlflow_auth" in command and 'MLFLOW_AUTH_ADMIN_PASSWORD="$${MLFLOW_TRACKING_PASSWORD}"' in command
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert _env("mlflow")[name].startswith(f"${{{name}:?")
    example = (REPO / ".env.example").read_text()
    assert "MLFLOW_TRACKING_PASSWORD=change-me" in example and "MLFLOW_FLASK_SERVER_SECRET_KEY=change-me" in example
    assert _env("mlflow")["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    (port,) = SERVICES["mlflow"]["ports"]
    assert port.startswith("${KDFLOW_BIND_ADDRESS:-127.0.0.1}:")
    for service in AIRFLOW_SERVICES:
        assert _env(service)["KDFLOW__TRACKING__MLFLOW_URI"] == "${KDFLOW__TRACKING__MLFLOW_URI:-http://mlflow:5000}"
        assert json.loads(_env(service)["AIRFLOW__OPENLINEAGE__TRANSPORT"])["type"] == "file"


def _default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (a plain value stays as it is)."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", str(value))
    return match.group(1) if match else str(value)


def _readme_vllm_settings() -> dict[str, str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### An open-weights teacher and judge on a GPU (vLLM)"):]
    block = section[section.index("```bash") + len("```bash"): section.index("```", section.index("```bash") + 7)]
    return dict(line.split("=", 1) for line in block.strip().splitlines())


def test_vllm_teacher_serves_what_readme_points_kdflow_at():
    """The vllm profile (issue #20): the official image at a pinned tag, one NVIDIA GPU, the weights from the
    hf-cache volume, an OpenAI-compatible server whose served name, port and JSON mode are what README's
    settings give kdflow, and the key both sides read; those settings make a valid config that sends
    json_schema in the chat form and prices the tokens at $0."""
    from kdflow.llm.profiles import CHAT_STYLE, resolve_teacher

    vllm = SERVICES["vllm"]
    assert vllm["profiles"] == ["vllm"]
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", vllm["image"]), "pin an official vLLM release tag"
    assert vllm["entrypoint"] == ["vllm", "serve"]
    args = [_default(a) for a in vllm["command"]]
    flag = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    model = args[0]
    assert flag["--served-model-name"] == model and flag["--host"] == "0.0.0.0"
    assert flag["--structured-outputs-config.backend"] in ("guidance", "xgrammar")  # both decode json_schema
    assert int(flag["--max-model-len"]) >= load_config(environ={}).teacher.n_ctx
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device.get("count") == 1 or len(device.get("device_ids", [])) == 1, "one GPU"
    env = {k: str(v) for k, v in vllm["environment"].items()}
    assert "hf-cache:" + env["HF_HOME"] in vllm["volumes"]  # the workers' model cache
    assert env["HF_HOME"] == _env("airflow-worker")["HF_HOME"]
    assert env["HF_HUB_OFFLINE"] == "${HF_HUB_OFFLINE:-1}"
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"  # no egress
    (port,) = vllm["ports"]
    assert port.startswith("127.0.0.1:") and port.endswith(":" + flag["--port"])
    assert "/health" in " ".join(vllm["healthcheck"]["test"])

    settings = _readme_vllm_settings()
    assert settings["KDFLOW__TEACHER__BASE_URL"] == f"http://vllm:{flag['--port']}/v1"
    assert settings["KDFLOW__TEACHER__MODEL"] == model
    assert settings["KDFLOW__TEACHER__STRUCTURED_OUTPUT"] == "json_schema"
    key_var = settings["KDFLOW__TEACHER__API_KEY_ENV"]
    assert env["VLLM_API_KEY"] == f"${{{key_var}:-}}"  # the key both sides read
    assert settings["KDFLOW__TEACHER__API_KEY_ENV"] in settings
    cfg = load_config(environ={k: v for k, v in settings.items() if k.startswith("KDFLOW__")}).teacher
    setup = resolve_teacher(cfg)
    assert (cfg.provider, setup.structured_output, setup.style) == ("openai", "json_schema", CHAT_STYLE)
    assert setup.priced and (setup.price_per_mtok_input, setup.price_per_mtok_output) == (0.0, 0.0)
    assert setup.note() is None  # a known profile: no "not in kdflow's profile table" line in the report
    # .env.example documents the same settings and the model default
    for key in ("KDFLOW__TEACHER__BASE_URL", "KDFLOW__TEACHER__MODEL", "KDFLOW__TEACHER__PROFILE"):
        assert re.search(rf"^#\s+{key}={re.escape(settings[key])}$", ENV_EXAMPLE, re.M), key
    assert re.search(rf"^KDFLOW_VLLM_MODEL={re.escape(model)}$", ENV_EXAMPLE, re.M)
