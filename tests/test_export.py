"""Export and serve (issue #18): the adapter merged into its base model answers exactly like base +
adapter; the embedded SmolLM2 student exports to a transformers folder and to GGUF (f16, Q8_0) that
llama.cpp loads and that answers like the merged model; the store gets the folder, its manifest and
a model card; ``kdflow serve --check`` answers from the exported GGUF over the OpenAI API; an
architecture llama.cpp's converter does not know fails in one line while the transformers export
completes. Real models (the packaged SmolLM2, tiny random Phi, Qwen3 and OPT), real training, real llama.cpp."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fixtures_student import TINY_PAIRS, build_tiny_tokenizer, student_settings
from kdflow.pipeline.context import RunContext
from kdflow.student.device import DevicePlan

RUN = "manual__export"
CPU = DevicePlan.cpu()


def _trained_adapter(model_path: Path | str, out: Path, **settings) -> Path:
    from kdflow.student.train import train_adapter

    cfg = student_settings().model_copy(update={"epochs": 2, **settings})
    train_adapter(cfg, model_path, list(TINY_PAIRS), out, plan=CPU, seed=5)
    return out


def _published_run(store: Path, student: str, adapter: Path) -> RunContext:
    """A run in the store as the pipeline leaves it after one cycle: its config, the cycle's adapter
    folder and training record."""
    ctx = RunContext.create(RUN, {"store": {"url": str(store)}, "student": {"model": student},
                                  "pipeline": {"cycles": 1}})
    ctx.publish_json(None, "config.json", ctx.config.public_dict())
    ctx.record(1, "adapter", ctx.store.upload_dir(adapter, ctx.key(1, "adapter")))
    ctx.publish_json(1, "training.json", json.loads((adapter / "train_result.json").read_text()))
    return ctx


def test_the_merged_model_answers_exactly_like_base_plus_adapter(tiny_phi_dir, tmp_path):
    from kdflow.export.merge import check_merge, greedy_tokens, merged_model, save_merged
    from kdflow.student.models import load_student

    adapter = _trained_adapter(tiny_phi_dir, tmp_path / "adapter")
    merged, tokenizer = merged_model(tiny_phi_dir, adapter)
    assert not hasattr(merged, "peft_config")  # a plain transformers model: no peft needed to load it
    questions = [q for q, _ in TINY_PAIRS]
    result = check_merge(tiny_phi_dir, adapter, merged, tokenizer, questions, max_new_tokens=12)
    assert result["identical_answers"] == 3 and result["prefix_agreement"] == 1.0
    base, _ = load_student(tiny_phi_dir, CPU)
    assert greedy_tokens(base, tokenizer, questions, 12) != greedy_tokens(merged, tokenizer, questions, 12)

    out = save_merged(merged, tokenizer, tmp_path / "hf", dtype="float32")
    reloaded, _ = load_student(out, CPU)
    assert greedy_tokens(reloaded, tokenizer, questions, 12) == greedy_tokens(merged, tokenizer, questions, 12)
    assert json.loads((out / "generation_config.json").read_text())["do_sample"] is False
    assert "_name_or_path" not in json.loads((out / "config.json").read_text())


def test_a_tokenizer_without_chat_template_gets_one_that_renders_the_trained_prompt(tmp_path):
    from transformers import AutoTokenizer

    from kdflow.export.merge import INSTRUCT_OUTPUT_TEMPLATE
    from kdflow.student.prompt import DEFAULT_SYSTEM_PROMPT, build_prompt

    build_tiny_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.chat_template = None
    trained = build_prompt(tokenizer, "What is a Pod?")  # Phi-2's "Instruct: ... Output:"
    tokenizer.chat_template = INSTRUCT_OUTPUT_TEMPLATE
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": "What is a Pod?"}],
        tokenize=False, add_generation_prompt=True)
    assert rendered == trained == f"Instruct: {DEFAULT_SYSTEM_PROMPT}\nWhat is a Pod?\nOutput:"


@pytest.mark.slow
def test_the_embedded_student_exports_to_hf_and_gguf_and_serves_an_answer(tmp_path):
    from kdflow.export.publish import export_model, record_key
    from kdflow.export.source import run_source
    from kdflow.student.models import resolve_student

    base = resolve_student("embedded")
    adapter = _trained_adapter(base, tmp_path / "adapter", lora_r=4, lora_alpha=8, learning_rate=1e-3,
                               max_new_tokens=24)
    ctx = _published_run(tmp_path / "store", "embedded", adapter)
    lines: list[str] = []
    record = export_model(ctx, run_source(ctx, RUN), out_root=tmp_path / "exports", progress=lines.append)

    name = "SmolLM2-135M-Instruct-kdflow-manual__export-cycle1"
    local = Path(record["local_dir"])
    assert record["name"] == name and record["errors"] == [] and local == tmp_path / "exports" / "embedded" / (
        "manual__export-cycle1")
    for rel in ("hf/model.safetensors", "hf/tokenizer.json", "hf/config.json", f"gguf/{name}-f16.gguf",
                f"gguf/{name}-q8_0.gguf", "README.md", "export.json", "manifest.json"):
        assert (local / rel).is_file(), rel
    manifest = json.loads((local / "manifest.json").read_text())
    for rel, info in manifest.items():
        assert hashlib.sha256((local / rel).read_bytes()).hexdigest() == info["sha256"], rel
    assert record["checks"]["merge"]["identical_answers"] == record["checks"]["merge"]["prompts"] > 0
    # llama.cpp's f16 GGUF of the bf16 export against the float32 merged model: greedy agreement
    # measured 1.0 on these prompts; a wrong conversion (other weights, template or tokens) lands near 0.
    assert record["checks"]["gguf_f16"]["prefix_agreement"] >= 0.8, record["checks"]
    card = (local / "README.md").read_text()
    assert "license: apache-2.0" in card and "HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "training pairs | 3" in card and "Kubernetes v1.28" in card and "no verdict" in card
    stored = ctx.store.read_json(record_key(run_source(ctx, RUN)))
    assert stored["folder"]["key"].startswith("models/embedded/manual__export-cycle1/")
    assert ctx.store.folder_file(stored["folder"], "manifest.json") == (local / "manifest.json").read_bytes()
    assert any("converting to GGUF q8_0" in line for line in lines)

    served = subprocess.run(
        [sys.executable, "-m", "kdflow", "serve", "--run-id", RUN, "--store", str(tmp_path / "store"), "--check",
         "--question", "What is a Pod?"], capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-2000:]
    started, answered = (json.loads(line) for line in served.stdout.strip().splitlines()[-2:])
    assert started["base_url"].startswith("http://127.0.0.1:") and started["gguf"].endswith(f"{name}-q8_0.gguf")
    assert answered["question"] == "What is a Pod?" and len(answered["answer"].split()) >= 3


def test_an_architecture_the_converter_does_not_know_fails_in_one_line_and_hf_completes(tmp_path):
    import torch
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    from kdflow.export.publish import export_model
    from kdflow.export.source import run_source

    model_dir = tmp_path / "tiny-opt"
    build_tiny_tokenizer(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                             num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=256,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.bos_token_id)).save_pretrained(model_dir)
    adapter = _trained_adapter(model_dir, tmp_path / "adapter", epochs=1, target_modules=["q_proj", "v_proj"])
    ctx = _published_run(tmp_path / "store", str(model_dir), adapter)
    record = export_model(ctx, run_source(ctx, RUN), out_root=tmp_path / "exports", check=False)
    [error] = record["errors"]
    assert error.startswith("llama.cpp's GGUF converter does not support the architecture OPTForCausalLM; ")
    assert "\n" not in error
    local = Path(record["local_dir"])
    assert (local / "hf" / "model.safetensors").is_file() and not (local / "gguf").exists()
    assert "OPTForCausalLM" in json.loads((local / "hf" / "config.json").read_text())["architectures"]

    cli = subprocess.run([sys.executable, "-m", "kdflow", "export", "--run-id", RUN, "--store", str(tmp_path / "store"),
                          "--out", str(tmp_path / "again"), "--no-check"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 1 and "does not support the architecture OPTForCausalLM" in cli.stdout


def test_export_without_a_champion_or_run_says_what_to_do(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kdflow", "export", "--store", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"kdflow: SourceError: no champion of student 'embedded' in {(tmp_path / 'empty').resolve().as_uri()}: a run "
        "must promote one first (or export a run with --run-id)")


def test_a_promotion_announces_the_champion_asset_and_a_refusal_announces_nothing():
    """The results task's outcome -> the event Airflow records through the alias (Airflow's own
    outlet-event accessors): one event for kdflow://champion/<student> with the run in its extra."""
    from airflow.sdk import AssetAlias
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from kdflow.pipeline.airflow_tasks import CHAMPION_ALIAS, announce_champion

    summary = {"promoted": True, "student": "embedded", "cycles": [1, 2], "report_html": "file:///r/report.html"}
    events = OutletEventAccessors()
    assert announce_champion(events, {"summary": summary}, "scheduled__1") is True
    [event] = events[AssetAlias(CHAMPION_ALIAS)].asset_alias_events
    assert event.dest_asset_key.uri == "kdflow://champion/embedded"
    assert event.extra == {"student": "embedded", "run_id": "scheduled__1", "cycle": 2,
                           "report": "file:///r/report.html"}

    refused = OutletEventAccessors()
    assert announce_champion(refused, {"summary": {**summary, "promoted": False}}, "scheduled__2") is False
    assert refused[AssetAlias(CHAMPION_ALIAS)].asset_alias_events == []


