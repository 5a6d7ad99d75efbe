"""Knowledge base: a folder of markdown split into passages with stable ids, grouped by topic.

Works on the shipped Kubernetes v1.28 KB and on the upstream kubernetes/website layout (YAML
front matter and Hugo shortcodes are stripped). Each top-level file stem or folder is a topic
unless ``topic_map`` says otherwise.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

BUILTIN_KB = Path(__file__).parent / "data" / "kubernetes-v1.28"
MARKDOWN_SUFFIXES = (".md", ".markdown")
# Sentences per training answer in the ``sentences`` passage form: the gold answers' length.
SENTENCES_PER_PAIR = 2

# "e.g." and friends end in a dot but do not end a sentence.
_ABBREVIATIONS = re.compile(r"\b(e\.g|i\.e|etc|vs|approx|cf)\.", re.IGNORECASE)
_DOT = "\u2024"  # one-dot leader: stands in for a protected dot while splitting
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``; a text without end punctuation is one sentence."""
    protected = _ABBREVIATIONS.sub(lambda m: m.group(0).replace(".", _DOT), " ".join(text.split()))
    return [s.replace(_DOT, ".").strip() for s in _SENTENCE_END.split(protected) if s.strip()]


class KnowledgeBaseError(ValueError):
    """The knowledge base is missing, empty, unreadable, or lacks a requested topic."""


@dataclass(frozen=True)
class Passage:
    id: str
    topic: str
    source: str
    section: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def as_training_pair(self, kb_name: str) -> tuple[str, str]:
        """The passage as a (prompt, completion) pair: the student reads the knowledge base's own
        words for a section it is asked about (``student.passage_pairs``)."""
        return f"What does the {kb_name} documentation say about {self.section.split(' > ')[-1]}?", self.text

    def as_document(self) -> str:
        """The passage as a plain document, its section path then its text: what the student reads when
        it is pretrained on the knowledge base (``python -m kdflow student read-kb``)."""
        return f"{self.section}\n\n{self.text}"

    def training_pairs(self, kb_name: str, form: str = "passage") -> list[tuple[str, str]]:
        """The passage as training pairs in ``student.passage_form``: ``passage`` is one pair with the
        whole passage as the answer; ``sentences`` is one pair per run of ``SENTENCES_PER_PAIR``
        sentences, each the answer to the same section question. Short answers are the form the
        student is asked for, so learning the facts does not teach it to answer in documentation
        prose (docs/benchmarks/evaluation.md measures both)."""
        prompt, text = self.as_training_pair(kb_name)
        if form == "passage":
            return [(prompt, text)]
        sentences = split_sentences(text)
        return [(prompt, " ".join(sentences[i:i + SENTENCES_PER_PAIR]))
                for i in range(0, len(sentences), SENTENCES_PER_PAIR)]


