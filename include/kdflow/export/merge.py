"""Base model + LoRA adapter -> one plain transformers model folder, and the check that the merge
changed nothing: the merged model must answer with the same greedy tokens as base + adapter.

The merge runs in float32 on the CPU (exact up to float rounding: W + B·A·scale is what the adapter
adds at every forward anyway), then the weights are cast to the export dtype. A tokenizer without a
chat template (Phi-2) gets one that renders kdflow's own prompt format, and a template that reads a
variable kdflow sets when it renders prompts (Qwen3's ``enable_thinking``) defaults it to kdflow's value,
so a server that applies the model's template (llama-server, vLLM, Ollama) sends the student exactly the
text it was trained on (llama-server passes its own ``enable_thinking``: ``kdflow serve`` starts it with
``--reasoning off``, see kdflow.export.serve.template_flags)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdflow.student.device import DevicePlan
from kdflow.student.models import load_student
from kdflow.student.prompt import CHAT_TEMPLATE_KWARGS, build_prompt, stop_token_ids

log = logging.getLogger(__name__)

# build_prompt's "Instruct: ... / Output:" format (tokenizers without a template), as a chat template.
INSTRUCT_OUTPUT_TEMPLATE = (
    "{% set system = namespace(text='') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{% set system.text = message['content'] %}"
    "{% endif %}{% endfor %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}Instruct: "
    "{% if system.text %}{{ system.text }}\n{% endif %}{{ message['content'] }}\nOutput:"
    "{% elif message['role'] == 'assistant' %} {{ message['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
)
EXPORT_DTYPES = ("bfloat16", "float16", "float32")


def _jinja_literal(value: Any) -> str:
    return "none" if value is None else json.dumps(value)  # true/false, numbers, strings, lists: Jinja literals


def trained_template_defaults(template: str) -> str:
    """``template`` with each variable of CHAT_TEMPLATE_KWARGS that it reads defaulting to the value
    kdflow trained with. Qwen3's template renders thinking ON unless the caller passes
    ``enable_thinking=false``; kdflow trains and answers with it false (the prompt ends with an empty
    ``<think></think>`` block), but a plain ``apply_chat_template`` (what vLLM renders with) and
    llama-cpp-python pass nothing, so without this default the served student would see a prompt it
    never saw in training. A caller that passes the variable still gets its own value."""
    prefix = "".join(f"{{%- if {name} is not defined %}}{{%- set {name} = {_jinja_literal(value)} %}}{{%- endif %}}"
                     for name, value in template_defaults(template).items())
    return template if template.startswith(prefix) else prefix + template


def template_defaults(template: str | None) -> dict[str, Any]:
    """The variables of CHAT_TEMPLATE_KWARGS that ``template`` reads, with kdflow's values."""
    import jinja2
    from jinja2 import meta

    if not isinstance(template, str):
        return {}
    try:
        parsed = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
        read = meta.find_undeclared_variables(parsed)
    except jinja2.TemplateSyntaxError:  # a tag only transformers defines ({% generation %}): look for the name
        read = {name for name in CHAT_TEMPLATE_KWARGS if re.search(rf"\b{name}\b", template)}
    return {name: value for name, value in CHAT_TEMPLATE_KWARGS.items() if name in read}


def merged_model(base_path: Path | str, adapter_dir: Path | str) -> tuple[Any, Any]:
    """The float32 CPU model with the adapter folded into its weights (a plain transformers model,
    no peft wrapper), and its tokenizer."""
    model, tokenizer = load_student(base_path, DevicePlan.cpu(reason="export"), adapter_dir)
    return model.merge_and_unload(), tokenizer


def save_merged(model: Any, tokenizer: Any, out_dir: Path, *, dtype: str = "bfloat16",
                max_new_tokens: int = 128) -> Path:
    """Write the merged model as safetensors in ``dtype``, with its tokenizer (chat template
    guaranteed) and a greedy generation config that stops where training ended each answer (the eos
    token and the chat template's end of turn, e.g. Gemma-3's ``<end_of_turn>``)."""
    import torch

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not one of {list(EXPORT_DTYPES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, dtype))
    model.generation_config.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                                   max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer),
                                   pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = INSTRUCT_OUTPUT_TEMPLATE
    elif isinstance(tokenizer.chat_template, str):
        tokenizer.chat_template = trained_template_defaults(tokenizer.chat_template)
    tokenizer.save_pretrained(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    config.pop("_name_or_path", None)  # a local path of the machine that exported it
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def greedy_tokens(model: Any, tokenizer: Any, questions: Sequence[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy new token ids per question, one question at a time (no padding in the comparison)."""
    import torch

    out = []
    for question in questions:
        encoded = tokenizer(build_prompt(tokenizer, question), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(**encoded, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_token_ids(tokenizer))
        out.append(ids[0, encoded["input_ids"].shape[1]:].tolist())
    return out


def agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> dict[str, Any]:
    """How far two sets of greedy answers agree: answers identical, and the mean share of each
    reference answer reproduced before the first differing token."""
    identical, shares = 0, []
    for ref, cand in zip(reference, candidate, strict=True):
        identical += list(ref) == list(cand)
        same = next((i for i, (a, b) in enumerate(zip(ref, cand, strict=False)) if a != b), min(len(ref), len(cand)))
        shares.append(same / len(ref) if ref else float(not cand))
    return {"prompts": len(shares), "identical_answers": identical,
            "prefix_agreement": round(sum(shares) / len(shares), 4) if shares else None}


def check_merge(base_path: Path | str, adapter_dir: Path | str, merged: Any, tokenizer: Any,
                questions: Sequence[str], max_new_tokens: int = 24) -> dict[str, Any]:
    """Greedy answers of base + adapter against the merged float32 model on ``questions``."""
    reference_model, _ = load_student(base_path, DevicePlan.cpu(reason="export check"), adapter_dir)
    result = agreement(greedy_tokens(reference_model, tokenizer, questions, max_new_tokens),
                       greedy_tokens(merged, tokenizer, questions, max_new_tokens))
    log.info("merged vs base + adapter: %d of %d greedy answers identical", result["identical_answers"],
             result["prompts"])
    return {"compared": "float32 merged model vs base model + adapter (greedy, CPU)",
            "max_new_tokens": max_new_tokens, **result}

