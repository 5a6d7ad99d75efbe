"""Error paths of the teacher client, each with its one-line message and nothing half-written:
a server that is down, one that replies with the wrong JSON, rate limits and 5xx (retried with
backoff, bounded), the API key (missing; read from an Airflow connection, never logged), and an
endpoint that refuses the model (HTTP 404) or a parameter (HTTP 400), answered as OpenAI answers.

The fault injector is :class:`fixtures_llm.ScriptedServer`: a local OpenAI-compatible fake that
answers from a script and records every request it gets."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
from pydantic import BaseModel

from fixtures_llm import OpenAIRules, ScriptedServer, chat_completion_body
from kdflow.config import load_config
from kdflow.llm import Endpoint, LLMError, UsageLedger, make_client, teacher_endpoint
from kdflow.llm.client import EndpointConfigError, explain_api_error
from kdflow.llm.profiles import CHAT_STYLE, PROFILES, RequestStyle
from kdflow.llm.server import EndpointError, free_port
from kdflow.store import ArtifactStore
from kdflow.teacher.structured import complete_json

MESSAGES = [{"role": "user", "content": "Give me a name as JSON."}]


class Named(BaseModel):
    name: str


def _client(tmp_path, base_url: str, mode: str = "json_object", model: str = "fake-model",
            style: RequestStyle = CHAT_STYLE):
    store = ArtifactStore(str(tmp_path / "store"))
    ledger = UsageLedger(0.15, 0.60)
    endpoint = Endpoint(base_url, model, "sk-test", mode, style=style)
    return endpoint, make_client(endpoint, store, ledger, task="t", timeout_s=5, max_retries=0), store, ledger


def test_server_down_is_a_clear_error(tmp_path):
    endpoint, client, store, ledger = _client(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(LLMError,
                       match=r"cannot reach teacher endpoint fake-model at http://127\.0\.0\.1:\d+/v1: ConnectError"):
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
    }
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
    overrides = {"teacher": {"provider": "openai", "api_key_env": "KDFLOW_TEST_KEY",
                             "base_url": "http://127.0.0.1:9/v1",
                             "model": "qwen", "structured_output": "json_object"}}
    with teacher_endpoint(load_config(overrides, environ={}).teacher) as endpoint:
        assert endpoint == Endpoint("http://127.0.0.1:9/v1", "qwen", "sk-from-env", "json_object")


def test_the_validation_error_is_fed_back_in_the_retry_request(tmp_path):
    with ScriptedServer('{"nam": "oops"}', '{"name": "pod"}') as server:
        endpoint, client, store, ledger = _client(tmp_path, server.url)
        assert complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20).name == "pod"
    first, retry = server.bodies
    assert retry["messages"][: len(first["messages"])] == first["messages"]
    assert retry["messages"][-2] == {"role": "assistant", "content": '{"nam": "oops"}'}
    feedback = retry["messages"][-1]
    assert feedback["role"] == "user" and feedback["content"].startswith(
        "That reply was not valid: name: Field required")
    assert ledger.as_dict()["tasks"]["t"]["calls"] == 2


def test_429_and_503_are_retried_with_backoff_then_succeed(tmp_path):
    """The openai client's own retries (exponential backoff with jitter) pass through the cache transport:
    each failed try is counted as an error call, the success is cached and its tokens counted once."""
    with ScriptedServer(429, 503, '{"name": "pod"}') as server:
        endpoint, _, store, ledger = _client(tmp_path, server.url)
        client = make_client(endpoint, store, ledger, task="t", timeout_s=5, max_retries=2)
        started = time.monotonic()
        assert complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20).name == "pod"
        waited = time.monotonic() - started
        assert complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20).name == "pod"
    assert len(server.bodies) == 3 and server.bodies[0] == server.bodies[2]
    assert [h.get("x-stainless-retry-count") for h in server.headers] == ["0", "1", "2"]
    assert waited >= 0.5 * 0.75 + 1.0 * 0.75  # openai: 0.5 s * 2**n, jitter down to 75 %
    usage = ledger.as_dict()["tasks"]["t"]
    assert (usage["calls"], usage["errors"], usage["cache_hits"]) == (3, 2, 1)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (11, 3)
    assert len(store.list_keys("cache/llm")) == 1


def test_5xx_retries_are_bounded_then_a_clear_error(tmp_path):
    with ScriptedServer(503) as server:
        endpoint, _, store, ledger = _client(tmp_path, server.url)
        client = make_client(endpoint, store, ledger, task="t", timeout_s=5, max_retries=1)
        with pytest.raises(LLMError,
                           match=r"teacher endpoint fake-model at http://127\.0\.0\.1:\d+/v1 answered HTTP 503"):
            complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20)
    assert len(server.bodies) == 2  # the first try and max_retries=1 retry, no more
    assert ledger.as_dict()["tasks"]["t"]["errors"] == 2 and store.list_keys("cache") == []


@pytest.fixture()
def airflow_logging():
    """Importing Airflow replaces the root log handlers; do it before caplog attaches to the test's call."""
    import airflow.sdk  # noqa: F401


