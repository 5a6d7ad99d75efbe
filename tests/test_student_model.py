"""Answering and LoRA/QLoRA training on a tiny random Phi-2-architecture model (built at test time)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from kdflow.student.device import DevicePlan
from kdflow.student.generate import answer_questions
from kdflow.student.models import StudentModelError, load_student, load_tokenizer
from kdflow.student.prompt import DEFAULT_SYSTEM_PROMPT, build_prompt, completion_text
from kdflow.student.train import train_adapter

CPU = DevicePlan.cpu()
NF4_CPU = DevicePlan(device="cpu", dtype="float32", quantization="nf4", threshold_gib=0.0, reason="4-bit on CPU (test)")


def _questions(pairs):
    return [q for q, _ in pairs]


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def cycle1(tiny_phi_dir, tmp_path_factory):
    """One trained cycle-1 adapter, shared by the tests that build on it."""
    from fixtures_student import TINY_PAIRS, student_settings

    out = tmp_path_factory.mktemp("cycle1")
    result = train_adapter(student_settings(), tiny_phi_dir, list(TINY_PAIRS), out, plan=CPU, seed=7)
    return out, result


def test_prompt_is_the_chat_template_or_phi_format(tiny_phi_dir):
    tokenizer = load_tokenizer(tiny_phi_dir)
    prompt = build_prompt(tokenizer, " What is a Pod? ")
    assert prompt == (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
                      "<|im_start|>user\nWhat is a Pod?<|im_end|>\n<|im_start|>assistant\n")
    assert completion_text(tokenizer, "A group. ") == "A group.<|im_end|>"
    tokenizer.chat_template = None  # Phi-2 ships without one
    assert build_prompt(tokenizer, "What is a Pod?", "Be brief.") == "Instruct: Be brief.\nWhat is a Pod?\nOutput:"
    with pytest.raises(ValueError, match="empty"):
        build_prompt(tokenizer, "  ")


def test_batched_answers_equal_one_by_one(tiny_phi_dir, student_cfg, tiny_pairs):
    questions = _questions(tiny_pairs)
    batched = answer_questions(student_cfg, tiny_phi_dir, questions, plan=CPU)
    single = answer_questions(student_cfg.model_copy(update={"generation_batch_size": 1}),
                              tiny_phi_dir, questions, plan=CPU)
    assert [a.text for a in batched] == [a.text for a in single]
    assert [a.new_tokens for a in batched] == [a.new_tokens for a in single]
    assert [a.question for a in batched] == questions
    assert all(0 < a.new_tokens <= student_cfg.max_new_tokens for a in batched)
    stats = batched.stats
    assert stats.questions == 3 and stats.new_tokens == sum(a.new_tokens for a in batched) and stats.tokens_per_s > 0
    assert stats.plan == CPU and set(stats.memory) == {"before", "after"}


def test_each_question_may_have_its_own_token_budget(tiny_phi_dir, student_cfg, tiny_pairs):
    """Gold questions get a shorter budget than the cycle's: each answer stops at its own, and is the
    same answer (greedy) the same budget gives one by one."""
    questions = _questions(tiny_pairs) * 2
    budgets = [12, 12, 12, 3, 3, 3]
    mixed = answer_questions(student_cfg, tiny_phi_dir, questions, plan=CPU, max_new_tokens=budgets)
    assert [a.new_tokens <= b for a, b in zip(mixed, budgets, strict=True)] == [True] * 6
    short = answer_questions(student_cfg.model_copy(update={"max_new_tokens": 3}), tiny_phi_dir,
                             questions[3:], plan=CPU)
    assert [a.text for a in mixed[3:]] == [a.text for a in short]
    assert max(a.new_tokens for a in mixed[3:]) <= 3 < max(a.new_tokens for a in mixed[:3])
    with pytest.raises(ValueError, match="2 token budgets for 6 questions"):
        answer_questions(student_cfg, tiny_phi_dir, questions, plan=CPU, max_new_tokens=[1, 2])


def test_lora_training_lowers_the_loss_and_saves_the_adapter(cycle1, student_cfg):
    out, result = cycle1
    assert result.final_loss < result.initial_loss - 1.0, result
    assert result.steps == len(result.losses) == student_cfg.epochs * 2  # 3 pairs in batches of 2
    assert result.target_modules == ["dense", "k_proj", "q_proj", "v_proj"]
    assert result.plan == CPU and result.init_adapter is None and result.tokens_per_s > 0 and result.peak_memory_mb > 0
    assert {"adapter_model.safetensors", "adapter_config.json", "kdflow_base.json",
            "train_result.json"} <= set(_digest(out))
    assert json.loads((out / "train_result.json").read_text())["losses"] == result.losses


def test_reloaded_adapter_changes_the_answers(cycle1, tiny_phi_dir, student_cfg, tiny_pairs):
    adapter, _ = cycle1
    questions = _questions(tiny_pairs)
    base = answer_questions(student_cfg, tiny_phi_dir, questions, plan=CPU)
    tuned = answer_questions(student_cfg, tiny_phi_dir, questions, plan=CPU, adapter_dir=adapter)
    again = answer_questions(student_cfg, tiny_phi_dir, questions, plan=CPU, adapter_dir=adapter)
    assert [a.text for a in tuned] != [a.text for a in base]
    assert [a.text for a in tuned] == [a.text for a in again]
    assert tuned.stats.adapter == str(adapter)


def test_cycle_two_continues_from_cycle_one(cycle1, tiny_phi_dir, student_cfg, tiny_pairs, tmp_path):
    adapter, first = cycle1
    before = _digest(adapter)
    second = train_adapter(student_cfg, tiny_phi_dir, tiny_pairs, tmp_path / "cycle2",
                           init_adapter_dir=adapter, plan=CPU, seed=7)
    assert second.init_adapter == str(adapter)
    assert second.initial_loss == pytest.approx(first.final_loss, abs=1e-3)  # starts where cycle 1 ended
    assert second.initial_loss < first.initial_loss - 1.0  # not from scratch
    assert _digest(adapter) == before  # cycle 1's adapter is left as it was


def test_long_training_reports_its_progress_within_an_epoch(tiny_phi_dir, student_cfg, tiny_pairs, tmp_path,
                                                            monkeypatch, caplog):
    """A CPU run of many steps says where it is (step of all steps, epoch, loss, time left), not only at
    each epoch's end: with the report interval at 0 every step reports, counting to the last step."""
    import kdflow.student.train as train

    monkeypatch.setattr(train, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level("INFO", logger="kdflow.student.train"):
        result = train_adapter(student_cfg, tiny_phi_dir, tiny_pairs, tmp_path / "progress", plan=CPU, seed=2)
    lines = [r.getMessage() for r in caplog.records if " s left" in r.getMessage()]
    assert len(lines) == result.steps
    assert lines[-1].startswith(f"student training: step {result.steps}/{result.steps} (epoch {result.epochs}/")


def test_qlora_nf4_trains_on_cpu(tiny_phi_dir, student_cfg, tiny_pairs, tmp_path):
    model, _ = load_student(tiny_phi_dir, NF4_CPU, trainable=True)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    # no CPU inference repacking (AVX512-BF16 CPUs) of a model that is going to be trained
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())
    del model
    result = train_adapter(student_cfg, tiny_phi_dir, tiny_pairs, tmp_path / "qlora", plan=NF4_CPU, seed=3)
    assert result.plan.quantization == "nf4"
    assert result.final_loss < result.initial_loss - 0.5, result


