"""Cache key, usage ledger and structured-output request forms (no server needed)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from kdflow.llm.cache import UsageLedger, request_hash
from kdflow.llm.client import json_response_format
from kdflow.llm.server import Endpoint
from kdflow.store import ArtifactStore


class Item(BaseModel):
    name: str = Field(pattern=r"^[a-z]+$")
    tags: list[str]


def test_request_hash_ignores_key_order_but_not_content():
    a = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}
    b = {"temperature": 0.2, "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    assert request_hash(a) == request_hash(b)
    assert request_hash(a) != request_hash({**a, "temperature": 0.3})
    assert request_hash(a) != request_hash({**a, "model": "other"})


def test_ledger_counts_costs_merges_and_round_trips(tmp_path):
    ledger = UsageLedger(price_per_mtok_input=0.15, price_per_mtok_output=0.60)
    ledger.record("questions", usage={"prompt_tokens": 1_000_000, "completion_tokens": 500_000}, seconds=2.0)
    ledger.record("questions", hit=True)
    ledger.record("judge", error=True)
    data = ledger.as_dict()
    assert data["tasks"]["questions"]["calls"] == 1 and data["tasks"]["questions"]["cache_hits"] == 1
    assert data["tasks"]["questions"]["cost_usd"] == pytest.approx(0.15 + 0.30)
    assert data["tasks"]["judge"] == {**data["tasks"]["judge"], "calls": 1, "errors": 1, "prompt_tokens": 0}
    assert data["total"]["calls"] == 2

    store = ArtifactStore(str(tmp_path))
    ledger.save(store, "runs/r/usage/teacher.json")
    again = UsageLedger.load(store, "runs/r/usage/teacher.json").merge(ledger)
    assert again.as_dict()["tasks"]["questions"]["prompt_tokens"] == 2_000_000
    assert again.as_dict()["total"]["cache_hits"] == 2


def test_response_format_per_endpoint_capability():
    strict = json_response_format(Item, "json_schema")
    assert strict["type"] == "json_schema" and strict["json_schema"]["strict"] is True
    assert strict["json_schema"]["schema"]["additionalProperties"] is False
    assert strict["json_schema"]["schema"]["required"] == ["name", "tags"]
    grammar = json_response_format(Item, "json_object_schema")
    assert grammar == {"type": "json_object", "schema": Item.model_json_schema()}
    assert json_response_format(Item, "json_object") == {"type": "json_object"}
    with pytest.raises(ValueError, match="unknown structured_output mode 'xml'"):
        json_response_format(Item, "xml")


def test_endpoint_repr_hides_the_key():
    endpoint = Endpoint("https://api.example.com/v1", "gpt-4o-mini", "sk-secret-123", "json_schema")
    assert "sk-secret" not in repr(endpoint) and "sk-secret" not in str(endpoint)


def test_prices_apply_only_where_a_provider_bills_the_calls():
    from kdflow.config import TeacherConfig

    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}
    for cfg, cost in ((TeacherConfig(), 0.0), (TeacherConfig(provider="openai"), 0.75),
                      (TeacherConfig(provider="openai", base_url="http://127.0.0.1:8000/v1"), 0.0),
                      (TeacherConfig(provider="openai", base_url="https://llm.example.org/v1"), 0.75)):
        ledger = UsageLedger.from_config(cfg)
        ledger.record("questions", usage=usage)
        assert ledger.as_dict()["tasks"]["questions"]["cost_usd"] == pytest.approx(cost), cfg
