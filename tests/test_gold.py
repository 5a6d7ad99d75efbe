"""The gold set: the shipped file passes every check, a planted unsupported answer does not, a
malformed line is refused with its file, line number and field, and key-fact recall scores what a
fact-level metric should."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kdflow.config import load_config
from kdflow.gold import (
    BUILTIN_GOLD,
    GoldSetError,
    check_against_kb,
    key_fact_recall,
    load_gold,
    parse_gold_lines,
    validated_gold,
)
from kdflow.kb import load_knowledge_base
from kdflow.teacher.faithfulness import text_support

GOOD = {"id": "pods-x", "topic": "pods", "question": "Which restart policy applies when a Pod spec sets none?",
        "answer": "The default restart policy is Always.", "key_facts": [["Always"]],
        "passage_ids": ["pods/pods#what-a-pod-is-0"]}


def answer_support(item, kb) -> float:
    return text_support(item.answer, [kb.by_id(pid).text for pid in item.passage_ids])


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture(scope="module")
def shipped():
    return load_gold(BUILTIN_GOLD)


def test_the_shipped_set_is_large_and_balanced(shipped):
    per_topic = Counter(item.topic for item in shipped.items)
    assert set(per_topic) == {"pods", "services", "storage"} and min(per_topic.values()) >= 20
    assert len(shipped.items) >= 60
    assert len({item.question.lower() for item in shipped.items}) == len(shipped.items)


def test_every_shipped_item_is_stated_by_its_passages(shipped, kb):
    """Passage ids exist, each key fact is written in the cited passages, and every sentence of the
    gold answer is supported by them at the reference gate's own floor."""
    floor = load_config(environ={}).teacher.gate.support_floor
    check_against_kb(shipped, kb, ["pods", "services", "storage"])
    weak = {item.id: support for item in shipped.items if (support := answer_support(item, kb)) < floor}
    assert weak == {}


def test_a_planted_unsupported_answer_fails_the_support_check(shipped, kb):
    item = shipped.items[0]
    planted = item.model_copy(
        update={"answer": "Bananas are yellow fruit that grow in tropical climates far from any cluster."})
    floor = load_config(environ={}).teacher.gate.support_floor
    assert answer_support(item, kb) >= floor > answer_support(planted, kb)


def test_a_key_fact_the_passages_do_not_state_is_refused(kb, tmp_path):
    bad = {**GOOD, "key_facts": [["OnFailure"], ["ninety seconds"]]}
    gold = parse_gold_lines([json.dumps(GOOD),
                             json.dumps({**bad, "id": "pods-y", "question": "Name the restart policy of a Pod."})],
                            "gold.jsonl")
    with pytest.raises(GoldSetError, match=r"^gold\.jsonl:2: field key_facts: \['OnFailure'\] is not stated"):
        check_against_kb(gold, kb, ["pods"])


@pytest.mark.parametrize(("line", "expected"), [
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "answer"}), r"bad\.jsonl:2: field answer: Field required"),
    (json.dumps({**GOOD, "question": "Is the default restart policy Always?"}),
     r"bad\.jsonl:2: field question: .*yes/no"),
    (json.dumps({**GOOD, "key_facts": []}), r"bad\.jsonl:2: field key_facts: "),
    (json.dumps({**GOOD, "key_facts": [["  "]]}), r"bad\.jsonl:2: field key_facts: .*letter or digit"),
    (json.dumps({**GOOD, "extra": 1}), r"bad\.jsonl:2: field extra: Extra inputs"),
    (json.dumps({**GOOD, "question": GOOD["question"].upper(), "id": "other"}),
     r"bad\.jsonl:2: field question: same question as line 1"),
    (json.dumps(GOOD), r"bad\.jsonl:2: field id: 'pods-x' already used on line 1"),
])
def test_a_malformed_line_is_refused_with_its_line_number_and_field(tmp_path, line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(GoldSetError, match=expected.replace("bad\\.jsonl", f"{path}".replace(".", r"\."))):
        load_gold(path)


def test_a_missing_passage_or_topic_is_refused_before_any_work(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({**GOOD, "passage_ids": ["pods/pods#no-such-section-0"]}) + "\n")
    cfg = load_config({"evaluation": {"gold_path": str(path)}, "pipeline": {"topics": ["pods"]}}, environ={})
    with pytest.raises(GoldSetError, match=rf"{path}:1: field passage_ids: no passage 'pods/pods#no-such-section-0'"):
        validated_gold(cfg)
    path.write_text(json.dumps(GOOD) + "\n")
    cfg = load_config({"evaluation": {"gold_path": str(path)}}, environ={})
    with pytest.raises(GoldSetError, match="no gold items for topic\\(s\\) services, storage"):
        validated_gold(cfg)
    assert validated_gold(load_config({"evaluation": {"gold_path": None}}, environ={})) is None
    with pytest.raises(GoldSetError,
                       match="built-in gold set is written for the built-in Kubernetes v1.28 knowledge base"):
        validated_gold(load_config({"knowledge_base": {"path": str(tmp_path)}}, environ={}))
    with pytest.raises(GoldSetError, match="gold file not found"):
        validated_gold(load_config({"evaluation": {"gold_path": str(tmp_path / "nope.jsonl")}}, environ={}))


def test_the_run_refuses_a_malformed_gold_file_in_load_configuration(tmp_path):
    """Through the pipeline's own step: the second task stops the run with the line and field."""
    from kdflow.pipeline import execute

    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "b", "question": "What?"}) + "\n")
    overrides = {"store": {"url": str(tmp_path / "store")}, "evaluation": {"gold_path": str(path)}}
    execute("start_pipeline", run_id="bad_gold", overrides=overrides, cycle=None, inputs={})
    with pytest.raises(GoldSetError, match=rf"{path}:2: field question: String should have at least 10 characters"):
        execute("load_configuration", run_id="bad_gold", overrides=overrides, cycle=None, inputs={})


