"""Evaluation: RAGAS metrics per answer, aggregates and cycle comparisons, the champion promotion
gate and the run report. Submodules import their heavy dependencies (ragas, matplotlib) inside
functions, so importing this package from a DAG file costs nothing."""

from __future__ import annotations

JUDGE_METRICS = frozenset({"answer_relevancy", "answer_correctness", "factual_correctness"})
