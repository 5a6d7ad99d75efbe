"""Is a reference sentence supported by its passages? A score that needs no LLM, always computed,
and an optional LLM check (RAGAS Faithfulness with the judge).

The non-LLM support of a sentence is the mean of two numbers in [0, 1]:

* ``semantic``: the best MiniLM cosine between the sentence and any passage sentence (catches
  paraphrase);
* ``lexical``: the largest share of the sentence's content words found in any ONE passage,
  ROUGE-1 recall style (catches invented entities, numbers and names, which embeddings blur, and
  sentences stitched from words of different passages, a favourite error of SmolLM2).

Neither catches a negation flipped inside copied words; that is what the LLM check is for when
the judge is strong enough. SmolLM2-135M is not (it cannot split a text into claims reliably), so
the LLM check is off by default and the embedded setup relies on the non-LLM score plus the
extractive fallback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kdflow.embeddings import embed
from kdflow.kb import split_sentences

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an the and or but if then than of to in on at by for with from into onto as is are was were be been being it "
    "its this that these those there their they them he she we you i do does did can could may might will would shall "
    "should not no so such also which who whom whose what when where why how all any each both either some more most "
    "other own same only very just about over under up down out has have had having one two per via".split()
)

# An LLM check: (question, sentences, passage texts) -> one score in [0, 1] (or None) per sentence.
SentenceJudge = Callable[[str, Sequence[str], Sequence[str]], list[float | None]]


def content_words(text: str) -> list[str]:
    """Lowercased words minus stop words, with a plural "s" folded away ("Pods" == "pod")."""
    words = _WORD.findall(text.lower())
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words
            if w not in STOPWORDS]


def lexical_support(sentence: str, vocabularies: Sequence[set[str]]) -> float:
    words = content_words(sentence)
    if not words or not vocabularies:
        return 0.0
    return max(sum(w in vocabulary for w in words) for vocabulary in vocabularies) / len(words)


@dataclass(frozen=True)
class SentenceSupport:
    text: str
    semantic: float
    lexical: float
    llm: float | None = None

    @property
    def support(self) -> float:
        return round((self.semantic + self.lexical) / 2, 4)

    def supported(self, floor: float, llm_floor: float) -> bool:
        return self.support >= floor and (self.llm is None or self.llm >= llm_floor)

    def record(self, floor: float, llm_floor: float) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if v is not None}
        return {**row, "support": self.support, "kept": self.supported(floor, llm_floor)}


class PassageSentences:
    """The sentences of a reference's passages, embedded once and reused for every draft."""

    def __init__(self, passages: Sequence[str]):
        self.passages = list(passages)
        self.sentences = [s for p in self.passages for s in split_sentences(p)]
        self.matrix = embed(self.sentences) if self.sentences else np.zeros((0, 384), dtype=np.float32)
        self.vocabularies = [set(content_words(p)) for p in self.passages]

    def score(self, sentences: Sequence[str]) -> list[SentenceSupport]:
        """Non-LLM support of each sentence."""
        if not sentences:
            return []
        vectors = embed(list(sentences))
        best = (vectors @ self.matrix.T).max(axis=1) if self.matrix.shape[0] else np.zeros(len(sentences))
        return [
            SentenceSupport(text, round(max(float(sim), 0.0), 4), round(lexical_support(text, self.vocabularies), 4))
            for text, sim in zip(sentences, best, strict=True)
        ]

    def closest_to(self, question: str, n: int) -> tuple[list[str], float]:
        """The ``n`` passage sentences most similar to ``question``, in passage order, and the best cosine."""
        if not self.sentences:
            return [], 0.0
        sims = self.matrix @ embed([question])[0]
        top = sorted(np.argsort(-sims, kind="stable")[:n].tolist())
        return [self.sentences[i] for i in top], float(sims.max())


def text_support(text: str, passages: Sequence[str]) -> float:
    """The least non-LLM support of any sentence of ``text`` by ``passages`` (0 for no sentence):
    a text is only as supported as its weakest sentence. The gold set's answers are held to this."""
    supports = [s.support for s in PassageSentences(passages).score(split_sentences(text))]
    return min(supports, default=0.0)


def ragas_sentence_judge(evaluation_cfg: Any, endpoint: Any, *, store: Any, ledger: Any) -> SentenceJudge:
    """RAGAS Faithfulness with the judge of :mod:`kdflow.evaluation.judge`, one score per sentence.

    Each call builds its own judge client inside its own event loop, so the judge can be used from
    the teacher's worker threads. A sentence whose judge output is unusable gets ``None`` (no vote)."""

    def judge(question: str, sentences: Sequence[str], passages: Sequence[str]) -> list[float | None]:
        import asyncio
        import math

        from kdflow.evaluation.judge import make_judge_llm, ragas_environment
        from kdflow.llm.client import find_config_error

        ragas_environment()
        from ragas.metrics.collections import Faithfulness

        async def run() -> list[float | None]:
            llm, client = make_judge_llm(evaluation_cfg, endpoint, store=store, ledger=ledger)
            metric = Faithfulness(llm=llm)
            scores: list[float | None] = []
            try:
                for sentence in sentences:
                    try:
                        value = float((await metric.ascore(user_input=question, response=sentence,
                                                           retrieved_contexts=list(passages))).value)
                    except Exception as exc:  # noqa: BLE001 - a judge failure abstains, the non-LLM score decides
                        if (refused := find_config_error(exc, endpoint)) is not None:
                            raise refused from None  # a refused model or parameter: the config must change
                        value = math.nan
                    scores.append(None if math.isnan(value) else value)
            finally:
                await client.close()
            return scores

        return asyncio.run(run())

    return judge
