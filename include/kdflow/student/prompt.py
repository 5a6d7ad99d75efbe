"""The one prompt format shared by answering and training, so the student is trained on exactly
the text it later sees when asked a question."""

from __future__ import annotations

from typing import Any

DEFAULT_SYSTEM_PROMPT = "You are a Kubernetes expert. Answer concisely."


def build_prompt(tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """Prompt text for one question, ending where the answer starts.

    Uses the tokenizer's chat template (ChatML for SmolLM2); a tokenizer without one (Phi-2)
    gets Phi-2's documented ``Instruct: ... / Output:`` format.
    """
    question = question.strip()
    if not question:
        raise ValueError("question must not be empty")
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix = f"{system}\n" if system else ""
    return f"Instruct: {prefix}{question}\nOutput:"


def completion_text(tokenizer: Any, answer: str) -> str:
    """Training target for one answer: the answer, then the token that ends generation."""
    answer = answer.strip()
    if not answer:
        raise ValueError("answer must not be empty")
    eos = tokenizer.eos_token or ""
    return (answer if getattr(tokenizer, "chat_template", None) else " " + answer) + eos
