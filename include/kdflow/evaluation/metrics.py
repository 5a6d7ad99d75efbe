"""Score answers with RAGAS (``ragas.metrics.collections``, called with ``ascore``).

Metric names are kdflow's (``EvaluationConfig.metrics``):

* ``answer_relevancy``: judge writes questions back from the answer (strictness =
  ``relevancy_strictness``), mean cosine to the real question; 0 when noncommittal. Never looks
  at the reference, so it shows the answer is on topic, not that the teacher's knowledge arrived.
* ``semantic_similarity`` (MiniLM embeddings), ``rouge_l``, ``bleu``: answer vs the teacher's
  reference, no judge.
* ``answer_correctness``, ``factual_correctness``: answer vs reference through the judge.

A row may name ``reference_dropped`` (the gate's reason, see
:func:`kdflow.records.gate_drop_reason`): a reference the teacher-data gate
dropped is no ground truth, so the reference metrics of that row are recorded as failures
("reference dropped by the quality gate: <reason>"), counted and left out of the means, while
``answer_relevancy`` is still scored.

Judge failures are data: a (row, metric) whose judge output cannot be parsed after retries, or
whose score is NaN, gets ``None`` and a one-line reason in ``ScoreRow.failures``. A judge endpoint
that refuses the model or a parameter (HTTP 404 / 400, :class:`kdflow.llm.client.EndpointConfigError`)
fails the task instead: every row would fail the same way until the config changes. An empty answer
scores 0 on the judge metrics without a judge call (saying nothing is the student's failure, not
the judge's).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, get_args

from kdflow.config import EvaluationConfig
from kdflow.evaluation import JUDGE_METRICS
from kdflow.evaluation.judge import make_judge_llm, ragas_environment, start_score
from kdflow.llm.client import find_config_error
from kdflow.records import ScoreRow, Stage

ROW_KEYS = ("question_id", "topic", "split", "question", "answer", "reference")
DROPPED_KEY = "reference_dropped"  # optional row key: why the gate dropped the reference
REFERENCE_METRICS = frozenset({"semantic_similarity", "rouge_l", "bleu", "answer_correctness", "factual_correctness"})
Scorer = Callable[[dict[str, Any]], Awaitable[Any]]


@functools.lru_cache(maxsize=1)
def ragas_embeddings() -> Any:
    """ragas' HuggingFace embeddings over the packaged all-MiniLM-L6-v2 (loaded once per process)."""
    ragas_environment()
    from ragas.embeddings import HuggingFaceEmbeddings

    from kdflow.embeddings import minilm_path

    return HuggingFaceEmbeddings(model=minilm_path(), device="cpu")


def build_scorers(cfg: EvaluationConfig, *, llm: Any, metrics: Sequence[str] | None = None) -> dict[str, Scorer]:
    """One async ``row -> MetricResult`` per metric of ``metrics`` (default: the configured ones)."""
    ragas_environment()
    from ragas.metrics import collections as rc

    def embeddings() -> Any:
        return ragas_embeddings()

    factories: dict[str, Callable[[], Scorer]] = {
        "answer_relevancy": lambda: _call(
            rc.AnswerRelevancy(llm=llm, embeddings=embeddings(), strictness=cfg.relevancy_strictness),
            user_input="question", response="answer",
        ),
        "semantic_similarity": lambda: _call(rc.SemanticSimilarity(embeddings=embeddings()),
                                             reference="reference", response="answer"),
        "rouge_l": lambda: _call(rc.RougeScore(rouge_type="rougeL", mode="fmeasure"),
                                 reference="reference", response="answer"),
        "bleu": lambda: _call(rc.BleuScore(), reference="reference", response="answer"),
        "answer_correctness": lambda: _call(
            rc.AnswerCorrectness(llm=llm, embeddings=embeddings()), user_input="question", response="answer",
            reference="reference"
        ),
        "factual_correctness": lambda: _call(rc.FactualCorrectness(llm=llm), response="answer", reference="reference"),
    }
    return {name: factories[name]() for name in (cfg.metrics if metrics is None else metrics)}


def _call(metric: Any, **arguments: str) -> Scorer:
    """Bind a ragas metric's ``ascore`` keyword arguments to row fields."""

    async def score(row: dict[str, Any]) -> Any:
        return await metric.ascore(**{arg: row[field] for arg, field in arguments.items()})

    return score


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _score_metric(name: str, scorer: Scorer, row: dict[str, Any], gate: asyncio.Semaphore,
                        judge: Any = None) -> tuple[float | None, str | None]:
    if name in REFERENCE_METRICS and row.get(DROPPED_KEY):
        return None, f"reference dropped by the quality gate: {row[DROPPED_KEY]}"
    if name in REFERENCE_METRICS and not row["reference"].strip():
        return None, "no reference answer to compare with"
    if name in JUDGE_METRICS and not row["answer"].strip():
        return 0.0, None
    start_score()
    try:
        if name in JUDGE_METRICS:
            async with gate:
                result = await scorer(row)
        else:
            result = await scorer(row)
    except Exception as exc:  # noqa: BLE001 - any judge/metric error is recorded on the row, never raised ...
        if judge is not None and (refused := find_config_error(exc, judge)) is not None:
            raise refused from None  # ... but a judge that refuses the model or a parameter fails the task
        return None, _one_line(exc)
    value = getattr(result, "value", result)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None, f"metric returned a non-number: {value!r:.100}"
    if math.isnan(value) or math.isinf(value):
        return None, f"metric returned {value} (judge output unusable)"
    return value, None


