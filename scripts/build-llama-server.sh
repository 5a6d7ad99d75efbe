#!/usr/bin/env bash
# Compile llama.cpp's own server (the embedded teacher's default, teacher.embedded_server=llama_server)
# from the llama.cpp source vendored in the pinned llama-cpp-python sdist, so both servers are the
# same llama.cpp. Usage: build-llama-server.sh DEST [PYTHON]. Writes DEST atomically; no network at
# build time beyond the package index (no web UI download, no curl/openssl: the server never fetches).
set -euo pipefail
DEST=$1
PYTHON=${2:-python3}
# shellcheck source=scripts/llama-cpp-source.sh
source "$(dirname "$0")/llama-cpp-source.sh"
# Non-native (the native build segfaults in llama_decode on some of our CPUs), static, server only.
cmake -S "$LLAMA_SRC" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >"$work/cmake.log" 2>&1 \
  || { tail -30 "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
mkdir -p "$(dirname "$DEST")"
install -m 755 "$work/build/bin/llama-server" "$DEST.tmp.$$"
mv "$DEST.tmp.$$" "$DEST"
