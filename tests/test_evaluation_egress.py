"""RAGAS evaluation stays on loopback, analytics included. ragas posts usage events to its vendor
unless RAGAS_DO_NOT_TRACK is exactly "true", from its LLM classes and from a batcher flushed at
exit; kdflow's judge LLM makes no analytics call and kdflow forces the variable. The check runs in
a child process, under its own socket audit until the interpreter is gone, with the variable set
to a value ragas ignores ("1"). A control run proves the audit sees ragas' analytics when kdflow
is not the one calling it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fixtures_reliability import is_loopback

pytestmark = pytest.mark.slow

EVALUATE = """
import json, sys
from kdflow.config import load_config
from kdflow.evaluation.metrics import score_answers
from kdflow.llm import UsageLedger
from kdflow.llm.server import Endpoint
from kdflow.store import ArtifactStore

base_url, model, store_dir = sys.argv[1:4]
cfg = load_config({"evaluation": {"metrics": ["answer_relevancy", "semantic_similarity", "rouge_l"],
                                  "relevancy_strictness": 1}}, environ={})
rows = [{"question_id": "pods-1", "topic": "pods", "split": "train", "question": "What is a Pod in Kubernetes?",
         "answer": "A Pod is the smallest deployable unit in Kubernetes: "
                   "one or more containers sharing network and storage.",
         "reference": "A Pod is the smallest deployable unit of computing in Kubernetes."}]
judge = Endpoint(base_url, model, "sk-no-key-required", "json_object_schema")
scores = score_answers(cfg.evaluation, rows, judge=judge, store=ArtifactStore(store_dir), ledger=UsageLedger(),
                       cycle=1, stage="baseline")
from ragas._analytics import do_not_track
print(json.dumps({"do_not_track": do_not_track(), "scores": [s.model_dump() for s in scores]}))
"""

RAGAS_ALONE = """
from ragas.llms import llm_factory
from openai import OpenAI
llm_factory("gpt-4o-mini", client=OpenAI(api_key="sk-none", base_url="http://127.0.0.1:9/v1"))
"""


def _outside(events):
    return [(event, target) for event, target in events if not is_loopback(event, target)]


def _run(script: str, *args: str, env_value: str = "1") -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "RAGAS_DO_NOT_TRACK": env_value}
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600)


def test_evaluation_with_the_judge_opens_no_socket_off_loopback(embedded_endpoint, child_socket_audit, tmp_path):
    done = _run(EVALUATE, embedded_endpoint.base_url, embedded_endpoint.model, str(tmp_path / "store"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["do_not_track"] is True  # kdflow turned analytics off although the variable said "1"
    (row,) = result["scores"]
    assert row["failures"] == {} and 0.0 <= row["scores"]["answer_relevancy"] <= 1.0, row

    events = child_socket_audit()
    judge_port = int(embedded_endpoint.base_url.rsplit(":", 1)[1].split("/")[0])
    ports = {target[1] for event, target in events if event == "socket.connect" and isinstance(target, list)}
    assert ports & {judge_port, *(int(u.rsplit(":", 1)[1].split("/")[0]) for u in embedded_endpoint.replicas)}, events
    assert _outside(events) == []


def test_control_ragas_alone_with_the_ignored_value_does_try_its_vendor(child_socket_audit):
    """Without kdflow in front, RAGAS_DO_NOT_TRACK=1 lets ragas look up its analytics host: the
    audit above would have seen it (the lookup fails here, there is no network)."""
    done = _run(RAGAS_ALONE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any("explodinggradients" in str(target) for _, target in _outside(child_socket_audit()))
