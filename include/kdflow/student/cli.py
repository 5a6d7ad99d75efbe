"""``python -m kdflow student answer|train|read-kb|gpu-check``: answer a question file or fine-tune on a
dataset file with the student, without Airflow, let it read the knowledge base before any distillation,
or check the GPU path on this machine. ``register(subparsers)``
is called by ``kdflow.cli``, the one command line; the handlers take ``(args, config)`` like every
command's there."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdflow.config import KdflowConfig
    from kdflow.student.device import DevicePlan

log = logging.getLogger(__name__)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise SystemExit(f"{path}:{number}: expected a JSON object per line")
        rows.append(row)
    return rows


def _field(row: dict[str, Any], names: tuple[str, ...], where: str) -> str:
    for name in names:
        if isinstance(row.get(name), str) and row[name].strip():
            return row[name]
    raise SystemExit(f"{where}: needs a non-empty text field, one of {list(names)}")


def questions_from(path: str | Path) -> list[dict[str, Any]]:
    """Rows with a ``question`` (kdflow ``Question`` rows or any object with that field)."""
    rows = read_jsonl(path)
    return [{"id": row.get("id", str(n)), "question": _field(row, ("question",), f"{path}:{n}")}
            for n, row in enumerate(rows, 1)]


def pairs_from(path: str | Path) -> list[tuple[str, str]]:
    """(question, answer) pairs from ``prompt/completion`` (kdflow ``TrainingPair``),
    ``question/answer`` or ``question/reference`` rows."""
    return [
        (_field(row, ("prompt", "question"), f"{path}:{n}"),
         _field(row, ("completion", "answer", "reference"), f"{path}:{n}"))
        for n, row in enumerate(read_jsonl(path), 1)
    ]


def _student_setup(args: argparse.Namespace, config: KdflowConfig, purpose: str) -> tuple[Path, DevicePlan]:
    """The student model's local folder (``--model`` is already in ``config``) and its device plan."""
    from kdflow.student.device import plan_device
    from kdflow.student.models import StudentModelError, resolve_student

    try:
        model_path = resolve_student(config.student.model, args.cache_dir)
    except StudentModelError as exc:
        raise SystemExit(str(exc)) from None
    return model_path, plan_device(config.student, purpose)


def cmd_answer(args: argparse.Namespace, config: KdflowConfig) -> int:
    from kdflow.student.generate import answer_questions

    questions = questions_from(args.questions_file)
    model_path, plan = _student_setup(args, config, "answer")
    texts = [q["question"] for q in questions]
    answers = answer_questions(config.student, model_path, texts, adapter_dir=args.adapter, plan=plan)
    lines = [
        json.dumps({"id": q["id"], "question": q["question"], "answer": a.text, "new_tokens": a.new_tokens},
                   ensure_ascii=False)
        for q, a in zip(questions, answers, strict=True)
    ]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    print(answers.stats.model_dump_json(), file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace, config: KdflowConfig) -> int:
    from kdflow.student.train import train_adapter

    pairs = pairs_from(args.dataset)
    model_path, plan = _student_setup(args, config, "train")
    seed = config.seed if args.seed is None else args.seed
    result = train_adapter(config.student, model_path, pairs, args.out, init_adapter_dir=args.init_adapter, plan=plan,
                           seed=seed)
    print(result.model_dump_json(indent=2))
    return 0


def cmd_read_kb(args: argparse.Namespace, config: KdflowConfig) -> int:
    """Continued pretraining: every weight of the student trained on the selected topics' passages as
    plain text (``student.kb_reading``), published as a model folder at ``--out`` once it is complete, to
    be used as the student of later runs (``--student``)."""
    import shutil

    from kdflow.kb import load_from_config
    from kdflow.student.kb_reading import read_knowledge_base

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} already exists: choose another --out or remove it")
    kb = load_from_config(config)
    documents = kb.documents(config.pipeline.topics)
    model_path, plan = _student_setup(args, config, "train")
    reading = config.student.kb_reading
    log.info("the student reads %d passages of %s (%s): every weight, %s x %d epochs", len(documents), kb.name,
             ", ".join(config.pipeline.topics), reading.learning_rate, reading.epochs)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # an earlier attempt that was stopped
    seed = config.seed if args.seed is None else args.seed  # --seed was ignored before (read with config.seed)
    result = read_knowledge_base(config.student, model_path, documents, partial, plan=plan, seed=seed)
    partial.rename(out)  # published whole or not at all
    print(json.dumps({**result, "model": str(out)}, indent=2))
    print(f"the student has read {len(documents)} passages of {kb.name}: use it with --student {out}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``student answer``, ``train``, ``read-kb`` and ``gpu-check``; each sets ``func(args, config) -> int``."""
    student = subparsers.add_parser("student", help="answer questions or fine-tune the student model")
    commands = student.add_subparsers(dest="student_command", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        # dest "student": the same override as ``run --student`` (student.model), applied by kdflow.cli's config load
        parser.add_argument("--model", dest="student", metavar="MODEL",
                            help="student model: hub id, folder, .gguf or 'embedded' (default: config student.model)")
        parser.add_argument("--cache-dir", help="where converted GGUF models are kept (default ~/.cache/kdflow/models)")

    answer = commands.add_parser("answer", help="answer the questions of a JSONL file (one {'question': ...} per line)")
    # dest "questions_file": ``args.questions`` is the questions-per-cycle override of kdflow.cli's config load
    answer.add_argument("--questions", dest="questions_file", metavar="FILE", required=True,
                        help="JSONL file with a 'question' field per row")
    answer.add_argument("--adapter", help="LoRA adapter folder to apply")
    answer.add_argument("--out", help="write answers here as JSONL (default: stdout)")
    common(answer)
    answer.set_defaults(func=cmd_answer)

    train = commands.add_parser("train", help="fine-tune a LoRA adapter on a JSONL dataset of question/answer pairs")
    train.add_argument("--dataset", required=True,
                       help="JSONL with prompt/completion, question/answer or question/reference")
    train.add_argument("--out", required=True, help="folder for the adapter and train_result.json")
    train.add_argument("--init-adapter", help="continue from this adapter (the previous cycle's)")
    train.add_argument("--seed", type=int, help="random seed (default: config seed)")
    common(train)
    train.set_defaults(func=cmd_train)

    read = commands.add_parser("read-kb", help="train every weight of the student on the knowledge base's text "
                                                "(the selected topics), before any distillation; then --student DIR")
    read.add_argument("--out", required=True, help="new folder for the model (name it after the student, e.g. ~/.cache/"
                                                   "kdflow/models/SmolLM2-135M-Instruct-k8s, so its training profile "
                                                   "applies)")
    read.add_argument("--topics", help="comma-separated topics to read (default: config pipeline.topics)")
    read.add_argument("--seed", type=int, help="random seed (default: config seed)")
    read.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="any config value, e.g. student.kb_reading.epochs=3")
    common(read)
    read.set_defaults(func=cmd_read_kb)

    gpu = commands.add_parser("gpu-check", help="check the GPU path (QLoRA, bf16 answers, OOM fallback) on tiny "
                                                "models, offline; skips without CUDA (scripts/gpu-check.sh)")
    gpu.add_argument("--out", help="also write the table (Markdown) to this file")
    gpu.set_defaults(func=cmd_gpu_check)
    return student


def cmd_gpu_check(args: argparse.Namespace, config: KdflowConfig) -> int:
    from kdflow.student.gpu_check import run_gpu_check

    return run_gpu_check(args.out)
