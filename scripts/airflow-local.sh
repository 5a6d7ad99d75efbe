#!/usr/bin/env bash
# Airflow on this machine, for a user to trigger knowledge_distillation from the UI: api-server,
# scheduler, dag-processor and triggerer with the LocalExecutor, all on 127.0.0.1 (no Docker).
#
#   scripts/airflow-local.sh          # start (foreground; Ctrl-C stops everything)
#   scripts/airflow-local.sh stop     # stop a running instance by the PIDs it recorded
#   scripts/airflow-local.sh gpu-pool # print the pool it creates for the student steps: name, slots
#
# Env: AIRFLOW_HOME (default ./airflow_home, SQLite inside), AIRFLOW_API_PORT (8080),
# AIRFLOW__DATABASE__SQL_ALCHEMY_CONN (e.g. Postgres from scripts/services.sh), KDFLOW_ADMIN_PASSWORD,
# and any KDFLOW__SECTION__KEY override (teacher endpoint, student model ...).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${KDFLOW_VENV:-$ROOT/.venv}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$ROOT/airflow_home}
PORT=${AIRFLOW_API_PORT:-8080}
PIDS=$AIRFLOW_HOME/pids
COMPONENTS=(api-server scheduler dag-processor triggerer)

stop_all() {
  local pidfile pid
  for pidfile in "$PIDS"/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    # Each component leads its own process group (setsid); signal the group by its leader's PID.
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pidfile in "$PIDS"/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

# The pool the DAG puts the student steps in: airflow.gpu_pool and gpu_pool_slots of the kdflow config
# (defaults.yaml, KDFLOW_CONFIG, KDFLOW__AIRFLOW__GPU_POOL[_SLOTS]), one per line.
gpu_pool() {
  local config
  config=$("$VENV/bin/python" -m kdflow config) || return  # a bad config: kdflow names the field
  "$VENV/bin/python" -c 'import sys, yaml; a = yaml.safe_load(sys.stdin)["airflow"]; print(a["gpu_pool"]); print(a["gpu_pool_slots"])' \
    <<<"$config"
}

case ${1:-start} in
  stop)
    stop_all
    echo "[airflow-local] stopped"
    exit 0 ;;
  gpu-pool)
    gpu_pool
    exit 0 ;;
esac

mkdir -p "$AIRFLOW_HOME/logs" "$PIDS"
[[ -f $AIRFLOW_HOME/jwt_secret ]] || (umask 077 && "$VENV/bin/python" -c "import secrets; print(secrets.token_hex(48))" > "$AIRFLOW_HOME/jwt_secret")
if [[ ! -f $AIRFLOW_HOME/passwords.json || -n ${KDFLOW_ADMIN_PASSWORD:-} ]]; then
  (umask 077 && KDFLOW_ADMIN_PASSWORD=${KDFLOW_ADMIN_PASSWORD:-} "$VENV/bin/python" -c \
    "import json, os, secrets; print(json.dumps({'admin': os.environ['KDFLOW_ADMIN_PASSWORD'] or secrets.token_urlsafe(12)}))" \
    > "$AIRFLOW_HOME/passwords.json")
fi

export PATH=$VENV/bin:$PATH
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$ROOT/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$PORT/execution/
export AIRFLOW__API__BASE_URL=http://127.0.0.1:$PORT
AIRFLOW__API_AUTH__JWT_SECRET=$(cat "$AIRFLOW_HOME/jwt_secret")
export AIRFLOW__API_AUTH__JWT_SECRET
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$AIRFLOW_HOME/passwords.json
export KDFLOW__STORE__URL=${KDFLOW__STORE__URL:-$ROOT/artifacts}  # tasks and the report plugin agree
export HF_HUB_OFFLINE=1 RAGAS_DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=False  # no usage data to Airflow's vendor (as docker-compose.yaml)

POOL=$(gpu_pool)
POOL_NAME=${POOL%%$'\n'*} POOL_SLOTS=${POOL##*$'\n'}
echo "[airflow-local] AIRFLOW_HOME=$AIRFLOW_HOME: migrating the metadata DB, creating pool $POOL_NAME ($POOL_SLOTS slots)"
airflow db migrate >"$AIRFLOW_HOME/logs/init.log" 2>&1
airflow pools set "$POOL_NAME" "$POOL_SLOTS" "GPU slots: student steps" >>"$AIRFLOW_HOME/logs/init.log" 2>&1

trap 'echo "[airflow-local] stopping"; stop_all' EXIT
trap 'exit 130' INT TERM
for component in "${COMPONENTS[@]}"; do
  args=("$component")
  case $component in
    api-server) args+=(-H 127.0.0.1 -p "$PORT" -w 1) ;;
    scheduler | triggerer) args+=(--skip-serve-logs) ;;
  esac
  setsid airflow "${args[@]}" >"$AIRFLOW_HOME/logs/$component.log" 2>&1 &
  echo $! >"$PIDS/$component.pid"
done

for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/api/v2/monitor/health" >/dev/null 2>&1 && break
  sleep 1
done
echo "[airflow-local] UI: http://127.0.0.1:$PORT  user: admin  password: $("$VENV/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" "$AIRFLOW_HOME/passwords.json")"
echo "[airflow-local] logs: $AIRFLOW_HOME/logs; DAG: knowledge_distillation (unpause it, then Trigger)"
wait -n || true
echo "[airflow-local] a component exited; see $AIRFLOW_HOME/logs" >&2