def _check_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    checked = []
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"score_answers: row {i} ({row.get('question_id', '?')}) lacks {', '.join(missing)}")
        if row["split"] not in ("train", "held_out", "gold"):
            raise ValueError(f"score_answers: row {i} ({row['question_id']}) has split {row['split']!r}; use 'train', "
                             "'held_out' or 'gold'")
        checked.append({k: row[k] if k == "split" else str(row[k] or "") for k in ROW_KEYS})
        checked[-1][DROPPED_KEY] = row.get(DROPPED_KEY)
    return checked


async def _score_all(
    cfg: EvaluationConfig, metrics: Sequence[str], rows: list[dict[str, Any]], judge: Any, store: Any, ledger: Any
) -> list[dict[str, Any]]:
    llm = client = None
    if JUDGE_METRICS & set(metrics):
        llm, client = make_judge_llm(cfg, judge, store=store, ledger=ledger)
    try:
        scorers = build_scorers(cfg, llm=llm, metrics=metrics)
        gate = asyncio.Semaphore(cfg.judge_concurrency)
        tasks = [_score_metric(name, scorer, row, gate, judge) for row in rows for name, scorer in scorers.items()]
        outcomes = iter(await asyncio.gather(*tasks))
    finally:
        if client is not None:
            await client.close()
    results = []
    for _row in rows:
        scores, failures = {}, {}
        for name in scorers:
            value, reason = next(outcomes)
            scores[name] = value
            if reason is not None:
                failures[name] = reason
        results.append({"scores": scores, "failures": failures})
    return results


def score_answers(
    cfg: EvaluationConfig,
    rows: Sequence[dict[str, Any]],
    *,
    judge: Any | None,
    store: Any,
    ledger: Any,
    cycle: int,
    stage: str,
    metrics: Sequence[str] | None = None,
) -> list[ScoreRow]:
    """Score each ``{"question_id","topic","split","question","answer","reference"}`` row (plus
    the optional ``reference_dropped`` reason) with ``cfg.metrics``; judge calls go to ``judge``
    (an :class:`kdflow.llm.server.Endpoint`) through the cached client, counted in ``ledger``
    under task ``"judge"``. ``metrics`` replaces ``cfg.metrics`` (the gold set's judge-free ones)."""
    if stage not in get_args(Stage):
        raise ValueError(f"score_answers: stage {stage!r} must be one of {', '.join(get_args(Stage))}")
    metrics = list(cfg.metrics if metrics is None else metrics)
    needs_judge = [m for m in metrics if m in JUDGE_METRICS]
    if needs_judge and judge is None:
        raise ValueError(f"score_answers: metrics {needs_judge} need a judge endpoint; pass judge= or drop them from "
                         "evaluation.metrics")
    checked = _check_rows(rows)
    if not checked:
        return []
    outcomes = asyncio.run(_score_all(cfg, metrics, checked, judge, store, ledger))
    return [
        ScoreRow(question_id=row["question_id"], topic=row["topic"], split=row["split"], stage=stage,
                 cycle=cycle, **outcome)
        for row, outcome in zip(checked, outcomes, strict=True)
    ]


def score_gold_answers(cfg: EvaluationConfig, rows: Sequence[dict[str, Any]], items: Sequence[Any], *,
                       store: Any, ledger: Any, cycle: int, stage: str) -> list[ScoreRow]:
    """Score answers to gold questions (:class:`kdflow.gold.GoldItem` ``items``) with
    ``cfg.gold_metrics``, all judge-free: ``key_fact_recall`` against the item's key facts, the
    others through :func:`score_answers` against the gold answer. ``rows`` are
    ``{"question_id", "topic", "split", "question", "answer"}``."""
    from kdflow.gold import key_fact_recall

    by_id = {item.as_question().id: item for item in items}
    scored_rows = [{**row, "reference": by_id[row["question_id"]].answer} for row in rows]
    others = [m for m in cfg.gold_metrics if m != "key_fact_recall"]
    scores = score_answers(cfg, scored_rows, judge=None, store=store, ledger=ledger, cycle=cycle,
                           stage=stage, metrics=others)
    for row, score in zip(scored_rows, scores, strict=True):
        values = dict(score.scores)
        if "key_fact_recall" in cfg.gold_metrics:
            values["key_fact_recall"] = key_fact_recall(row["answer"], by_id[row["question_id"]].key_facts)
        score.scores = {m: values.get(m) for m in cfg.gold_metrics}
    return scores
