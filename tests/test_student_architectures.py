"""Every supported student family, as a tiny random-weight model built from its config class
(kdflow.student.tiny_models): prompt format, answer -> LoRA train -> answer with the adapter,
truncation at the model's context, and 4-bit NF4 training (bitsandbytes runs on this CPU)."""

from __future__ import annotations

import json
import shutil

import pytest

from kdflow.student.device import DevicePlan
from kdflow.student.generate import answer_questions
from kdflow.student.models import StudentModelError, load_student, load_tokenizer
from kdflow.student.prompt import DEFAULT_SYSTEM_PROMPT as SYS
from kdflow.student.prompt import build_prompt, completion_text, stop_token_ids
from kdflow.student.tiny_models import FAMILIES, TINY_PAIRS, build_tiny_student
from kdflow.student.train import IGNORE_INDEX, encode_pairs, train_adapter

CPU = DevicePlan.cpu()
NF4_CPU = DevicePlan(device="cpu", dtype="float32", quantization="nf4", threshold_gib=0.0, reason="4-bit on CPU (test)")
ATTENTION = ["k_proj", "o_proj", "q_proj", "v_proj"]
QUESTION = "What is a Pod?"
# family -> (model_type, LoRA targets, the prompt for QUESTION, the token that ends an answer)
EXPECTED = {
    "phi-2": ("phi", ["dense", "k_proj", "q_proj", "v_proj"], f"Instruct: {SYS}\n{QUESTION}\nOutput:",
              "<|endoftext|>"),
    "qwen3": ("qwen3", ATTENTION, f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\n", "<|im_end|>"),  # thinking off
    "llama-3.2": ("llama", ATTENTION, f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|>"
                  f"<|start_header_id|>user<|end_header_id|>\n\n{QUESTION}<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "gemma-3": ("gemma3_text", ATTENTION, f"<bos><start_of_turn>user\n{SYS}\n\n{QUESTION}<end_of_turn>\n"
                "<start_of_turn>model\n", "<end_of_turn>"),  # not its eos token, <eos>
    "smollm2": ("llama", ATTENTION, f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
                "<|im_start|>assistant\n", "<|im_end|>"),
}
FAMILY_NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """One tiny model per family, in folders whose names match no name profile."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("students")
    return {name: build_tiny_student(name, root / f"student-{n}") for n, name in enumerate(FAMILY_NAMES)}


def _settings(**update):
    from fixtures_student import student_settings

    return student_settings().model_copy(update=update)


def test_every_family_is_expected():
    assert set(EXPECTED) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_prompt_format_and_answer_end(students, family):
    tokenizer = load_tokenizer(students[family])
    _, _, prompt, end = EXPECTED[family]
    assert build_prompt(tokenizer, f" {QUESTION} ") == prompt
    plain_space = "" if tokenizer.chat_template else " "  # "Output: <answer>"
    assert completion_text(tokenizer, "A group. ") == f"{plain_space}A group.{end}"
    assert tokenizer.convert_tokens_to_ids(end) in stop_token_ids(tokenizer)
    [example] = encode_pairs(tokenizer, TINY_PAIRS[:1], max_length=256)
    assert example["input_ids"][-1] == example["labels"][-1] == tokenizer.convert_tokens_to_ids(end)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_answer_train_and_answer_with_the_adapter(students, family, tmp_path):
    model_dir, cfg = students[family], _settings()
    questions = [q for q, _ in TINY_PAIRS]
    before = answer_questions(cfg, model_dir, questions, plan=CPU)
    result = train_adapter(cfg, model_dir, list(TINY_PAIRS), tmp_path / "adapter", plan=CPU, seed=7)
    after = answer_questions(cfg, model_dir, questions, plan=CPU, adapter_dir=tmp_path / "adapter")
    model_type, targets, _, _ = EXPECTED[family]
    assert result.final_loss < result.initial_loss - 0.5, result
    assert result.target_modules == targets
    assert (result.profile.model_type, result.profile.architecture) == (model_type, model_type)
    assert (result.profile.learning_rate, result.profile.epochs) == (cfg.learning_rate, cfg.epochs)  # set: they win
    assert all(0 < a.new_tokens <= cfg.max_new_tokens for a in before)
    assert [a.text for a in after] != [a.text for a in before]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_training_truncates_at_the_model_context(students, family, tmp_path):
    """student.max_length (128 here) is capped by the model's max_position_embeddings: a context just
    longer than the longest prompt keeps every pair, each cut to the context, answers losing their end."""
    tokenizer = load_tokenizer(students[family])
    full = encode_pairs(tokenizer, TINY_PAIRS, max_length=128)
    context = max(e["labels"].count(IGNORE_INDEX) for e in full) + 3
    assert all(len(e["input_ids"]) > context for e in full)
    short = shutil.copytree(students[family], tmp_path / "short-context")
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": context}))
    result = train_adapter(_settings(epochs=1), short, list(TINY_PAIRS), tmp_path / "adapter", plan=CPU, seed=1)
    assert (result.profile.context_length, result.profile.max_length, result.pairs) == (context, context, 3)
    cut = encode_pairs(tokenizer, TINY_PAIRS, max_length=context)
    assert [e["input_ids"] for e in cut] == [e["input_ids"][:context] for e in full]
    assert result.train_tokens == sum(len(e["labels"]) - e["labels"].count(IGNORE_INDEX) for e in cut)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_qlora_nf4_trains_every_family_on_cpu(students, family, tmp_path):
    model, _ = load_student(students[family], NF4_CPU, trainable=True)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    del model
    result = train_adapter(_settings(epochs=4), students[family], list(TINY_PAIRS), tmp_path / "qlora",
                           plan=NF4_CPU, seed=3)
    assert result.plan.quantization == "nf4" and result.target_modules == EXPECTED[family][1]
    assert result.final_loss < result.initial_loss - 0.3, result


def test_an_unknown_architecture_trains_every_linear_layer_and_bad_targets_fail_in_one_line(tmp_path):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from kdflow.student.tiny_models import build_tiny_tokenizer

    model_dir = tmp_path / "neox"
    tokenizer = build_tiny_tokenizer(model_dir, FAMILIES["smollm2"], FAMILIES["smollm2"].chat_template)
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)).save_pretrained(model_dir)
    result = train_adapter(_settings(epochs=2), model_dir, list(TINY_PAIRS), tmp_path / "adapter", plan=CPU, seed=1)
    assert result.profile.architecture is None and result.profile.target_modules == "all-linear"
    assert result.target_modules == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]  # no output layer
    with pytest.raises(StudentModelError) as caught:
        train_adapter(_settings(target_modules=["q_proj"]), model_dir, list(TINY_PAIRS), tmp_path / "bad", plan=CPU,
                      seed=1)
    message = str(caught.value)
    assert message.startswith("student.target_modules ['q_proj'] match no layer of this gpt_neox model; its linear "
                              "layers: ['dense', 'dense_4h_to_h', 'dense_h_to_4h', ")  # then the output layer's name
    assert message.endswith("'query_key_value']") and "\n" not in message
