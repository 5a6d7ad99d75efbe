"""``gold`` subcommands: check a gold file before a run uses it, and list the passage ids it may cite.

    python -m kdflow gold check [--path my-gold.jsonl]   # every check a run makes, plus each answer's support
    python -m kdflow gold passages --topic pods          # passage ids and sections to cite

The knowledge base, topics and gold path come from the usual config (defaults.yaml, KDFLOW_CONFIG,
KDFLOW__* variables, --set).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    gold = subparsers.add_parser("gold", help="check a gold evaluation file; list the passage ids it may cite")
    commands = gold.add_subparsers(dest="gold_command", required=True)
    check = commands.add_parser("check",
                                help="validate the gold file against the knowledge base; print each answer's support")
    check.add_argument("--path", default=None, help="gold JSONL (default: evaluation.gold_path)")
    check.add_argument("--topics", help="comma-separated topics to check (default: pipeline.topics)")
    check.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="any config value, e.g. knowledge_base.path=...")
    check.set_defaults(func=run_check)
    passages = commands.add_parser("passages", help="list passage ids, sections and first words (JSON lines)")
    passages.add_argument("--topic", default=None)
    passages.set_defaults(func=run_passages)
    return gold


def run_check(args: argparse.Namespace, config: Any) -> int:
    """Every check of a run (format, passages, key facts), then the support of each gold answer by
    its passages against ``teacher.gate.support_floor``; exit 1 when an answer is below it."""
    from kdflow.gold import validated_gold
    from kdflow.kb import load_from_config
    from kdflow.teacher.faithfulness import text_support

    if args.path:
        config.evaluation.gold_path = args.path
    gold = validated_gold(config)
    if gold is None:
        print("kdflow: evaluation.gold_path is null: no gold set to check")
        return 0
    kb, floor = load_from_config(config), config.teacher.gate.support_floor
    items = gold.for_topics(config.pipeline.topics)
    weak = 0
    for item in items:
        support = text_support(item.answer, [kb.by_id(pid).text for pid in item.passage_ids])
        weak += support < floor
        print(json.dumps({"id": item.id, "line": gold.lines[item.id], "support": round(support, 4),
                          "supported": support >= floor}))
    counts = dict(Counter(item.topic for item in items))
    print(f"{gold.path}: {len(items)} items {counts}; {weak} answer(s) below the support floor {floor}")
    return 1 if weak else 0


def run_passages(args: argparse.Namespace, config: Any) -> int:
    from kdflow.kb import load_from_config

    kb = load_from_config(config)
    for passage in kb.passages_for(args.topic) if args.topic else kb.passages:
        print(json.dumps({"id": passage.id, "section": passage.section,
                          "text": " ".join(passage.text.split()[:12]) + " ..."}))
    return 0