_FRONT_MATTER = re.compile(r"\A(?:---\s*\n.*?\n---|\+\+\+\s*\n.*?\n\+\+\+)\s*\n", re.DOTALL)
_SHORTCODE_TEXT = re.compile(r"\{\{[<%]\s*glossary_tooltip\b[^}]*?\btext=\"([^\"]*)\"[^}]*?[>%]\}\}")
_SHORTCODE = re.compile(r"\{\{[<%].*?[>%]\}\}", re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_CODE_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.DOTALL | re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")


def clean_markdown(text: str) -> str:
    """Strip front matter, Hugo shortcodes (keeping a tooltip's text), comments, HTML and code."""
    text = text.replace("\r\n", "\n")
    text = _FRONT_MATTER.sub("", text, count=1)
    text = _SHORTCODE_TEXT.sub(r"\1", text)
    text = _SHORTCODE.sub("", text)
    text = _HTML_COMMENT.sub("", text)
    text = _CODE_FENCE.sub("", text)
    text = _HTML_TAG.sub("", text)
    text = _LINK.sub(r"\1", text)
    return text


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _sections(text: str) -> Iterable[tuple[str, str]]:
    """Yield (heading path, body) pairs; the body keeps paragraph breaks."""
    trail: list[str] = []
    body: list[str] = []
    for line in text.split("\n"):
        match = _HEADING.match(line)
        if match:
            yield " > ".join(trail), "\n".join(body)
            level = len(match.group(1))
            trail = trail[: level - 1] + [match.group(2).strip()]
            body = []
        else:
            body.append(line)
    yield " > ".join(trail), "\n".join(body)


def _chunks(body: str, passage_words: int) -> Iterable[str]:
    """Pack whole paragraphs into chunks of about ``passage_words`` words."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body)]
    current: list[str] = []
    size = 0
    for para in filter(None, paragraphs):
        words = len(para.split())
        if current and size + words > passage_words:
            yield " ".join(current)
            current, size = [], 0
        current.append(para)
        size += words
    if current:
        yield " ".join(current)


def split_passages(text: str, *, topic: str, source: str, passage_words: int = 120) -> list[Passage]:
    passages = []
    for section, body in _sections(clean_markdown(text)):
        for index, chunk in enumerate(_chunks(body, passage_words)):
            if len(chunk.split()) < 8:  # headings-only or stray fragments carry no knowledge
                continue
            pid = f"{topic}/{Path(source).with_suffix('').as_posix()}#{slugify(section.split(' > ')[-1])}-{index}"
            passages.append(Passage(id=pid, topic=topic, source=source, section=section, text=chunk))
    return _deduplicate_ids(passages)


def _deduplicate_ids(passages: list[Passage]) -> list[Passage]:
    seen: dict[str, int] = {}
    result = []
    for p in passages:
        n = seen.get(p.id, 0)
        seen[p.id] = n + 1
        result.append(p if n == 0 else Passage(f"{p.id}~{n}", p.topic, p.source, p.section, p.text))
    return result


@dataclass
class KnowledgeBase:
    name: str
    root: str
    passages: list[Passage]

    @property
    def topics(self) -> list[str]:
        return sorted({p.topic for p in self.passages})

    def passages_for(self, topic: str) -> list[Passage]:
        found = [p for p in self.passages if p.topic == topic]
        if not found:
            raise KnowledgeBaseError(
                f"topic {topic!r} has no passages in knowledge base {self.root}; topics that exist: "
                f"{', '.join(self.topics)}"
            )
        return found

    def documents(self, topics: Iterable[str]) -> list[str]:
        """Every passage of ``topics`` as a plain document (:meth:`Passage.as_document`), in order."""
        return [p.as_document() for topic in topics for p in self.passages_for(topic)]

    def require_topics(self, topics: Iterable[str]) -> None:
        missing = [t for t in topics if t not in self.topics]
        if missing:
            raise KnowledgeBaseError(
                f"unknown topic(s) {', '.join(missing)} in knowledge base {self.root}; topics that exist: "
                f"{', '.join(self.topics)}"
            )

    def by_id(self, passage_id: str) -> Passage:
        for p in self.passages:
            if p.id == passage_id:
                return p
        raise KnowledgeBaseError(f"no passage with id {passage_id!r}")

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for p in self.passages:
            digest.update(f"{p.id}\0{p.text}\0".encode())
        return digest.hexdigest()[:16]


def _topic_of(rel: str, topic_map: Mapping[str, list[str]]) -> str | None:
    if not topic_map:
        first = rel.split("/", 1)[0]
        return Path(first).stem.lower() if "/" not in rel else first.lower()
    for topic, patterns in topic_map.items():
        for pattern in patterns:
            pattern = pattern.rstrip("/")
            if fnmatch.fnmatch(rel, pattern) or rel.startswith(pattern + "/"):
                return topic.lower()
    return None


def resolve_kb_path(path: str) -> Path:
    return BUILTIN_KB if path == "builtin" else Path(path).expanduser()


def load_knowledge_base(
    path: str = "builtin", *, name: str | None = None, topic_map: Mapping[str, list[str]] | None = None,
    passage_words: int = 120
) -> KnowledgeBase:
    root = resolve_kb_path(path)
    if not root.is_dir():
        raise KnowledgeBaseError(f"knowledge base folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MARKDOWN_SUFFIXES)
    passages: list[Passage] = []
    for file in files:
        rel = file.relative_to(root).as_posix()
        topic = _topic_of(rel, topic_map or {})
        if topic is None:
            continue
        raw = file.read_bytes()
        if b"\0" in raw:
            raise KnowledgeBaseError(f"knowledge base file {file} looks binary (NUL bytes); only markdown text is read")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KnowledgeBaseError(f"knowledge base file {file} is not UTF-8 text "
                                     f"({exc.reason} at byte {exc.start})") from None
        passages.extend(split_passages(text, topic=topic, source=rel, passage_words=passage_words))
    if not passages:
        raise KnowledgeBaseError(f"knowledge base {root} has no markdown passages (looked for "
                                 f"{', '.join(MARKDOWN_SUFFIXES)} files)")
    return KnowledgeBase(name=name or root.name, root=str(root), passages=passages)


def load_from_config(config) -> KnowledgeBase:  # noqa: ANN001 - KdflowConfig, kept import-light
    kb_cfg = config.knowledge_base
    return load_knowledge_base(kb_cfg.path, name=kb_cfg.name, topic_map=kb_cfg.topic_map,
                               passage_words=kb_cfg.passage_words)


def list_topics(path: str = "builtin", topic_map: Mapping[str, list[str]] | None = None) -> list[str]:
    """Topic names from file and folder names alone (cheap enough for DAG parse time)."""
    if topic_map:
        return sorted(t.lower() for t in topic_map)
    root = resolve_kb_path(path)
    if not root.is_dir():
        return []
    return sorted(
        {_topic_of(p.relative_to(root).as_posix(), {}) for p in root.rglob("*")
         if p.suffix.lower() in MARKDOWN_SUFFIXES}
        - {None}
    )