@pytest.mark.slow
def test_the_export_dag_exports_the_champion_and_its_gguf_passes_the_smoke_test(tmp_path, monkeypatch):
    """kdflow_export under Airflow (dag.test): a store whose champion is a trained SmolLM2 adapter with
    gold answers recorded by the pipeline's student -> the export published as the champion's, and
    the Q8_0 GGUF's key-fact recall on those gold questions within the smoke test's tolerance."""
    from airflow.dag_processing.dagbag import DagBag

    from kdflow.gold import load_gold
    from kdflow.pipeline.artifacts import champion_dir, champion_key
    from kdflow.records import Answer
    from kdflow.student.generate import answer_questions
    from kdflow.student.models import resolve_student

    base = resolve_student("embedded")
    adapter = _trained_adapter(base, tmp_path / "adapter", lora_r=4, lora_alpha=8, learning_rate=1e-3)
    ctx = _published_run(tmp_path / "store", "embedded", adapter)
    items = load_gold(Path(__file__).parent / "data" / "gold-small.jsonl").items
    ctx.publish(None, "gold.jsonl", ctx.stage_rows(None, "gold.jsonl", items))
    answers = answer_questions(ctx.config.student, base, [i.question for i in items], adapter_dir=adapter, plan=CPU,
                               max_new_tokens=[ctx.config.evaluation.gold_max_new_tokens] * len(items))
    rows = [Answer(question_id=f"gold-{i.id}", question=i.question, answer=a.text, stage="finetuned", split="gold",
                   model="embedded", new_tokens=a.new_tokens) for i, a in zip(items, answers, strict=True)]
    ctx.publish(1, "finetuned_answers.jsonl", ctx.stage_rows(1, "finetuned_answers.jsonl", rows))
    ctx.store.write_json(champion_key("embedded"), {
        "run_id": RUN, "cycle": 1, "base_model": "embedded",
        "adapter": ctx.store.copy_dir(ctx.checkpoint(1, "adapter"), f"{champion_dir('embedded')}/adapter").to_xcom()})

    monkeypatch.setenv("KDFLOW__STORE__URL", str(tmp_path / "store"))
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True)
    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags")).dags["kdflow_export"]
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"export_champion": "success", "smoke_test": "success"}, states
    record = ctx.store.read_json("models/embedded/champion.json")
    assert (record["run_id"], record["cycle"], record["errors"]) == (RUN, 1, [])
    smoke = run.get_task_instance("smoke_test").xcom_pull(task_ids="smoke_test")
    assert smoke["questions"] == 6 and smoke["passed"] and abs(smoke["difference"]) <= smoke["tolerance"]
    assert smoke["prefix_agreement"] >= smoke["min_prefix_agreement"]

    served = subprocess.run([sys.executable, "-m", "kdflow", "serve", "--champion", "--check"],
                            capture_output=True, text=True, timeout=300)  # the store from KDFLOW__STORE__URL
    assert served.returncode == 0, served.stderr[-2000:]
    started, answered = (json.loads(line) for line in served.stdout.strip().splitlines()[-2:])
    assert started["gguf"].endswith("-q8_0.gguf") and "exporting" not in served.stdout  # the DAG's export
    assert answered["question"] == "What is the default restartPolicy of a Pod?" and answered["answer"]