@pytest.mark.parametrize(("answer", "expected"), [
    ("The default restartPolicy is Always.", 1.0),
    ("ALWAYS, restarted by the kubelet", 1.0),
    ("It is OnFailure.", 0.0),
    ("Services are always reachable", 1.0),  # the fact word is there: recall cannot tell intent
    ("alwaysOn", 0.0),  # whole words only
    ("", 0.0),
])  # fmt: skip
def test_key_fact_recall_counts_stated_facts(answer, expected):
    assert key_fact_recall(answer, [["Always"]]) == expected


def test_the_ceiling_and_scoring_samples_are_stratified_and_seeded(shipped):
    from kdflow.gold import scored_gold, stratified_sample

    sample = stratified_sample(shipped.items, 4, seed=42, purpose="ceiling")
    assert Counter(item.topic for item in sample) == {"pods": 4, "services": 4, "storage": 4}
    assert sample == stratified_sample(shipped.items, 4, seed=42, purpose="ceiling") != stratified_sample(
        shipped.items, 4, seed=7, purpose="ceiling")
    assert stratified_sample(shipped.items, None, seed=42, purpose="ceiling") == shipped.items
    # the student's sample (evaluation.gold_per_topic): the same items in every run of a seed, all by default
    config = load_config({"evaluation": {"gold_per_topic": 5}}, environ={})
    scored = scored_gold(config, shipped.items)
    assert Counter(item.topic for item in scored) == {"pods": 5, "services": 5, "storage": 5}
    assert scored == scored_gold(load_config({"evaluation": {"gold_per_topic": 5}}, environ={}), shipped.items)
    assert [i.id for i in scored] == [i.id for i in shipped.items if i in scored]  # file order kept
    assert scored_gold(load_config({}, environ={}), shipped.items) == shipped.items


def test_key_fact_recall_is_the_share_of_facts_with_any_form():
    facts = [["30000-32767", "30000 to 32767"], ["NodePort"], ["kube-proxy"]]
    assert key_fact_recall("A NodePort uses a port from 30000 to 32767.", facts) == pytest.approx(2 / 3)
    assert key_fact_recall("nodeport: 30000-32767, via kube proxy", facts) == pytest.approx(1.0)


def test_the_gold_cli_checks_a_file_and_lists_passages(tmp_path, capsys):
    from kdflow.cli import main

    assert main(["gold", "check"]) == 0
    expected = "150 items {'pods': 50, 'services': 50, 'storage': 50}; 0 answer(s) below the support floor 0.7"
    assert expected in capsys.readouterr().out
    planted = tmp_path / "planted.jsonl"
    planted.write_text(json.dumps({**GOOD,
                                   "answer": "Bananas are yellow fruit that grow far from any cluster."}) + "\n")
    assert main(["gold", "check", "--path", str(planted), "--topics", "pods"]) == 1
    out = capsys.readouterr().out
    assert '"supported": false' in out and "1 answer(s) below the support floor" in out
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(GOOD) + "\n{oops\n")
    assert main(["gold", "check", "--path", str(broken), "--set", "pipeline.topics=[pods]"]) == 1
    assert f"{broken}:2: not valid JSON" in capsys.readouterr().err
    assert main(["gold", "passages", "--topic", "pods"]) == 0
    assert '"id": "pods/pods#what-a-pod-is-0"' in capsys.readouterr().out
