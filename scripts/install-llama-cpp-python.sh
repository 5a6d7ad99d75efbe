#!/usr/bin/env bash
# Install llama-cpp-python's bindings (the GGUF check of `kdflow export`, the `pool` server layout)
# over the llama.cpp that scripts/build-llama-cpp.sh compiled, instead of compiling llama.cpp a
# second time: the wheel is built with LLAMA_BUILD=OFF (Python files only, seconds) and the package's
# lib folder, where it loads libllama/libggml/libmtmd from, gets the shared libraries of that build.
# Both come from the same pinned sdist, so the C API the bindings declare is the one compiled.
# Usage: install-llama-cpp-python.sh LLAMA_BUILD_DIR PYTHON WHEEL_DIR VERSION
set -euo pipefail
BUILD=$1
PYTHON=$2
WHEELS=$3
VERSION=$4
if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  mkdir -p "$WHEELS"
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" \
    "llama-cpp-python==$VERSION"
fi
"$PYTHON" -m pip install -q --find-links "$WHEELS" "llama-cpp-python[server]==$VERSION"
# Where pip put the package (a venv's site-packages or a user site), found without importing it.
LIB="$("$PYTHON" -c 'import importlib.util; print(importlib.util.find_spec("llama_cpp").submodule_search_locations[0])')/lib"
mkdir -p "$LIB"
cp -a "$BUILD"/lib*.so* "$LIB/"
"$PYTHON" -c "import llama_cpp; print('[setup] llama-cpp-python', llama_cpp.__version__, 'on', llama_cpp.llama_cpp._lib._name)" \
  || { echo "[install-llama-cpp-python] llama_cpp does not load the libraries in $LIB"; exit 1; }
