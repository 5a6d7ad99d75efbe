"""Student test fixtures: a tiny random Phi-2-architecture model with a small BPE tokenizer
trained on the packaged KB at test time (no download, ~1 s; kdflow.student.tiny_models builds
every family), and a small student config.
Registered in conftest.py through ``pytest_plugins``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdflow.student import tiny_models
from kdflow.student.tiny_models import CHATML, TINY_PAIRS, build_tiny_student

__all__ = ["CHATML", "TINY_PAIRS", "build_tiny_phi", "build_tiny_tokenizer"]


def build_tiny_tokenizer(out_dir: Path) -> None:
    """The tiny Phi's tokenizer alone, for tests that build another architecture around it."""
    tiny_models.build_tiny_tokenizer(out_dir, tiny_models.FAMILIES["phi-2"], CHATML)


def build_tiny_phi(out_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer Phi model (hidden 64) and its tokenizer in ``out_dir``, with a ChatML template
    (the real Phi-2 has none; tests/test_student_architectures.py covers that format)."""
    return build_tiny_student("phi-2", out_dir, seed=seed, chat_template=CHATML)


@pytest.fixture(scope="session")
def tiny_phi_dir(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    return build_tiny_phi(tmp_path_factory.mktemp("tiny-phi"))


def student_settings():
    """Student settings sized for the tiny model: a high learning rate so a few steps show."""
    from kdflow.config import StudentConfig

    return StudentConfig(
        lora_r=8, lora_alpha=16, lora_dropout=0.0, epochs=6, learning_rate=3e-2, max_length=128, batch_size=2,
        max_new_tokens=12, generation_batch_size=3, torch_threads=1,
    )


@pytest.fixture()
def student_cfg():
    return student_settings()


@pytest.fixture()
def tiny_pairs() -> list[tuple[str, str]]:
    return list(TINY_PAIRS)
