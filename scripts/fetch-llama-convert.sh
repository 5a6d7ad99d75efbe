#!/usr/bin/env bash
# Unpack llama.cpp's HF -> GGUF converter (convert_hf_to_gguf.py, its conversion/ package and the
# gguf-py library it is written against) from the pinned llama-cpp-python sdist, the same llama.cpp
# the teacher server is compiled from, so an exported GGUF loads in that server. `python -m kdflow
# export` runs it. Usage: fetch-llama-convert.sh DEST_DIR [PYTHON]. Writes DEST_DIR atomically.
set -euo pipefail
DEST=$1
PYTHON=${2:-python3}
LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$LLAMA_CPP_VERSION"
src="llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
tar xzf "$work/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$work" \
  "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py/gguf" "$src/LICENSE"
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp.$$"
mv "$work/$src" "$DEST.tmp.$$"
rm -rf "$DEST"
mv "$DEST.tmp.$$" "$DEST"
