"""Teacher profiles: what kdflow sends to a teacher/judge model, and what its tokens cost.

``teacher.model`` stays free text. A small table of known models decides the request's form:

* **chat** models (gpt-4o-mini, gpt-4.1-mini, most open-weights servers) take ``temperature`` (and
  ``top_p``) and ``max_tokens``;
* **reasoning** models (gpt-5-mini, gpt-5.4-mini, the o-series) refuse ``max_tokens`` (HTTP 400
  ``unsupported_parameter``: "Use 'max_completion_tokens' instead") and any ``temperature`` but their
  default (``unsupported_value``). kdflow sends them ``max_completion_tokens`` (the reply's budget plus
  ``reasoning_tokens`` for their hidden reasoning, which counts against it) and ``reasoning_effort``
  at the lowest level the model takes: a quiz question or a three-sentence reference needs no
  deliberation, and reasoning tokens are billed as output.

The table is also the only price list: ``teacher.price_per_mtok_*`` default to the profile's (USD per
1M tokens; a local endpoint costs $0 whatever the table says). A model that is not in the table gets
the conservative defaults (the chat form every OpenAI-compatible server takes, ``json_schema``, cost
not estimated) or, when its name says it is an OpenAI reasoning model (``gpt-5*``, ``o1``/``o3``/
``o4``...), the generic reasoning form; the report then carries one line saying so
(:meth:`TeacherSetup.note`). ``teacher.profile`` names a profile outright (an Azure deployment called
``my-teacher`` that runs gpt-5-mini: ``teacher.profile: gpt-5-mini``).

Prices and parameter rules are OpenAI's as published on its model and pricing pages (as reported
there; check them before relying on the cost estimate). This module imports nothing from kdflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

STRUCTURED_OUTPUT_MODES = ("json_schema", "json_object_schema", "json_object")
AUTO = "auto"
# The generic profiles: for a model kdflow does not know, or named outright in teacher.profile.
CHAT, REASONING, SELF_HOSTED = "chat", "reasoning", "self-hosted"


@dataclass(frozen=True)
class RequestStyle:
    """The parameters a chat completion carries for one model (see :func:`request_params`)."""

    sampling: bool = True  # sends temperature (and top_p); reasoning models take only their default
    token_param: str = "max_tokens"  # or "max_completion_tokens"
    reasoning_effort: str | None = None  # sent when set
    reasoning_tokens: int = 0  # added to the reply's budget: a reasoning model spends them before answering

    @property
    def label(self) -> str:
        parts = ["temperature" if self.sampling else "no temperature", self.token_param]
        if self.reasoning_effort:
            parts.append(f"reasoning_effort={self.reasoning_effort}")
        return ", ".join(parts)


CHAT_STYLE = RequestStyle()
# A reasoning model kdflow knows nothing more about: no effort sent (the model's default), a generous budget.
REASONING_STYLE = RequestStyle(sampling=False, token_param="max_completion_tokens", reasoning_tokens=4096)


@dataclass(frozen=True)
class TeacherProfile:
    name: str
    price_per_mtok_input: float | None  # USD per 1M tokens; None: not known
    price_per_mtok_output: float | None
    style: RequestStyle = CHAT_STYLE
    structured_output: str = "json_schema"
    note: str = ""  # shown in README's table (a retirement date, as reported)
    generic: bool = False  # one of chat / reasoning / self-hosted, not a model

    @property
    def reasoning(self) -> bool:
        return self.style.token_param == "max_completion_tokens"


def _reasoning(effort: str, tokens: int) -> RequestStyle:
    return RequestStyle(sampling=False, token_param="max_completion_tokens", reasoning_effort=effort,
                        reasoning_tokens=tokens)


RETIRING_2027 = "API shutdown 2027-01-14 (OpenAI deprecation notice, as reported)"
RETIRING_GPT5 = "API shutdown announced before gpt-4o-mini's (as reported)"
PROFILES: dict[str, TeacherProfile] = {p.name: p for p in (
    TeacherProfile("gpt-4o-mini", 0.15, 0.60, note=RETIRING_2027),
    TeacherProfile("gpt-4.1-mini", 0.40, 1.60, note=RETIRING_2027),
    TeacherProfile("gpt-5-mini", 0.25, 2.00, _reasoning("minimal", 1024), note=RETIRING_GPT5),
    TeacherProfile("gpt-5-nano", 0.05, 0.40, _reasoning("minimal", 1024), note=RETIRING_GPT5),
    TeacherProfile("gpt-5.4-mini", 0.75, 4.50, _reasoning("none", 0)),
    TeacherProfile("o4-mini", 1.10, 4.40, _reasoning("low", 4096)),
    TeacherProfile(CHAT, None, None, generic=True,
                   note="any chat model: temperature and max_tokens (the conservative default)"),
    TeacherProfile(REASONING, None, None, REASONING_STYLE, generic=True,
                   note="any reasoning model: max_completion_tokens (+4096 for reasoning), no temperature"),
    TeacherProfile(SELF_HOSTED, 0.0, 0.0, generic=True,
                   note="an open-weights model you serve (vLLM, SGLang, Ollama): chat form, no per-token price"),
)}
# An OpenAI model kdflow does not list but whose name says it reasons: the generic reasoning form.
REASONING_FAMILY = re.compile(r"^(gpt-5|o[1-9])([.\-]|$)")
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def profile_names() -> list[str]:
    return [AUTO, *PROFILES]


def match_profile(model: str) -> tuple[TeacherProfile, str]:
    """The profile of ``model`` and how it was found: ``table`` (listed, or a dated snapshot of a
    listed model such as ``gpt-4o-mini-2024-07-18``), ``family`` (an unlisted OpenAI reasoning model)
    or ``default`` (unknown: the chat form)."""
    name = model.strip().lower().removeprefix("openai/")
    name = _SNAPSHOT.sub("", name)
    profile = PROFILES.get(name)
    if profile is not None and not profile.generic:
        return profile, "table"
    if REASONING_FAMILY.match(name):
        return PROFILES[REASONING], "family"
    return PROFILES[CHAT], "default"


@dataclass(frozen=True)
class TeacherSetup:
    """The teacher config resolved against the table: what to send and what it costs."""

    model: str
    profile: TeacherProfile
    found: str  # "table" | "family" | "default" | "configured" (teacher.profile names it)
    structured_output: str
    style: RequestStyle
    price_per_mtok_input: float
    price_per_mtok_output: float
    priced: bool  # False: no price in the table or the config, so the cost shows $0
    local: bool

    def note(self) -> str | None:
        """One line for the report when the model is not one kdflow knows (else None)."""
        if self.found in ("table", "configured") and (self.priced or self.local):
            return None
        if self.found == "configured":
            return (f"teacher profile {self.profile.name!r} has no price, so the cost of {self.model!r} shows as $0; "
                    "set teacher.price_per_mtok_input / _output to estimate it")
        how = ("its name marks it as an OpenAI reasoning model, so kdflow sends the generic reasoning form"
               if self.found == "family" else "kdflow sends the conservative defaults")
        cost = "" if self.priced or self.local else " and its cost shows as $0"
        return (f"teacher model {self.model!r} is not in kdflow's profile table: {how} ({self.style.label}, "
                f"{self.structured_output}){cost}; set teacher.profile (chat, reasoning, self-hosted or a listed "
                "model) and teacher.price_per_mtok_* to match it")


def resolve_teacher(cfg: Any) -> TeacherSetup:
    """``cfg`` is a :class:`kdflow.config.TeacherConfig`; explicit config values beat the profile's."""
    if cfg.profile == AUTO:
        profile, found = match_profile(cfg.model)
    else:
        profile, found = PROFILES[cfg.profile], "configured"
    style = profile.style
    if cfg.reasoning_effort is not None:
        effort = None if cfg.reasoning_effort == "omit" else cfg.reasoning_effort
        style = RequestStyle(style.sampling, style.token_param, effort, style.reasoning_tokens)
    price_in = cfg.price_per_mtok_input if cfg.price_per_mtok_input is not None else profile.price_per_mtok_input
    price_out = cfg.price_per_mtok_output if cfg.price_per_mtok_output is not None else profile.price_per_mtok_output
    priced = price_in is not None and price_out is not None
    return TeacherSetup(
        model=cfg.model, profile=profile, found=found,
        structured_output=cfg.structured_output or profile.structured_output, style=style,
        price_per_mtok_input=price_in or 0.0, price_per_mtok_output=price_out or 0.0, priced=priced,
        local=bool(cfg.is_local),
    )


