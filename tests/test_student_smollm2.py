"""The packaged SmolLM2 student end to end (slow: GGUF conversion ~16-30 s, real 135M model).

From a clean cache: convert the GGUF once, answer KB questions with the CLI on CPU, fine-tune on
question/answer pairs in the KB's words, and answer again with visibly different answers."""

from __future__ import annotations

import json
import time

import pytest

from kdflow.integrity import SMOLLM2_GGUF
from kdflow.student.models import resolve_student

pytestmark = pytest.mark.slow

KB_PAIRS = [
    ("What is a Pod in Kubernetes?",
     "A Pod is the smallest deployable unit in Kubernetes: one or more containers that share network and storage."),
    ("Why does Kubernetes need Services?",
     "Pods are ephemeral and get new IP addresses, so a Service gives a set of Pods a stable cluster IP and DNS name."),
    ("What is a PersistentVolumeClaim?",
     "A PersistentVolumeClaim is a request for storage by a user that binds to a matching PersistentVolume."),
]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def test_embedded_gguf_is_converted_once(model_cache):
    started = time.perf_counter()
    folder = resolve_student("embedded", model_cache)
    first_s = time.perf_counter() - started
    assert folder.parent == model_cache and folder.name.startswith(SMOLLM2_GGUF.relpath.removesuffix(".gguf") + "-")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    # dequantized: trainable, savable
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert resolve_student("embedded", model_cache) == folder
    assert time.perf_counter() - started < first_s / 3  # reused, not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in model_cache.iterdir()] == [folder.name]  # no temporary folder left behind


def test_cli_answers_fine_tunes_and_answers_differently(model_cache, tmp_path, monkeypatch, capsys):
    from kdflow.cli import main

    monkeypatch.setenv("KDFLOW__STUDENT__MAX_NEW_TOKENS", "24")
    monkeypatch.setenv("KDFLOW__STUDENT__LORA_R", "8")
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n"
                                 for i, (q, _) in enumerate(KB_PAIRS)))
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in KB_PAIRS))
    common = ["--model", "embedded", "--cache-dir", str(model_cache)]

    assert main(["student", "answer", "--questions", str(questions), "--out",
                 str(tmp_path / "before.jsonl"), *common]) == 0
    capsys.readouterr()
    assert main(["student", "train", "--dataset", str(dataset), "--out", str(tmp_path / "adapter"), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["final_loss"] < result["initial_loss"], result
    assert result["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 20 * 2**20
    assert main(["student", "answer", "--questions", str(questions), "--adapter",
                 str(tmp_path / "adapter"), *common]) == 0
    after = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    before = [json.loads(line) for line in (tmp_path / "before.jsonl").read_text().splitlines()]
    assert all(row["answer"] for row in before + after)
    assert [r["answer"] for r in after] != [r["answer"] for r in before]
    print("before:", [r["answer"] for r in before], "\nafter:", [r["answer"] for r in after], "\ntrain:", result)
