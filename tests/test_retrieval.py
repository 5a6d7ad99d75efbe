import numpy as np
import pytest

from kdflow.embeddings import cosine_top_k
from kdflow.kb import load_knowledge_base
from kdflow.retrieval import Retriever
from kdflow.store import ArtifactStore


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ArtifactStore(str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def retriever(kb, store):
    return Retriever(kb, store)


@pytest.mark.parametrize(
    ("question", "topic"),
    [
        ("What does a headless Service with clusterIP None return from DNS?", "services"),
        ("Which access modes can a PersistentVolumeClaim request?", "storage"),
        ("What happens when a liveness probe fails repeatedly?", "pods"),
    ],
)
def test_search_returns_passages_of_the_right_topic(retriever, question, topic):
    hits = retriever.search(question, k=3)
    assert len(hits) == 3
    assert hits[0][0].topic == topic
    assert hits[0][1] >= hits[1][1] >= hits[2][1]
    within = retriever.search(question, k=2, topic=topic)
    assert {p.topic for p, _ in within} == {topic}


def test_passage_embeddings_are_cached_in_the_store(kb, store, retriever):
    key = f"cache/embeddings/{kb.content_hash}.npy"
    assert store.exists(key)
    cached = Retriever(kb, store)
    assert cached.matrix.shape == (len(kb.passages), 384)


def test_cosine_top_k_orders_by_similarity():
    matrix = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    assert cosine_top_k(np.array([1, 0], dtype=np.float32), matrix, 2) == [(0, 1.0), (2, pytest.approx(0.6))]
    assert cosine_top_k(np.array([1, 0], dtype=np.float32), matrix[:0], 2) == []
