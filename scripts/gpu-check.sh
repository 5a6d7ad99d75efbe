#!/usr/bin/env bash
# The student's GPU path on this machine's CUDA device, offline, in a few minutes (issue 20): device
# plan, 4-bit NF4 QLoRA training, bf16 batched answering with the adapter, the out-of-memory fallback
# on a real OOM and memory release, on tiny random-weight Phi-2/Qwen3/Llama-3.2 models built from their
# configs. Prints one Markdown table (and writes it to FILE with `--out FILE`); exits 1 when a row
# failed. Without CUDA it prints "gpu-check skipped: no CUDA device" and exits 0.
# Python: $PYTHON, else .venv/bin/python, else python3 (it needs torch, transformers, peft; bitsandbytes
# for the 4-bit rows).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export PYTHONPATH=$ROOT/include${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_CHECK_TIMEOUT_S:-300}" "$PY" -m kdflow student gpu-check "$@"
