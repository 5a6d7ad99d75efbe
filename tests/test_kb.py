import pytest

from kdflow.kb import BUILTIN_KB, KnowledgeBaseError, clean_markdown, load_knowledge_base, split_passages

UPSTREAM_STYLE = """---
title: Pod Lifecycle
content_type: concept
weight: 30
---

<!-- overview -->

This page describes the lifecycle of a {{< glossary_tooltip text="Pod" term_id="pod" >}}. Pods follow a
defined lifecycle, starting in the Pending phase and moving through Running.

{{< note >}}
A Pod is scheduled once in its lifetime and stays on its node until it stops or is deleted.
{{< /note >}}

## Pod phase

The phase of a Pod is a simple, high-level summary of where the Pod is in its lifecycle, such as Pending,
Running, Succeeded, Failed or Unknown, as reported by the kubelet.

```yaml
apiVersion: v1
kind: Pod
```

{{% code_sample file="pods/simple-pod.yaml" %}}
"""


def test_builtin_kb_has_three_topics_of_real_size():
    kb = load_knowledge_base()
    assert kb.topics == ["pods", "services", "storage"]
    for topic in kb.topics:
        words = sum(len(p.text.split()) for p in kb.passages_for(topic))
        assert words >= 2400, f"{topic} has only {words} words"
    ids = [p.id for p in kb.passages]
    assert len(ids) == len(set(ids))


def test_passage_ids_are_stable_across_loads():
    first = [p.id for p in load_knowledge_base().passages]
    second = [p.id for p in load_knowledge_base().passages]
    assert first == second and first[0].startswith(first[0].split("/")[0] + "/")


def test_upstream_front_matter_and_shortcodes_are_stripped():
    cleaned = clean_markdown(UPSTREAM_STYLE)
    assert "content_type" not in cleaned and "{{" not in cleaned and "<!--" not in cleaned
    assert "lifecycle of a Pod." in cleaned
    assert "apiVersion" not in cleaned  # code samples are not prose passages
    passages = split_passages(UPSTREAM_STYLE, topic="pods", source="concepts/pod-lifecycle.md", passage_words=60)
    assert {p.section for p in passages} == {"", "Pod phase"}
    assert all("{{" not in p.text for p in passages)
    assert passages[-1].id == "pods/concepts/pod-lifecycle#pod-phase-0"


def test_upstream_layout_folders_map_to_topics(tmp_path):
    (tmp_path / "workloads" / "pods").mkdir(parents=True)
    (tmp_path / "workloads" / "pods" / "pod-lifecycle.md").write_text(UPSTREAM_STYLE)
    (tmp_path / "services-networking").mkdir()
    (tmp_path / "services-networking" / "service.md").write_text(
        "# Service\n\nA Service exposes a set of Pods behind one stable virtual IP address and DNS name.\n"
    )
    kb = load_knowledge_base(str(tmp_path))
    assert kb.topics == ["services-networking", "workloads"]
    mapped = load_knowledge_base(
        str(tmp_path), topic_map={"pods": ["workloads/pods"], "services": ["services-networking/*.md"]}
    )
    assert mapped.topics == ["pods", "services"]


def test_unknown_topic_lists_the_existing_ones():
    kb = load_knowledge_base()
    with pytest.raises(KnowledgeBaseError, match="topics that exist: pods, services, storage"):
        kb.require_topics(["pods", "networking"])
    with pytest.raises(KnowledgeBaseError, match="topics that exist"):
        kb.passages_for("networking")


def test_empty_missing_binary_and_non_utf8_kb(tmp_path):
    with pytest.raises(KnowledgeBaseError, match="does not exist"):
        load_knowledge_base(str(tmp_path / "missing"))
    with pytest.raises(KnowledgeBaseError, match="no markdown passages"):
        load_knowledge_base(str(tmp_path))
    (tmp_path / "latin1.md").write_bytes("# Pods\n\nCaf\xe9 pods are scheduled.".encode("latin-1"))
    with pytest.raises(KnowledgeBaseError, match="latin1.md is not UTF-8"):
        load_knowledge_base(str(tmp_path))
    (tmp_path / "latin1.md").unlink()
    (tmp_path / "blob.md").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(KnowledgeBaseError, match="looks binary"):
        load_knowledge_base(str(tmp_path))


def test_builtin_path_constant_points_into_the_package():
    assert BUILTIN_KB.name == "kubernetes-v1.28"
