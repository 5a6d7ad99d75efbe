"""Full fine-tuning of the student (kdflow.student.full_finetune) on the tiny random Phi-2 model:
every weight moves, the loss falls, and the saved folder is a student model that answers on its own."""

from __future__ import annotations

import json

import pytest

from kdflow.student.device import DevicePlan
from kdflow.student.full_finetune import train_full
from kdflow.student.generate import answer_questions
from kdflow.student.models import StudentModelError, load_student

CPU = DevicePlan.cpu()
NF4_CPU = DevicePlan(device="cpu", dtype="float32", quantization="nf4", threshold_gib=0.0, reason="4-bit on CPU (test)")


@pytest.fixture(scope="module")
def full_model(tiny_phi_dir, tmp_path_factory):
    from fixtures_student import TINY_PAIRS, student_settings

    cfg = student_settings().model_copy(update={"learning_rate": 3e-3})
    out = tmp_path_factory.mktemp("full") / "model"
    return out, train_full(cfg, tiny_phi_dir, list(TINY_PAIRS), out, plan=CPU, seed=7)


def test_full_fine_tuning_trains_every_weight_and_lowers_the_loss(full_model, tiny_phi_dir):
    out, result = full_model
    assert result["final_loss"] < result["initial_loss"] - 1.0, result
    assert result["method"] == "full" and result["steps"] == len(result["losses"]) == 6 * 2  # 3 pairs, batches of 2
    base, _ = load_student(tiny_phi_dir, CPU)
    tuned, _ = load_student(out, CPU)
    before, after = dict(base.named_parameters()), dict(tuned.named_parameters())
    assert result["parameters_trained"] == sum(p.numel() for p in before.values())
    unchanged = [name for name, weight in after.items() if bool((weight == before[name]).all())]
    assert not unchanged, unchanged  # not an adapter: the embeddings, attention, MLP and norms all moved
    assert json.loads((out / "train_result.json").read_text())["losses"] == result["losses"]


def test_the_fully_fine_tuned_folder_answers_as_a_student_of_its_own(full_model, tiny_phi_dir, student_cfg,
                                                                      tiny_pairs):
    out, _ = full_model
    questions = [q for q, _ in tiny_pairs]
    base = answer_questions(student_cfg, tiny_phi_dir, questions, plan=CPU)
    tuned = answer_questions(student_cfg, out, questions, plan=CPU)
    assert [a.text for a in tuned] != [a.text for a in base]
    assert [a.text for a in tuned] == [a.text for a in answer_questions(student_cfg, out, questions, plan=CPU)]


def test_full_fine_tuning_refuses_no_pairs_and_quantized_weights(tiny_phi_dir, student_cfg, tiny_pairs, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        train_full(student_cfg, tiny_phi_dir, [], tmp_path / "none", plan=CPU, seed=1)
    with pytest.raises(StudentModelError, match="full fine-tuning needs unquantized weights"):
        train_full(student_cfg, tiny_phi_dir, tiny_pairs, tmp_path / "nf4", plan=NF4_CPU, seed=1)
    assert not (tmp_path / "nf4").exists()


def test_documents_are_learned_as_plain_text_every_token_with_no_chat_turn(tiny_phi_dir, tmp_path):
    from fixtures_student import student_settings
    from kdflow.student.models import load_tokenizer
    from kdflow.student.train import encode_texts

    tokenizer = load_tokenizer(tiny_phi_dir)
    documents = ["Pods > Pod Lifecycle\n\nA Pod's phase is Pending, Running, Succeeded, Failed or Unknown.",
                 "Services\n\nA Service exposes a set of Pods as one network endpoint."]
    examples = encode_texts(tokenizer, documents, max_length=128)
    assert [e["labels"] for e in examples] == [e["input_ids"] for e in examples]  # nothing masked
    assert tokenizer.decode(examples[0]["input_ids"][:-1]) == documents[0]
    assert examples[0]["input_ids"][-1] == tokenizer.eos_token_id
    assert len(encode_texts(tokenizer, documents, max_length=5)[0]["input_ids"]) == 5
    cfg = student_settings().model_copy(update={"learning_rate": 3e-3})
    result = train_full(cfg, tiny_phi_dir, documents, tmp_path / "text", plan=CPU, seed=3)
    assert result["data"] == "documents" and result["pairs"] == 2
    assert result["final_loss"] < result["initial_loss"] - 1.0, result


def test_the_cli_lets_the_student_read_the_knowledge_base_and_publishes_a_student_to_run_with(
        tiny_phi_dir, tmp_path, monkeypatch, capsys):
    """``student read-kb``: every passage of the selected topics read as plain text with
    ``student.kb_reading``'s numbers, the model published whole at --out (never over an existing
    folder), then usable as ``--model`` of the other student commands."""
    from kdflow.cli import main

    monkeypatch.setenv("KDFLOW__STUDENT__KB_READING__EPOCHS", "1")
    monkeypatch.setenv("KDFLOW__STUDENT__MAX_LENGTH", "64")
    out = tmp_path / "tiny-read-k8s"
    model = ["--model", str(tiny_phi_dir)]
    assert main(["student", "read-kb", "--out", str(out), "--topics", "services", *model]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["data"] == "documents" and result["epochs"] == 1 and result["learning_rate"] == 1e-4
    assert result["pairs"] == 68 and result["model"] == str(out)  # the services passages of the shipped KB
    assert f"use it with --student {out}" in captured.err
    assert (out / "config.json").is_file() and not list(tmp_path.glob(".*.partial"))
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "What does a Service do?"}) + "\n")
    assert main(["student", "answer", "--questions", str(questions), "--model", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["answer"]
    with pytest.raises(SystemExit, match="already exists"):
        main(["student", "read-kb", "--out", str(out), *model])
