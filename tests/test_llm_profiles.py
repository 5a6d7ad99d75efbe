"""Teacher profiles (issue #20): the table of known models decides what a teacher or judge request
carries and what its tokens cost; an unknown model gets the conservative form and one line in the
report; the table is the only price list and README's table agrees with it.

The endpoint is :class:`fixtures_llm.OpenAIRules` behind a :class:`fixtures_llm.ScriptedServer`:
it refuses what api.openai.com refuses (``max_tokens`` or a temperature for a reasoning model,
``reasoning_effort`` for a chat model, an unknown model), so a request form that OpenAI would reject
fails here too."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from fixtures_llm import OpenAIRules, ScriptedServer
from kdflow.config import load_config
from kdflow.llm import UsageLedger, make_client, teacher_endpoint
from kdflow.llm.client import EndpointConfigError
from kdflow.llm.profiles import PROFILES, REASONING, RequestStyle, match_profile, resolve_teacher
from kdflow.store import ArtifactStore
from kdflow.teacher.structured import complete_json

REPO = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Give me a name as JSON."}]
# Every listed model, served with the form OpenAI gives it.
SERVED = {name: ("reasoning" if p.reasoning else "chat") for name, p in PROFILES.items() if not p.generic}


class Named(BaseModel):
    name: str


def _teacher(url: str, **teacher: object):
    overrides = {"teacher": {"provider": "openai", "base_url": url, "api_key_env": "KDFLOW_TEST_KEY", **teacher}}
    return load_config(overrides, environ={}).teacher


def _ask(cfg, tmp_path, *, max_tokens: int = 20, temperature: float = 0.7) -> Named:
    with teacher_endpoint(cfg) as endpoint:
        client = make_client(endpoint, ArtifactStore(str(tmp_path / "store")), UsageLedger.from_config(cfg), task="t",
                             timeout_s=5, max_retries=0)
        return complete_json(client, endpoint, MESSAGES, Named, temperature=temperature, max_tokens=max_tokens)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("KDFLOW_TEST_KEY", "sk-test")


@pytest.mark.parametrize("model", sorted(SERVED))
def test_every_listed_model_gets_a_request_its_endpoint_accepts(model, tmp_path):
    """A chat model: temperature and max_tokens. A reasoning model: max_completion_tokens (the reply's
    budget plus the profile's reasoning budget), its reasoning_effort, no temperature."""
    with ScriptedServer(OpenAIRules({model: SERVED[model]}, content=lambda body: '{"name": "pod"}')) as server:
        assert _ask(_teacher(server.url, model=model), tmp_path, max_tokens=96).name == "pod"
    [body] = server.bodies
    style = PROFILES[model].style
    if PROFILES[model].reasoning:
        assert "temperature" not in body and "max_tokens" not in body
        assert body["max_completion_tokens"] == 96 + style.reasoning_tokens
        assert body["reasoning_effort"] == style.reasoning_effort
    else:
        assert (body["temperature"], body["max_tokens"]) == (0.7, 96)
        assert "max_completion_tokens" not in body and "reasoning_effort" not in body
    assert body["response_format"]["type"] == "json_schema" and body["response_format"]["json_schema"]["strict"]


def test_snapshots_and_unlisted_reasoning_models_are_matched_by_name():
    assert match_profile("gpt-4o-mini-2024-07-18") == (PROFILES["gpt-4o-mini"], "table")
    assert match_profile("GPT-5-mini") == (PROFILES["gpt-5-mini"], "table")
    for name in ("gpt-5.5", "gpt-5", "o3", "o1-mini", "o4-mini-2025-04-16"):
        profile, found = match_profile(name)
        assert profile.reasoning, name
        assert found == ("table" if name.startswith("o4-mini") else "family"), name
    for name in ("Qwen/Qwen3-4B-Instruct-2507", "smollm2", "my-azure-deployment", "gpt-4o-mini-tts", "ollama"):
        assert match_profile(name) == (PROFILES["chat"], "default"), name


def test_an_unlisted_reasoning_model_gets_the_generic_reasoning_form(tmp_path):
    with ScriptedServer(OpenAIRules({"gpt-5.5": "reasoning"}, content=lambda body: '{"name": "pod"}')) as server:
        _ask(_teacher(server.url, model="gpt-5.5"), tmp_path)
    [body] = server.bodies
    assert body["max_completion_tokens"] == 20 + PROFILES[REASONING].style.reasoning_tokens
    assert "reasoning_effort" not in body and "temperature" not in body  # the model's own default effort


def test_an_unknown_model_gets_the_conservative_form_and_one_line_for_the_report(tmp_path):
    cfg = _teacher("https://llm.example.org/v1", model="my-teacher")
    setup = resolve_teacher(cfg)
    assert (setup.style, setup.structured_output, setup.priced) == (RequestStyle(), "json_schema", False)
    note = setup.note()
    assert note is not None and "\n" not in note
    assert "'my-teacher' is not in kdflow's profile table" in note and "temperature, max_tokens" in note
    assert "cost shows as $0" in note and "teacher.profile" in note
    # what the report's health section shows (kdflow.pipeline.final_steps.teacher_health)
    from kdflow.pipeline.final_steps import teacher_health

    assert teacher_health(SimpleNamespace(config=SimpleNamespace(teacher=cfg))) == [note]
    for known in (dict(model="gpt-5-mini"), dict(model="my-teacher", profile="self-hosted"),
                  dict(model="my-teacher", profile="chat", price_per_mtok_input=1, price_per_mtok_output=2)):
        known_cfg = _teacher("https://llm.example.org/v1", **known)
        assert resolve_teacher(known_cfg).note() is None, known
        assert teacher_health(SimpleNamespace(config=SimpleNamespace(teacher=known_cfg))) == []
    embedded = load_config(environ={}).teacher
    assert teacher_health(SimpleNamespace(config=SimpleNamespace(teacher=embedded))) == []


def test_teacher_profile_names_a_profile_for_a_model_kdflow_cannot_recognise(tmp_path):
    """An Azure deployment called my-teacher that runs gpt-5-mini: teacher.profile says so."""
    with ScriptedServer(OpenAIRules({"my-teacher": "reasoning"}, content=lambda body: '{"name": "pod"}')) as server:
        with pytest.raises(EndpointConfigError):
            _ask(_teacher(server.url, model="my-teacher"), tmp_path)
        _ask(_teacher(server.url, model="my-teacher", profile="gpt-5-mini"), tmp_path)
        _ask(_teacher(server.url, model="my-teacher", profile="gpt-5-mini", reasoning_effort="omit"), tmp_path)
    refused, accepted, omitted = server.bodies
    assert "max_tokens" in refused and accepted["reasoning_effort"] == "minimal"
    assert accepted["max_completion_tokens"] == 20 + PROFILES["gpt-5-mini"].style.reasoning_tokens
    assert "reasoning_effort" not in omitted
    with pytest.raises(Exception, match=r"teacher\.profile: must be one of auto, gpt-4o-mini, .*self-hosted"):
        load_config({"teacher": {"profile": "gpt5mini"}}, environ={})


def test_the_judge_sends_a_reasoning_model_its_own_form(tmp_path):
    """RAGAS' judge goes through the same profile: no temperature, no top_p, max_completion_tokens."""
    from kdflow.evaluation.metrics import score_answers

    cfg = load_config({"evaluation": {"metrics": ["answer_relevancy"], "relevancy_strictness": 1,
                                      "judge_max_retries": 0}}, environ={})
    row = {"question_id": "q", "topic": "pods", "split": "train", "question": "What is a Pod?",
           "answer": "A Pod is the smallest deployable unit.", "reference": "A Pod is the smallest deployable unit."}
    with ScriptedServer(OpenAIRules({"gpt-5-mini": "reasoning"})) as server:
        with teacher_endpoint(_teacher(server.url, model="gpt-5-mini")) as judge:
            [scored] = score_answers(cfg.evaluation, [row], judge=judge, store=ArtifactStore(str(tmp_path)),
                                     ledger=UsageLedger(), cycle=1, stage="baseline")
    assert scored.failures == {} and scored.scores["answer_relevancy"] is not None
    [body] = server.bodies
    assert {"temperature", "top_p", "max_tokens"}.isdisjoint(body) and body["seed"] == 0
    assert body["max_completion_tokens"] == cfg.evaluation.judge_max_tokens + 1024
    assert body["reasoning_effort"] == "minimal"


def test_a_judge_that_refuses_the_model_fails_the_task_instead_of_recording_failures(tmp_path):
    """Unparsable judge output is data (a failure on the row); a refused model or parameter is not:
    every row would fail the same way, so scoring stops with the one line (instructor's retries and
    ragas' wrapping included)."""
    from kdflow.evaluation.metrics import score_answers
    from kdflow.teacher.faithfulness import ragas_sentence_judge

    cfg = load_config({"evaluation": {"metrics": ["answer_relevancy", "rouge_l"], "relevancy_strictness": 1,
                                      "judge_max_retries": 1}}, environ={})
    row = {"question_id": "q", "topic": "pods", "split": "train", "question": "What is a Pod?",
           "answer": "A Pod is the smallest deployable unit.", "reference": "A Pod is the smallest deployable unit."}
    with ScriptedServer(OpenAIRules({"gpt-5-mini": "reasoning"})) as server:
        with teacher_endpoint(_teacher(server.url, model="gpt-4o-mini")) as judge:
            with pytest.raises(EndpointConfigError, match=r"^teacher model 'gpt-4o-mini' is not available at "):
                score_answers(cfg.evaluation, [row], judge=judge, store=ArtifactStore(str(tmp_path)),
                              ledger=UsageLedger(), cycle=1, stage="baseline")
            faithfulness = ragas_sentence_judge(cfg.evaluation, judge, store=ArtifactStore(str(tmp_path)),
                                                ledger=UsageLedger())
            with pytest.raises(EndpointConfigError, match=r"HTTP 404 model_not_found"):
                faithfulness(row["question"], [row["answer"]], [row["reference"]])
        with teacher_endpoint(_teacher(server.url, model="gpt-5-mini", profile="chat")) as judge:
            with pytest.raises(EndpointConfigError, match=r"refuses the parameter 'max_tokens'"):
                score_answers(cfg.evaluation, [row], judge=judge, store=ArtifactStore(str(tmp_path)),
                              ledger=UsageLedger(), cycle=1, stage="baseline")


def test_prices_come_from_the_profile_unless_the_config_sets_them():
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}

    def cost(**teacher: object) -> float:
        ledger = UsageLedger.from_config(_teacher("https://api.example.com/v1", **teacher))
        ledger.record("t", usage=usage)
        return ledger.as_dict()["tasks"]["t"]["cost_usd"]

    for name, profile in PROFILES.items():
        if not profile.generic:
            assert cost(model=name) == pytest.approx(profile.price_per_mtok_input + profile.price_per_mtok_output)
    assert cost(model="gpt-5-mini") == pytest.approx(0.25 + 2.00)
    assert cost(model="gpt-5-mini", price_per_mtok_input=1.0) == pytest.approx(1.0 + 2.00)
    assert cost(model="my-teacher") == 0.0  # unknown: not estimated (the report says so)
    assert cost(model="my-teacher", profile="self-hosted") == 0.0
    assert load_config(environ={}).teacher.price_per_mtok_input is None  # defaults.yaml holds no price