def test_training_after_4bit_generation_trains_a_fresh_model(tiny_phi_dir, student_cfg, tiny_pairs, tmp_path):
    """The trap: training a 4-bit model object that already ran generate() trains silently wrong
    on CPU. train_adapter must load its own model, so generating first changes nothing."""
    reference = train_adapter(student_cfg, tiny_phi_dir, tiny_pairs, tmp_path / "ref", plan=NF4_CPU, seed=5)
    model, tokenizer = load_student(tiny_phi_dir, NF4_CPU)
    prompt = build_prompt(tokenizer, tiny_pairs[0][0])
    model.generate(**tokenizer([prompt], return_tensors="pt", add_special_tokens=False),
                   max_new_tokens=4, do_sample=False)
    after_generation = train_adapter(student_cfg, tiny_phi_dir, tiny_pairs, tmp_path / "after", plan=NF4_CPU, seed=5)
    assert after_generation.losses == pytest.approx(reference.losses, abs=1e-4)
    assert after_generation.final_loss < after_generation.initial_loss - 0.5


def test_training_refuses_no_pairs_and_a_foreign_adapter(cycle1, tiny_phi_dir, student_cfg, tiny_pairs, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        train_adapter(student_cfg, tiny_phi_dir, [], tmp_path / "none", plan=CPU, seed=1)
    other = shutil.copytree(tiny_phi_dir, tmp_path / "other-model")
    with pytest.raises(StudentModelError, match="trained on"):
        train_adapter(student_cfg, other, tiny_pairs, tmp_path / "x", init_adapter_dir=cycle1[0], plan=CPU, seed=1)


def test_cli_answers_trains_and_answers_differently(tiny_phi_dir, tiny_pairs, tmp_path, monkeypatch, capsys):
    from kdflow.cli import main

    for key, value in {"EPOCHS": "6", "LEARNING_RATE": "0.03", "MAX_NEW_TOKENS": "12", "LORA_DROPOUT": "0"}.items():
        monkeypatch.setenv(f"KDFLOW__STUDENT__{key}", value)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n"
                                 for i, (q, _) in enumerate(tiny_pairs)))
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in tiny_pairs))
    model = ["--model", str(tiny_phi_dir)]
    assert main(["student", "answer", "--questions", str(questions), "--out",
                 str(tmp_path / "before.jsonl"), *model]) == 0
    assert main(["student", "train", "--dataset", str(dataset), "--out", str(tmp_path / "adapter"), *model]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["final_loss"] < trained["initial_loss"] and trained["epochs"] == 6
    assert main(["student", "answer", "--questions", str(questions), "--adapter",
                 str(tmp_path / "adapter"), *model]) == 0
    after = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    before = [json.loads(line) for line in (tmp_path / "before.jsonl").read_text().splitlines()]
    assert [r["id"] for r in after] == ["q0", "q1", "q2"]
    assert [r["answer"] for r in after] != [r["answer"] for r in before]
    with pytest.raises(SystemExit, match="needs a non-empty text field"):
        main(["student", "train", "--dataset", str(questions), "--out", str(tmp_path / "bad"), *model])


def test_labels_mask_exactly_the_prompt_tokens(tiny_phi_dir, tiny_pairs):
    """Completion-only loss: -100 on every prompt token, the input id on every answer token."""
    from kdflow.student.train import IGNORE_INDEX, collate, encode_pairs

    tokenizer = load_tokenizer(tiny_phi_dir)
    examples = encode_pairs(tokenizer, tiny_pairs, max_length=128)
    assert len(examples) == len(tiny_pairs)
    for (question, answer), example in zip(tiny_pairs, examples, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        masked = sum(label == IGNORE_INDEX for label in labels)
        assert labels[:masked] == [IGNORE_INDEX] * masked  # one masked run, at the start
        assert labels[masked:] == ids[masked:]
        assert tokenizer.decode(ids[:masked]) == build_prompt(tokenizer, question)
        assert tokenizer.decode(ids[masked:]) == completion_text(tokenizer, answer)
    cut = encode_pairs(tokenizer, tiny_pairs[:1], max_length=len(examples[0]["input_ids"]) - 2)[0]
    assert cut["labels"] == examples[0]["labels"][:-2] and cut["input_ids"] == examples[0]["input_ids"][:-2]
    batch = collate(examples, tokenizer.pad_token_id)  # right padding is masked out of the loss too
    for row, example in zip(batch["labels"].tolist(), examples, strict=True):
        assert row[len(example["labels"]) :] == [IGNORE_INDEX] * (len(row) - len(example["labels"]))


def _answer_step(tiny_phi_dir, tmp_path, **student):
    """Publish one question for cycle 1 of a fresh run, then run the baseline answering step."""
    from kdflow.pipeline import execute
    from kdflow.pipeline.context import RunContext
    from kdflow.records import Question

    run = "manual__answer_step"
    overrides = {"store": {"url": str(tmp_path / "store")},
                 "pipeline": {"cycles": 1, "questions_per_cycle": 1, "topics": ["pods"]},
                 "student": {"model": str(tiny_phi_dir), "max_new_tokens": 6, **student}}
    ctx = RunContext.create(run, overrides)
    question = Question(id="pods-1", topic="pods", question="What is a Pod?", passage_ids=["pods-p1"], cycle=1)
    ctx.publish(1, "questions.jsonl", ctx.stage_rows(1, "questions.jsonl", [question]), schema="questions")
    execute("cycle_start", run_id=run, overrides=overrides, cycle=1)
    staged = execute("generate_baseline_answers", run_id=run, overrides=overrides, cycle=1)
    return ctx, staged


def test_answer_step_records_the_device_plan_and_generation_stats(tiny_phi_dir, tmp_path):
    from kdflow.student.device import plan_device

    ctx, staged = _answer_step(tiny_phi_dir, tmp_path)
    summary = staged["summary"]
    plan = DevicePlan.model_validate(summary["plan"])
    expected = plan_device(ctx.config.student, "answer")
    same = ("device", "dtype", "quantization", "threshold_gib")
    assert {k: summary["plan"][k] for k in same} == {k: getattr(expected, k) for k in same}
    assert "free_gpu_gib" in summary["plan"] and plan.reason and summary["device"] == plan.device
    (row,) = ctx.rows(staged)
    assert summary["questions"] == 1 and summary["new_tokens"] == row["new_tokens"] > 0
    assert summary["tokens_per_s"] > 0 and summary["wall_s"] > 0 and set(summary["memory"]) == {"before", "after"}
    assert summary["adapter"] is None  # the base model: no champion yet
    published = ctx.publish(1, "baseline_answers.jsonl", staged, schema="answers")
    assert ctx.checkpoint(1, "baseline_answers.jsonl").summary["plan"] == summary["plan"] == published.summary["plan"]


def test_student_steps_apply_the_configured_torch_threads(tiny_phi_dir, student_cfg, tiny_pairs, tmp_path):
    import torch

    torch.set_num_threads(1)
    try:
        _answer_step(tiny_phi_dir, tmp_path, torch_threads=2)
        assert torch.get_num_threads() == 2  # set by the answering step
        torch.set_num_threads(1)
        three = student_cfg.model_copy(update={"torch_threads": 3, "epochs": 1})
        train_adapter(three, tiny_phi_dir, tiny_pairs[:1], tmp_path / "adapter", plan=CPU, seed=1)
        assert torch.get_num_threads() == 3  # set by training
    finally:
        torch.set_num_threads(1)


def test_length_grouped_batches_see_every_pair_once_with_less_padding():
    """Each epoch holds every example exactly once, in a seeded order, and pads less than plain
    shuffled batches (the training loop's padding is compute spent on nothing)."""
    import random

    from kdflow.student.train import length_grouped_batches

    rng = random.Random(0)
    examples = [{"input_ids": [i] * rng.randint(20, 160), "labels": []} for i in range(64)]

    def padding(batches: list) -> int:
        return sum(max(len(e["input_ids"]) for e in b) * len(b) - sum(len(e["input_ids"]) for e in b) for b in batches)

    grouped = length_grouped_batches(examples, 4, random.Random(7))
    assert sorted(e["input_ids"][0] for b in grouped for e in b) == list(range(64))
    assert all(len(b) == 4 for b in grouped)
    assert grouped == length_grouped_batches(examples, 4, random.Random(7))
    assert grouped != length_grouped_batches(examples, 4, random.Random(8))
    shuffled = random.Random(7).sample(examples, 64)
    plain = [shuffled[i : i + 4] for i in range(0, 64, 4)]
    assert padding(grouped) < padding(plain) / 2


def test_bf16_cpu_plans_train_under_autocast_and_answer_with_bf16_weights(tiny_phi_dir, student_cfg, tiny_pairs,
                                                                          tmp_path):
    """student.cpu_dtype bfloat16 (auto on CPUs with AMX/AVX512-BF16): the LoRA weights stay float32 and
    learn under bf16 autocast; the answers come from bf16 weights with the adapter."""
    from safetensors.torch import load_file

    train_plan = DevicePlan.cpu(purpose="train", bf16=True)
    result = train_adapter(student_cfg, tiny_phi_dir, tiny_pairs, tmp_path / "a", plan=train_plan, seed=7)
    assert result.final_loss < result.initial_loss - 1.0, result
    assert result.plan.compute_dtype == "bfloat16" and result.plan.dtype == "float32"
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}
    answers = answer_questions(student_cfg, tiny_phi_dir, [q for q, _ in tiny_pairs],
                               plan=DevicePlan.cpu(bf16=True), adapter_dir=tmp_path / "a")
    assert answers.stats.plan.dtype == "bfloat16" and all(a.new_tokens > 0 for a in answers)
