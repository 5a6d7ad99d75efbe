"""Passage retrieval: the teacher answers with the passages most similar to the question.

Passage embeddings are cached in the artifact store keyed by the KB's content hash, so tasks
do not re-embed the whole knowledge base every time."""

from __future__ import annotations

import io
import logging

import numpy as np

from kdflow.embeddings import cosine_top_k, embed
from kdflow.kb import KnowledgeBase, Passage
from kdflow.store import ArtifactStore

log = logging.getLogger(__name__)


class Retriever:
    def __init__(self, kb: KnowledgeBase, store: ArtifactStore | None = None):
        self.kb = kb
        self.matrix = self._load_or_embed(store)

    def _load_or_embed(self, store: ArtifactStore | None) -> np.ndarray:
        key = f"cache/embeddings/{self.kb.content_hash}.npy"
        if store is not None and store.exists(key):
            matrix = np.load(io.BytesIO(store.read_bytes(key)))
            if matrix.shape[0] == len(self.kb.passages):
                return matrix
        log.info("embedding %d knowledge-base passages", len(self.kb.passages))
        matrix = embed([f"{p.section}: {p.text}" for p in self.kb.passages])
        if store is not None:
            buf = io.BytesIO()
            np.save(buf, matrix)
            store.write_bytes(key, buf.getvalue())
        return matrix

    def search(self, query: str, k: int = 3, topic: str | None = None) -> list[tuple[Passage, float]]:
        """The ``k`` passages closest to ``query``, optionally within one topic."""
        indices = [i for i, p in enumerate(self.kb.passages) if topic is None or p.topic == topic]
        if not indices:
            self.kb.passages_for(topic or "")  # raises the clear unknown-topic error
        sub = self.matrix[indices]
        hits = cosine_top_k(embed([query])[0], sub, k)
        return [(self.kb.passages[indices[i]], score) for i, score in hits]
