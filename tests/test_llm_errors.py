"""Error paths of the teacher client, each with its one-line message and nothing half-written:
a server that is down, one that replies with the wrong JSON, and a missing API key."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from fixtures_llm import chat_completion_body
from kdflow.config import load_config
from kdflow.llm import Endpoint, LLMError, UsageLedger, make_client, teacher_endpoint
from kdflow.llm.server import EndpointError, free_port
from kdflow.store import ArtifactStore
from kdflow.teacher.structured import complete_json

MESSAGES = [{"role": "user", "content": "Give me a name as JSON."}]


class Named(BaseModel):
    name: str


def _client(tmp_path, base_url: str, mode: str = "json_object"):
    store = ArtifactStore(str(tmp_path / "store"))
    ledger = UsageLedger()
    endpoint = Endpoint(base_url, "fake-model", "sk-test", mode)
    return endpoint, make_client(endpoint, store, ledger, task="t", timeout_s=5, max_retries=0), store, ledger


def test_server_down_is_a_clear_error(tmp_path):
    endpoint, client, store, ledger = _client(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(LLMError, match=r"cannot reach teacher endpoint fake-model at http://127\.0\.0\.1:\d+/v1: ConnectError"):
        complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20)
    assert store.list_keys("cache") == []
    assert ledger.as_dict()["tasks"]["t"]["errors"] == 1


def test_malformed_json_is_retried_with_the_error_then_fails_clearly(tmp_path, fake_completion_server):
    url = fake_completion_server(content='{"nam": "oops"')
    endpoint, client, store, ledger = _client(tmp_path, url)
    with pytest.raises(LLMError, match=r"gave no valid Named JSON after 3 attempts; last error: .*"):
        complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20, attempts=3)
    assert fake_completion_server.server.requests == 3
    assert ledger.as_dict()["tasks"]["t"]["calls"] == 3
    # the failed replies stay cached: a rerun replays them and fails the same way without new calls
    assert len(store.list_keys("cache")) == 3
    with pytest.raises(LLMError):
        complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20, attempts=3)
    assert fake_completion_server.server.requests == 3
    assert ledger.as_dict()["tasks"]["t"]["cache_hits"] == 3


def test_a_reply_cut_at_max_tokens_is_not_asked_again(tmp_path, fake_completion_server):
    """A looping small model or a too-long answer: the same budget would cut the retry too."""
    body = json.loads(chat_completion_body('{"name": "pod pod pod pod'))
    body["choices"][0]["finish_reason"] = "length"
    endpoint, client, store, ledger = _client(tmp_path, fake_completion_server(raw=json.dumps(body).encode()))
    with pytest.raises(
        LLMError,
        match=r"gave no valid Named JSON after 1 attempt; last error: .*"
        r"\(reply cut at max_tokens=20; not asked again\)$",
    ):
        complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20, attempts=3)
    assert fake_completion_server.server.requests == 1


def test_wrong_shape_is_fed_back_and_a_later_valid_reply_is_cached(tmp_path, fake_completion_server):
    url = fake_completion_server(content=json.dumps({"name": "pod"}))
    endpoint, client, store, ledger = _client(tmp_path, url)
    assert complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20).name == "pod"
    assert complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20).name == "pod"
    assert fake_completion_server.server.requests == 1
    assert ledger.as_dict()["tasks"]["t"] | {"seconds": 0} == {
        "calls": 1, "cache_hits": 1, "errors": 0, "prompt_tokens": 11, "completion_tokens": 3, "seconds": 0,
        "cost_usd": pytest.approx((11 * 0.15 + 3 * 0.60) / 1e6),
    }  # fmt: skip
    [key] = store.list_keys("cache/llm")
    entry = store.read_json(key)
    assert entry["request"]["model"] == "fake-model" and entry["response"]["choices"][0]["message"]["content"]
    assert "sk-test" not in json.dumps(entry)


def test_a_body_that_is_not_a_completion_is_a_clear_error(tmp_path, fake_completion_server):
    url = fake_completion_server(raw=b"<html>proxy error</html>")
    endpoint, client, store, _ = _client(tmp_path, url)
    with pytest.raises(LLMError, match="teacher endpoint fake-model at http://127.0.0.1"):
        complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20, attempts=2)
    assert store.list_keys("cache") == []


def test_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("KDFLOW_TEST_NO_SUCH_KEY", raising=False)
    cfg = load_config({"teacher": {"provider": "openai", "api_key_env": "KDFLOW_TEST_NO_SUCH_KEY"}}, environ={}).teacher
    with pytest.raises(EndpointError, match="set the environment variable KDFLOW_TEST_NO_SUCH_KEY"):
        with teacher_endpoint(cfg):
            pass


def test_openai_provider_takes_url_model_key_and_mode_from_config(monkeypatch):
    monkeypatch.setenv("KDFLOW_TEST_KEY", "sk-from-env")
    overrides = {"teacher": {"provider": "openai", "api_key_env": "KDFLOW_TEST_KEY", "base_url": "http://127.0.0.1:9/v1",
                             "model": "qwen", "structured_output": "json_object"}}  # fmt: skip
    with teacher_endpoint(load_config(overrides, environ={}).teacher) as endpoint:
        assert endpoint == Endpoint("http://127.0.0.1:9/v1", "qwen", "sk-from-env", "json_object")
