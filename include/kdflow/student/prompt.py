"""The one prompt format shared by answering and training, so the student is trained on exactly
the text it later sees when asked a question."""

from __future__ import annotations

from typing import Any

DEFAULT_SYSTEM_PROMPT = "You are a Kubernetes expert. Answer concisely."


# Variables the chat templates read: Qwen3's template opens an empty <think></think> block with
# enable_thinking false, so the student answers at once; templates that do not read it ignore it.
CHAT_TEMPLATE_KWARGS = {"enable_thinking": False}
_ANSWER_MARK = "\u2063kdflow-answer\u2063"  # stands for the answer when the template's turn end is looked up


def build_prompt(tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """Prompt text for one question, ending where the answer starts.

    Uses the tokenizer's chat template (ChatML for SmolLM2 and Qwen3, headers for Llama-3.2,
    turns for Gemma-3, which folds the system prompt into the user's turn); a tokenizer without
    one (Phi-2) gets Phi-2's documented ``Instruct: ... / Output:`` format.
    """
    question = question.strip()
    if not question:
        raise ValueError("question must not be empty")
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **CHAT_TEMPLATE_KWARGS)
    prefix = f"{system}\n" if system else ""
    return f"Instruct: {prefix}{question}\nOutput:"


def end_of_turn(tokenizer: Any) -> str:
    """The token that ends an answer: the special token the chat template puts after an assistant
    message (``<|im_end|>``, Llama-3's ``<|eot_id|>``, Gemma-3's ``<end_of_turn>``, which is not its
    eos token), else the eos token. Training ends each answer with it and generation stops at it."""
    eos = tokenizer.eos_token or ""
    if not getattr(tokenizer, "chat_template", None):
        return eos
    messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _ANSWER_MARK}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **CHAT_TEMPLATE_KWARGS)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation: fall back to eos
        return eos
    after = text.split(_ANSWER_MARK, 1)[-1].lstrip() if _ANSWER_MARK in text else ""
    special = sorted({*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}, key=len, reverse=True)
    return next((token for token in special if token and after.startswith(token)), eos)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end generation: the eos token and the chat template's end of turn."""
    ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))]
    return list(dict.fromkeys(i for i in ids if isinstance(i, int)))


def completion_text(tokenizer: Any, answer: str) -> str:
    """Training target for one answer: the answer, then the token that ends it (:func:`end_of_turn`)."""
    answer = answer.strip()
    if not answer:
        raise ValueError("answer must not be empty")
    return (answer if getattr(tokenizer, "chat_template", None) else " " + answer) + end_of_turn(tokenizer)