def test_api_key_from_an_airflow_connection_is_used_and_never_logged(airflow_logging, tmp_path,
                                                                     monkeypatch, caplog, capfd):
    """No KDFLOW_TEST_CONN_KEY variable: the key is the password of the Airflow connection of that name."""
    secret = "sk-conn-5e6f7a8b9c"
    monkeypatch.delenv("KDFLOW_TEST_CONN_KEY", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_KDFLOW_TEST_CONN_KEY", json.dumps({"conn_type": "generic", "password": secret}))
    caplog.set_level(logging.DEBUG)
    with ScriptedServer('{"name": "pod"}') as server:
        overrides = {"teacher": {"provider": "openai", "api_key_env": "KDFLOW_TEST_CONN_KEY", "base_url": server.url,
                                 "model": "fake-model", "structured_output": "json_object"}}
        with teacher_endpoint(load_config(overrides, environ={}).teacher) as endpoint:
            store, ledger = ArtifactStore(str(tmp_path / "store")), UsageLedger()
            client = make_client(endpoint, store, ledger, task="t", timeout_s=5, max_retries=0)
            assert complete_json(client, endpoint, MESSAGES, Named, temperature=0, max_tokens=20).name == "pod"
            logging.getLogger("kdflow.test").info("endpoint in use: %r", endpoint)
    assert endpoint.api_key == secret
    assert server.headers[0]["authorization"] == f"Bearer {secret}"
    assert {"kdflow.test", "httpx2", "openai._base_client"} <= {r.name
                                                                for r in caplog.records} and secret not in caplog.text
    assert secret not in "".join(capfd.readouterr())
    assert all(secret not in store.read_bytes(key).decode() for key in store.list_keys("cache"))


# -- refused model or parameter (issue #20): one line naming it and what to set, no retry -------------
def _refused(tmp_path, rules: OpenAIRules, **client) -> tuple[EndpointConfigError, ScriptedServer, object, object]:
    with ScriptedServer(rules) as server:
        endpoint, llm, store, ledger = _client(tmp_path, server.url, "json_schema", **client)
        with pytest.raises(EndpointConfigError) as caught:
            complete_json(llm, endpoint, MESSAGES, Named, temperature=0.7, max_tokens=20, attempts=3)
    return caught.value, server, store, ledger


def _one_line_no_retry(error: Exception, server: ScriptedServer, store, ledger) -> str:
    line = str(error)
    assert "\n" not in line and len(line) < 600, line
    assert server.requests == 1  # a 400/404 is not retried: the same request would be refused again
    assert store.list_keys("cache") == [] and ledger.as_dict()["tasks"]["t"]["errors"] == 1
    return line


def test_a_model_the_endpoint_does_not_serve_fails_with_one_line_naming_it(tmp_path):
    error, *rest = _refused(tmp_path, OpenAIRules({"gpt-5-mini": "reasoning"}), model="gpt-4o-mini")
    line = _one_line_no_retry(error, *rest)
    assert re.match(r"teacher model 'gpt-4o-mini' is not available at http://127\.0\.0\.1:\d+/v1 \(HTTP 404 "
                    r"model_not_found: The model `gpt-4o-mini` does not exist", line), line
    assert line.endswith("/v1/models lists them)") and "set teacher.model (KDFLOW__TEACHER__MODEL)" in line


def test_openai_itself_answering_model_not_found_suggests_the_listed_current_models():
    import httpx2
    import openai

    request = httpx2.Request("POST", "https://api.openai.com/v1/chat/completions")
    body = {"message": "The model `gpt-4o-mini` does not exist or you do not have access to it.",
            "type": "invalid_request_error", "param": None, "code": "model_not_found"}
    exc = openai.NotFoundError(body["message"], response=httpx2.Response(404, request=request), body=body)
    line = explain_api_error(exc, Endpoint(None, "gpt-4o-mini", "sk-test"))
    current = [name for name, p in PROFILES.items() if not p.generic and not p.note]
    assert "gpt-4o-mini" not in current and current
    assert line.startswith("teacher model 'gpt-4o-mini' is not available at api.openai.com (HTTP 404 model_not_found")
    assert f"({', '.join(current)}; README 'Choosing a teacher')" in line


def test_max_tokens_refused_by_a_reasoning_model_names_the_parameter_and_the_profile_to_set(tmp_path):
    error, *rest = _refused(tmp_path, OpenAIRules({"gpt-5-mini": "reasoning"}), model="gpt-5-mini")
    line = _one_line_no_retry(error, *rest)
    assert re.match(r"teacher model 'gpt-5-mini' at http://127\.0\.0\.1:\d+/v1 refuses the parameter 'max_tokens' "
                    r"\(HTTP 400 unsupported_parameter: Unsupported parameter: 'max_tokens' is not supported with this "
                    r"model\. Use 'max_completion_tokens' instead\.\); set teacher\.profile=reasoning "
                    r"\(KDFLOW__TEACHER__PROFILE=reasoning: max_completion_tokens, no temperature\)", line), line


def test_a_temperature_refused_by_a_reasoning_model_names_the_parameter(tmp_path):
    style = RequestStyle(sampling=True, token_param="max_completion_tokens")  # right budget, wrong sampling
    error, *rest = _refused(tmp_path, OpenAIRules({"o4-mini": "reasoning"}), model="o4-mini", style=style)
    line = _one_line_no_retry(error, *rest)
    assert "refuses the parameter 'temperature' (HTTP 400 unsupported_value: Unsupported value: 'temperature' does " \
           "not support 0.7 with this model." in line and "set teacher.profile=reasoning" in line


def test_reasoning_effort_refused_by_a_chat_model_names_the_setting_that_omits_it(tmp_path):
    style = RequestStyle(reasoning_effort="minimal")
    error, *rest = _refused(tmp_path, OpenAIRules({"gpt-4.1-mini": "chat"}), model="gpt-4.1-mini", style=style)
    line = _one_line_no_retry(error, *rest)
    assert "refuses the parameter 'reasoning_effort'" in line and "KDFLOW__TEACHER__REASONING_EFFORT=omit" in line


def test_a_refused_model_fails_the_teacher_command_with_that_one_line(tmp_path, monkeypatch, capsys):
    """Through the CLI's teacher command (what a teacher task runs): exit 1, one line, nothing else."""
    from kdflow.cli import main

    with ScriptedServer(OpenAIRules({"gpt-5.4-mini": "reasoning"})) as server:
        for name, value in {"KDFLOW_TEST_KEY": "sk-test", "KDFLOW__STORE__URL": str(tmp_path / "store"),
                            "KDFLOW__TEACHER__PROVIDER": "openai", "KDFLOW__TEACHER__BASE_URL": server.url,
                            "KDFLOW__TEACHER__MODEL": "gpt-4o-mini",
                            "KDFLOW__TEACHER__API_KEY_ENV": "KDFLOW_TEST_KEY"}.items():
            monkeypatch.setenv(name, value)
        code = main(["teacher", "questions", "--topic", "pods", "-n", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("kdflow: EndpointConfigError: teacher model 'gpt-4o-mini' is not available at ")
    assert server.requests == 1
