#!/usr/bin/env bash
# Run the knowledge_distillation DAG once, end to end, in this process tree (`airflow dags test`):
# a local AIRFLOW_HOME with SQLite, the local folder store and the embedded llama.cpp teacher.
# Extra DAG-run params as JSON in KDFLOW_CONF, e.g. KDFLOW_CONF='{"cycles": 1}'.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export AIRFLOW_HOME=${AIRFLOW_HOME:-$ROOT/.kdflow/airflow}
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$ROOT/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export KDFLOW__STORE__URL=${KDFLOW__STORE__URL:-$ROOT/artifacts}
# The teacher's open-book ceiling on a stratified sample of the gold set (4 per topic), so the first
# run stays short. Nightly runs use the default (all).
export KDFLOW__EVALUATION__CEILING_PER_TOPIC=${KDFLOW__EVALUATION__CEILING_PER_TOPIC:-4}
# The student answers a stratified sample of the gold set (24 per topic, 72 questions) at each scoring
# point, so the first run stays within 9 minutes on 2 cores; nightly runs score the whole set.
export KDFLOW__EVALUATION__GOLD_PER_TOPIC=${KDFLOW__EVALUATION__GOLD_PER_TOPIC:-24}
# The student does not read the knowledge base first in this run: the first reading of the embedded student
# takes ~14 min on 2 cores (later runs reuse it from the store), and a short pass that would fit (1 epoch at
# 3e-4) stored no detectable fact (docs/benchmarks/evaluation.md, kb-text-full-short). Nightly and CLI runs read.
export KDFLOW__STUDENT__KB_READING__ENABLED=${KDFLOW__STUDENT__KB_READING__ENABLED:-false}
export RAGAS_DO_NOT_TRACK=true HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=False  # no usage data to Airflow's vendor (as docker-compose.yaml)
export MLFLOW_DISABLE_TELEMETRY=true  # nor to MLflow's (the run is tracked in <store>/mlflow/mlflow.db)
mkdir -p "$AIRFLOW_HOME"
BIN=$ROOT/.venv/bin
LOG=$AIRFLOW_HOME/last-dag-test.log

echo "[run] Airflow home $AIRFLOW_HOME, store $KDFLOW__STORE__URL (full log: $LOG)"
"$BIN/airflow" db migrate >/dev/null 2>&1
set +e
"$BIN/airflow" dags test knowledge_distillation -c "${KDFLOW_CONF:-{\}}" 2>&1 | tee "$LOG" \
  | sed -un 's/.*\[DAG TEST\] end task task_id=\([^ ]*\).*/[run] done: \1/p; s/.*Task failed.*/[run] FAILED: &/p; s/.*DagRun Finished: .*state=\([a-z]*\).*/[run] DAG run finished: \1/p'
status=${PIPESTATUS[0]}
set -e
if ! grep -q "DagRun Finished: .*state=success" "$LOG"; then
  echo "[run] the DAG run did not succeed (exit $status); see $LOG" >&2
  exit 1
fi
"$BIN/python" -m kdflow report --latest
if [[ -f "$KDFLOW__STORE__URL/mlflow/mlflow.db" ]]; then
  echo "[run] MLflow: $BIN/mlflow ui --backend-store-uri sqlite:///$KDFLOW__STORE__URL/mlflow/mlflow.db  (http://127.0.0.1:5000)"
fi
