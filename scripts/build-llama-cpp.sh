#!/usr/bin/env bash
# Compile the pinned llama.cpp once: llama.cpp's own server (the embedded teacher's default,
# teacher.embedded_server=llama_server) and the shared libraries llama-cpp-python's bindings load
# (scripts/install-llama-cpp-python.sh puts them into its package), from the llama.cpp source vendored
# in the pinned llama-cpp-python sdist, so the server, the bindings and the GGUF converter are one
# llama.cpp. One compile instead of two (llama-cpp-python's own build compiles ggml and llama again):
# about half of `make setup`'s build time on 2 cores.
# Usage: build-llama-cpp.sh DEST [PYTHON]. Writes the folder DEST (llama-server beside lib*.so*, each
# found through RUNPATH $ORIGIN) atomically; no network at build time beyond the package index (no
# web UI download, no curl/openssl: the server never fetches).
set -euo pipefail
DEST=$1
PYTHON=${2:-python3}
# shellcheck source=scripts/llama-cpp-source.sh
source "$(dirname "$0")/llama-cpp-source.sh"
# Non-native (the native build segfaults in llama_decode on some of our CPUs); shared libraries that
# find each other in their own folder wherever it is copied.
cmake -S "$LLAMA_SRC" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' >"$work/cmake.log" 2>&1 \
  || { tail -30 "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
rm -rf "$DEST.tmp.$$"
mkdir -p "$DEST.tmp.$$"
cp -a "$work/build/bin/llama-server" "$work/build/bin/"lib*.so* "$DEST.tmp.$$/"
"$DEST.tmp.$$/llama-server" --version >/dev/null 2>&1 \
  || { echo "[build-llama-cpp] the built llama-server does not start: $DEST.tmp.$$/llama-server --version"; exit 1; }
rm -rf "$DEST"
mv "$DEST.tmp.$$" "$DEST"