def request_params(style: RequestStyle, *, temperature: float, max_tokens: int,
                   top_p: float | None = None) -> dict[str, Any]:
    """The sampling and length parameters of one chat completion in the model's form: a chat model
    gets ``temperature`` (``top_p``) and ``max_tokens``; a reasoning model ``max_completion_tokens``
    (``max_tokens`` + its reasoning budget), its ``reasoning_effort`` and no sampling settings."""
    params: dict[str, Any] = {}
    if style.sampling:
        params["temperature"] = temperature
        if top_p is not None:
            params["top_p"] = top_p
    params[style.token_param] = max_tokens + style.reasoning_tokens
    if style.reasoning_effort:
        params["reasoning_effort"] = style.reasoning_effort
    return params


# What to set when an endpoint refuses a parameter kdflow sent (HTTP 400), by parameter.
_TO_REASONING = ("teacher.profile=reasoning (KDFLOW__TEACHER__PROFILE=reasoning: max_completion_tokens, no "
                 "temperature), or the model's own profile if kdflow lists it")
_FIX_FOR_PARAM = {
    "max_tokens": _TO_REASONING,
    "temperature": _TO_REASONING,
    "top_p": "teacher.profile=reasoning (KDFLOW__TEACHER__PROFILE=reasoning: no sampling settings)",
    "max_completion_tokens": "teacher.profile=chat (KDFLOW__TEACHER__PROFILE=chat: max_tokens and temperature)",
    "reasoning_effort": "teacher.reasoning_effort to a level the model lists, or omit "
                        "(KDFLOW__TEACHER__REASONING_EFFORT=omit)",
    "response_format": "teacher.structured_output=json_object (KDFLOW__TEACHER__STRUCTURED_OUTPUT=json_object)",
}


def fix_for_param(param: str | None) -> str:
    """What to set instead of sending ``param`` (one clause, config key and variable)."""
    key = (param or "").split(".")[0].split("[")[0]
    return _FIX_FOR_PARAM.get(key, "another teacher.profile (chat, reasoning, self-hosted or a listed model)")


def current_models() -> list[str]:
    """Listed OpenAI models with no shutdown noted: what a 'model not found' message suggests."""
    return [p.name for p in PROFILES.values() if not p.generic and not p.note]