def test_readme_lists_every_profile_with_the_tables_prices_and_form():
    """README's "Choosing a teacher" table is the profile table, row for row."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Choosing a teacher"):]
    section = section[: section.index("\n### ", 5)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(PROFILES)
    for name, profile in PROFILES.items():
        cells = rows[name]
        prices = re.findall(r"\$(\d+\.\d+)", cells[1] + " " + cells[2])
        if profile.price_per_mtok_input is None:
            assert prices == [], name
        else:
            assert [float(p) for p in prices] == [profile.price_per_mtok_input, profile.price_per_mtok_output], name
        form = cells[3]
        assert ("max_completion_tokens" in form) == profile.reasoning, name
        if profile.style.reasoning_effort:
            assert f"`{profile.style.reasoning_effort}`" in form, name
        assert ("2027-01-14" in " ".join(cells)) == ("2027-01-14" in profile.note), name


def test_the_profile_table_is_valid():
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert profile.structured_output in ("json_schema", "json_object_schema", "json_object")
        assert profile.style.token_param in ("max_tokens", "max_completion_tokens")
        assert profile.reasoning == (not profile.style.sampling), name  # a reasoning model takes no temperature
        assert (profile.price_per_mtok_input is None) == (profile.price_per_mtok_output is None), name
    assert json.dumps(sorted(PROFILES))  # plain names
