"""Every JSON schema kdflow sends as a ``json_schema`` response_format is one OpenAI's strict
structured outputs accept (issue #20): each object closed (``additionalProperties: false``) with
every property required, and only the keywords strict mode documents.

The schemas are collected from what kdflow really sends: each pydantic model the teacher code hands
to ``complete_json`` (found in the source, so a new one cannot be missed) and every request the
RAGAS judge makes for each judge metric and for the reference gate's Faithfulness check. They go to
:class:`fixtures_llm.OpenAIRules`, which refuses (HTTP 400 ``invalid_json_schema``) a schema that
breaks the rules of :func:`fixtures_llm.strict_problems`, written from OpenAI's documentation
independently of kdflow's own rewriting (:mod:`kdflow.llm.strict_schema`). The embedded llama.cpp
server gets the full pydantic schema (``json_object_schema``): it is no strict-mode endpoint."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from fixtures_llm import OpenAIRules, ScriptedServer, strict_problems
from kdflow.config import load_config
from kdflow.llm import Endpoint, LLMError, UsageLedger, make_client
from kdflow.llm.client import json_response_format
from kdflow.store import ArtifactStore
from kdflow.teacher.structured import complete_json

INCLUDE = Path(__file__).resolve().parents[1] / "include"
MODEL = "strict-model"
ROW = {"question_id": "q", "topic": "pods", "split": "train", "question": "What is a Pod in Kubernetes?",
       "answer": "A Pod is the smallest deployable unit. It groups containers that share storage and network.",
       "reference": "A Pod is the smallest deployable unit of computing in Kubernetes."}


def teacher_schemas() -> dict[str, type[BaseModel]]:
    """Every model passed to ``complete_json`` anywhere in the library (its 4th argument or ``schema=``)."""
    found: dict[str, type[BaseModel]] = {}
    for path in (INCLUDE / "kdflow").rglob("*.py"):
        module = ".".join(path.relative_to(INCLUDE).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
                    == "complete_json"):
                continue
            arg = node.args[3] if len(node.args) > 3 else next(k.value for k in node.keywords if k.arg == "schema")
            assert isinstance(arg, ast.Name), f"{module}: complete_json's schema is not a plain name"
            found[arg.id] = getattr(importlib.import_module(module), arg.id)
    return found


def _sent_formats(server: ScriptedServer) -> list[dict]:
    return [body["response_format"] for body in server.bodies if "response_format" in body]


def test_the_teacher_schemas_are_found_in_the_source():
    assert {"QuestionDraft", "ReferenceDraft", "Answerability"} <= set(teacher_schemas())


@pytest.mark.parametrize("name", sorted(teacher_schemas()))
def test_each_teacher_schema_is_accepted_by_strict_mode(name, tmp_path):
    schema = teacher_schemas()[name]
    with ScriptedServer(OpenAIRules({MODEL: "chat"})) as server:
        endpoint = Endpoint(server.url, MODEL, "sk-test", "json_schema")
        client = make_client(endpoint, ArtifactStore(str(tmp_path)), UsageLedger(), task="t", max_retries=0)
        reply = complete_json(client, endpoint, [{"role": "user", "content": "JSON please"}], schema, temperature=0.7,
                              max_tokens=64)
    assert isinstance(reply, schema)
    [sent] = _sent_formats(server)
    assert sent["json_schema"]["name"] == name and strict_problems(sent) == []


def test_every_judge_request_is_accepted_by_strict_mode(tmp_path):
    """The judge metrics kdflow offers and the gate's Faithfulness check, each through the real ragas
    metric: every request carries a strict schema, and every reply parsed (no metric failure)."""
    from kdflow.evaluation import JUDGE_METRICS
    from kdflow.evaluation.metrics import score_answers
    from kdflow.teacher.faithfulness import ragas_sentence_judge

    cfg = load_config({"evaluation": {"metrics": sorted(JUDGE_METRICS), "relevancy_strictness": 1,
                                      "judge_max_retries": 0}}, environ={})
    store = ArtifactStore(str(tmp_path))
    with ScriptedServer(OpenAIRules({MODEL: "chat"})) as server:
        judge = Endpoint(server.url, MODEL, "sk-test", "json_schema")
        [scored] = score_answers(cfg.evaluation, [ROW], judge=judge, store=store, ledger=UsageLedger(), cycle=1,
                                 stage="baseline")
        per_metric = len(server.bodies)
        faithfulness = ragas_sentence_judge(cfg.evaluation, judge, store=store, ledger=UsageLedger())
        [support] = faithfulness(ROW["question"], [ROW["answer"]], [ROW["reference"]])
    assert scored.failures == {} and all(v is not None for v in scored.scores.values()), scored
    assert support is not None and len(server.bodies) > per_metric
    sent = _sent_formats(server)
    assert len(sent) == len(server.bodies)  # every judge request asked for JSON by schema
    names = {fmt["json_schema"]["name"] for fmt in sent}
    assert len(names) >= len(JUDGE_METRICS)
    for fmt in sent:
        assert strict_problems(fmt) == [], fmt["json_schema"]["name"]


class Loose(BaseModel):
    """What pydantic writes and strict mode refuses: defaults, length limits, titles, an optional field."""

    answer: str = Field(min_length=1, max_length=400)
    note: str | None = None
    tags: list[str] = Field(default_factory=list, title="Tags")
    score: int = Field(1, ge=0, le=5)


def test_the_rules_refuse_what_pydantic_writes_and_kdflow_rewrites_it():
    raw = {"type": "json_schema", "json_schema": {"name": "Loose", "schema": Loose.model_json_schema(), "strict": True}}
    problems = " | ".join(strict_problems(raw))
    for expected in ("minLength", "maxLength", "default", "title", "additionalProperties is not false",
                     "is not every property"):
        assert expected in problems, expected
    assert strict_problems({**raw, "json_schema": {**raw["json_schema"], "strict": False}})  # not enforced
    strict = json_response_format(Loose, "json_schema")
    assert strict_problems(strict) == []
    score = strict["json_schema"]["schema"]["properties"]["score"]
    assert (score["minimum"], score["maximum"]) == (0, 5)  # documented number limits stay
    # the llama.cpp form keeps the full schema: its grammar can enforce minLength
    assert json_response_format(Loose, "json_object_schema")["schema"] == Loose.model_json_schema()


class FreeForm(BaseModel):
    counts: dict[str, int]


def test_a_schema_strict_mode_cannot_express_is_not_silently_emptied():
    """A free-form dict has no strict form: closing it would make every reply an empty object, so it
    goes out as it is and OpenAI refuses it (the one-line error then says to use json_object)."""
    sent = json_response_format(FreeForm, "json_schema")
    assert sent["json_schema"]["schema"]["properties"]["counts"]["additionalProperties"] == {"type": "integer"}
    assert any("counts: an object without properties" in p for p in strict_problems(sent))


def test_a_dropped_constraint_is_still_checked_on_the_reply(tmp_path):
    """minLength is not sent in strict mode, but an empty answer still fails pydantic's validation."""
    with ScriptedServer('{"answer": "", "note": null, "tags": [], "score": 1}') as server:
        endpoint = Endpoint(server.url, MODEL, "sk-test", "json_schema")
        client = make_client(endpoint, ArtifactStore(str(tmp_path)), UsageLedger(), task="t", max_retries=0)
        with pytest.raises(LLMError, match=r"gave no valid Loose JSON after 2 attempts; last error: answer: String "
                                           r"should have at least 1 character"):
            complete_json(client, endpoint, [{"role": "user", "content": "JSON"}], Loose, temperature=0,
                          max_tokens=64, attempts=2)
