"""Student test fixtures: a tiny random Phi-2-architecture model with a small BPE tokenizer
trained on the packaged KB at test time (no download, ~1 s), and a small student config.
Registered in conftest.py through ``pytest_plugins``."""

from __future__ import annotations

from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
KB_DIR = Path(__file__).resolve().parents[1] / "include" / "kdflow" / "data" / "kubernetes-v1.28"

# Question/answer pairs in the KB's words, small enough for a few fast training steps.
TINY_PAIRS = [
    ("What is a Pod?", "A Pod is the smallest deployable unit of computing in Kubernetes."),
    ("What does a Service do?", "A Service exposes a set of Pods as one network endpoint."),
    ("What is a PersistentVolume?", "A PersistentVolume is a piece of storage in the cluster."),
]


def build_tiny_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p.read_text(encoding="utf-8") for p in sorted(KB_DIR.glob("*.md"))]
    texts += [f"{q} {a}" for q, a in TINY_PAIRS]
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)


def build_tiny_phi(out_dir: Path, seed: int = 0) -> Path:
    """Save a random 2-layer Phi model (hidden 64; init range 0.2 so that a few LoRA steps visibly move the loss)
    and its tokenizer into ``out_dir``."""
    import torch
    from transformers import AutoTokenizer, PhiConfig, PhiForCausalLM

    build_tiny_tokenizer(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    torch.manual_seed(seed)
    config = PhiConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    PhiForCausalLM(config).save_pretrained(out_dir)
    return out_dir


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
