#!/usr/bin/env bash
# Unpack llama.cpp's HF -> GGUF converter (convert_hf_to_gguf.py, its conversion/ package and the
# gguf-py library it is written against) from the pinned llama-cpp-python sdist, the same llama.cpp
# the teacher server is compiled from, so an exported GGUF loads in that server. `python -m kdflow
# export` runs it. Usage: fetch-llama-convert.sh DEST_DIR [PYTHON]. Writes DEST_DIR atomically.
set -euo pipefail
DEST=$1
PYTHON=${2:-python3}
# shellcheck source=scripts/llama-cpp-source.sh
source "$(dirname "$0")/llama-cpp-source.sh"
mkdir -p "$(dirname "$DEST")" "$work/convert"
cp -r "$LLAMA_SRC/convert_hf_to_gguf.py" "$LLAMA_SRC/conversion" "$LLAMA_SRC/LICENSE" "$work/convert/"
mkdir -p "$work/convert/gguf-py" && cp -r "$LLAMA_SRC/gguf-py/gguf" "$work/convert/gguf-py/"
rm -rf "$DEST.tmp.$$"
mv "$work/convert" "$DEST.tmp.$$"
rm -rf "$DEST"
mv "$DEST.tmp.$$" "$DEST"
