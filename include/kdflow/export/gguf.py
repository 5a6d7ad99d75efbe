"""Merged transformers folder -> GGUF with llama.cpp's own converter, and the check that the GGUF
answers like the model it came from.

The converter is the one in the llama.cpp source vendored by the pinned llama-cpp-python (the same
llama.cpp that serves the teacher); ``make setup`` unpacks it (``scripts/fetch-llama-convert.sh``)
into ``<venv>/share/kdflow/llama.cpp-convert``, or ``KDFLOW_LLAMA_CPP_CONVERT`` names another copy.
It runs in a subprocess: it is a script with its own imports, and a failure must not take the
export's Python process (and the HF files already written) with it."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONVERTER_ENV = "KDFLOW_LLAMA_CPP_CONVERT"
# --outtype of convert_hf_to_gguf.py: f16 (lossless for a bf16/f16 model up to rounding) and q8_0.
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
_UNSUPPORTED = re.compile(r"Model (\S+) is not supported")


class ExportError(RuntimeError):
    """An export step cannot be done as asked (one line, naming what and why)."""


def converter_dir() -> Path:
    """Where ``convert_hf_to_gguf.py`` (with its ``conversion`` package and ``gguf-py``) lives."""
    configured = os.environ.get(CONVERTER_ENV)
    default = Path(sys.prefix) / "share" / "kdflow" / "llama.cpp-convert"
    folder = Path(configured).expanduser() if configured else default
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise ExportError(f"llama.cpp's GGUF converter is not at {folder} (make setup unpacks it there; or set "
                          f"{CONVERTER_ENV} to a folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/)")
    return folder


def convert_to_gguf(hf_dir: Path, out_file: Path, outtype: str = "f16", *, model_name: str | None = None) -> Path:
    """Convert the transformers model in ``hf_dir`` to ``out_file``; :class:`ExportError` with one line
    (the architecture, or the converter's last error) when it cannot."""
    if outtype not in GGUF_TYPES:
        raise ExportError(f"GGUF type {outtype!r} is not one of {list(GGUF_TYPES)}")
    folder = converter_dir()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(out_file.name + ".partial")
    cmd = [sys.executable, str(folder / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile", str(partial),
           "--outtype", outtype, *(["--model-name", model_name] if model_name else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder / "gguf-py"),
                                                                     os.environ.get("PYTHONPATH")])),
           "NO_LOCAL_GGUF": ""}
    log.info("converting %s to %s (%s)", hf_dir, out_file.name, outtype)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ExportError(_conversion_failure(done.stdout + done.stderr, hf_dir))
    partial.replace(out_file)
    return out_file


def _conversion_failure(output: str, hf_dir: Path) -> str:
    unsupported = _UNSUPPORTED.search(output)
    if unsupported:
        return (f"llama.cpp's GGUF converter does not support the architecture {unsupported.group(1)}; "
                f"the transformers export is complete at {hf_dir}")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1] if lines else "")
    return f"GGUF conversion of {hf_dir} failed: {last[-300:]}"


def gguf_greedy_tokens(gguf_file: Path, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                       threads: int = 1) -> list[list[int]]:
    """Greedy new token ids per prompt from the GGUF through llama-cpp-python, re-tokenized with the
    transformers tokenizer so they compare with :func:`kdflow.export.merge.greedy_tokens`."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_file), n_ctx=1024, n_threads=threads, seed=0, verbose=False)
    try:
        out = []
        for prompt in prompts:
            reply = llm(prompt, max_tokens=max_new_tokens, temperature=0.0, top_k=1, repeat_penalty=1.0)
            text = reply["choices"][0]["text"]
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        return out
    finally:
        llm.close()