def test_serve_answers_on_its_port_and_stops_its_server_when_terminated():
    """``kdflow serve --gguf`` in the foreground: the printed base URL answers the OpenAI API; SIGTERM
    (a supervisor, ``kill``) stops the llama.cpp server with it instead of orphaning it."""
    import signal
    import urllib.request

    import psutil

    from kdflow.integrity import packaged_smollm2_gguf

    gguf = packaged_smollm2_gguf()
    proc = subprocess.Popen([sys.executable, "-m", "kdflow", "serve", "--gguf", str(gguf), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = json.loads(proc.stdout.readline())
        assert started["model"] == gguf.stem and proc.stdout.readline().startswith("serving")
        with urllib.request.urlopen(f"{started['base_url']}/models", timeout=10) as reply:
            assert gguf.stem in reply.read().decode()
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "llama-server" in p.name()]
        assert len(servers) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(servers, timeout=20)
        assert alive == [] and len(gone) == 1
    finally:
        proc.kill()


def _export_a_tiny_student_to_hf_and_gguf(model_dir: Path, tmp_path: Path,
                                          architecture: str) -> tuple[dict[str, Any], Path]:
    """Train one epoch on the tiny model in ``model_dir``, publish it as a run's adapter and export it:
    the merge must be exact, llama.cpp must load and answer from both GGUF types. Returns the export
    record and its local folder."""
    from kdflow.export.publish import export_model
    from kdflow.export.source import run_source

    adapter = _trained_adapter(model_dir, tmp_path / "adapter", epochs=1, lora_r=4, lora_alpha=8, learning_rate=1e-3)
    ctx = _published_run(tmp_path / "store", str(model_dir), adapter)
    record = export_model(ctx, run_source(ctx, RUN), out_root=tmp_path / "exports")
    merge = record["checks"]["merge"]
    assert record["errors"] == [] and merge["identical_answers"] == merge["prompts"] == 3
    assert {"gguf_f16", "gguf_q8_0"} <= set(record["checks"])  # llama.cpp loaded each GGUF and answered
    local = Path(record["local_dir"])
    assert json.loads((local / "hf" / "config.json").read_text())["architectures"] == [architecture]
    assert len(list((local / "gguf").glob("*.gguf"))) == 2
    return record, local


@pytest.mark.parametrize("architecture", ["PhiForCausalLM"])
def test_a_phi_student_exports_to_a_gguf_llama_cpp_loads(architecture, tmp_path):
    """A tiny random model of the production student's family (Phi-2; the Llama family is the embedded
    SmolLM2, exported above, the Qwen family below) with SmolLM2's real tokenizer (llama.cpp's converter
    must recognise the tokenizer), trained one epoch: the transformers export and both GGUF types are
    made and llama.cpp answers from them."""
    import shutil

    import torch
    import transformers

    from kdflow.student.models import resolve_student

    smollm2 = resolve_student("embedded")
    model_dir = tmp_path / f"tiny-{architecture}"
    model_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (smollm2 / name).is_file():
            shutil.copy(smollm2 / name, model_dir / name)
    config_class = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    # intermediate 4 x hidden: llama.cpp's phi2 loader expects the FFN width phi-2 has (4 x 2560)
    config = config_class(vocab_size=49152, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                          bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    getattr(transformers, architecture)(config).save_pretrained(model_dir)
    _export_a_tiny_student_to_hf_and_gguf(model_dir, tmp_path, architecture)


def test_a_qwen3_student_exports_to_a_gguf_and_its_template_renders_the_trained_prompt_unasked(tmp_path):
    """A tiny random Qwen3 with Qwen3's real tokenizer (fetched by `make setup`: the converter's
    pre-tokenizer check accepts only a real Qwen tokenizer), trained one epoch: the transformers export
    and both GGUF types are made and llama.cpp answers from them. Qwen3's template thinks unless told
    ``enable_thinking=false``, which kdflow trains with; the exported template (transformers and the
    GGUF's, rendered by llama-server) must render the trained prompt when the caller passes nothing."""
    import shutil
    import urllib.request

    import torch
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from kdflow.export.serve import serving
    from kdflow.student.prompt import DEFAULT_SYSTEM_PROMPT, build_prompt
    from kdflow.student.tiny_models import qwen3_tokenizer_dir

    try:
        qwen3 = qwen3_tokenizer_dir()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    model_dir = tmp_path / "tiny-qwen3"
    model_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(qwen3 / name, model_dir / name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = Qwen3Config(vocab_size=-(-len(tokenizer) // 128) * 128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         tie_word_embeddings=True, max_position_embeddings=512, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(model_dir)
    record, local = _export_a_tiny_student_to_hf_and_gguf(model_dir, tmp_path, "Qwen3ForCausalLM")

    question = "What is a Pod?"
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": question}]
    exported = AutoTokenizer.from_pretrained(local / "hf")
    trained = build_prompt(exported, question)
    assert trained == build_prompt(tokenizer, question) and trained.endswith("<think>\n\n</think>\n\n")
    assert exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == trained
    thinking = exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert thinking.endswith("<|im_start|>assistant\n")  # a caller's own value still wins
    assert record["template_defaults"] == {"enable_thinking": False}
    card = (local / "README.md").read_text()
    assert "`enable_thinking=false`" in card and "defaults to it" in card and "--reasoning off" in card

    gguf = next((local / "gguf").glob("*-q8_0.gguf"))
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)  # what create_chat_completion renders:
    assert llm.chat_format == "chat_template.default"  # the GGUF's own template, with no variables passed
    template = llm.metadata["tokenizer.chat_template"]
    assert Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="")(messages=messages).prompt == trained
    llm.close()
    # llama-server passes its own enable_thinking (true for a template that can think) unless told
    # --reasoning off, as `kdflow serve` does; its C++ Jinja renders the GGUF's template
    with serving(gguf, threads=1, slots=1, n_ctx=512) as endpoint:
        request = urllib.request.Request(endpoint.base_url.removesuffix("/v1") + "/apply-template",
                                         data=json.dumps({"messages": messages}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            assert json.loads(reply.read())["prompt"] == trained
