"""``teacher`` subcommands: run the teacher alone, e.g. to try a new endpoint.

    python -m kdflow teacher questions --topic pods -n 3
    python -m kdflow teacher answer --question "What is a Pod?"

Endpoint, model and store come from the usual config (defaults.yaml, KDFLOW_CONFIG,
KDFLOW__TEACHER__* variables). Results go to stdout as JSON lines, usage to stderr. ``questions``
never repeats a question already in the store (earlier runs and the held-out set), like a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdflow.config import KdflowConfig


def register(subparsers: Any) -> argparse.ArgumentParser:
    teacher = subparsers.add_parser("teacher", help="run the teacher alone against the configured endpoint")
    commands = teacher.add_subparsers(dest="teacher_command", required=True)
    questions = commands.add_parser("questions", help="generate new grounded questions for one topic")
    questions.add_argument("--topic", required=True)
    questions.add_argument("-n", type=int, default=3, help="how many questions (default 3)")
    questions.add_argument("--seed", type=int, default=None, help="default: the config's seed")
    questions.add_argument("--cycle", type=int, default=None)
    questions.set_defaults(func=run_questions)
    answer = commands.add_parser("answer", help="write a reference answer from the retrieved passages")
    answer.add_argument("--question", required=True)
    answer.add_argument("--topic", default=None, help="restrict retrieval to one topic")
    answer.set_defaults(func=run_answer)
    return teacher


def _session(config: KdflowConfig):  # noqa: ANN202 - yields (endpoint, client, ledger, store, kb)
    from contextlib import contextmanager

    from kdflow.kb import load_from_config
    from kdflow.llm import UsageLedger, make_client, teacher_endpoint
    from kdflow.store import ArtifactStore

    @contextmanager
    def session():
        store = ArtifactStore.from_config(config)
        ledger = UsageLedger.from_config(config.teacher)
        kb = load_from_config(config)
        with teacher_endpoint(config.teacher) as endpoint:
            client = make_client(endpoint, store, ledger, task="cli", timeout_s=config.teacher.timeout_s,
                                 max_retries=config.teacher.max_retries)
            yield endpoint, client, ledger, store, kb
        print(json.dumps({"usage": ledger.as_dict()["total"]}), file=sys.stderr)

    return session()


def run_questions(args: argparse.Namespace, config: KdflowConfig) -> int:
    """New questions for one topic, none already in the configured store (what a run could use)."""
    from kdflow.bank import question_bank
    from kdflow.teacher.questions import generate_questions

    with _session(config) as (endpoint, client, _ledger, store, kb):
        kb.require_topics([args.topic])
        seed = config.seed if args.seed is None else args.seed
        existing = question_bank(store, kb.content_hash)  # every run's questions count: the CLI belongs to no run
        found = generate_questions(
            client, endpoint, config.teacher, kb, args.topic, args.n, existing=existing, seed=seed, cycle=args.cycle
        )
        for question in found:
            print(question.model_dump_json())
    return 0


def run_answer(args: argparse.Namespace, config: KdflowConfig) -> int:
    from kdflow.records import Question, question_id
    from kdflow.retrieval import Retriever
    from kdflow.teacher.references import generate_reference

    with _session(config) as (endpoint, client, _ledger, store, kb):
        retriever = Retriever(kb, store)
        best = retriever.search(args.question, 1, topic=args.topic)[0][0]
        question = Question(id=question_id(best.topic, args.question), topic=best.topic, question=args.question,
                            passage_ids=[best.id])
        reference = generate_reference(client, endpoint, config.teacher, retriever, question,
                                       top_k=config.knowledge_base.retrieval_top_k)
        print(reference.model_dump_json())
    return 0
