"""Which training recipe makes the student learn facts? Side by side on the gold set.

Each recipe trains the student from the base model on the same pairs, answers the gold set, and is
compared with the base model's answers, paired by question (:mod:`kdflow.evaluation.stats`). The
pairs come from a finished run's last training dataset (the teacher's gated pairs), optionally with
the knowledge-base passages those pairs cite added as extra pairs (``+passages``), or from the
knowledge base alone (``kb-``: every passage of the selected topics as a pair, no teacher at all,
the issue's "passage pretraining" probe; ``kb-sentences-``: the same text cut into pairs of two
sentences, answers as short as the student's; no run needed), or both: the run's pairs mixed with
every passage in one dataset (``+kb``), or the passages first and the run's pairs after, continuing
the same adapter (``kb-then-``: passage pretraining before Q&A). ``pipeline`` trains nothing: it
scores the run's own last adapter, e.g. on a larger gold set than the run was scored on. ``-full``
recipes train every weight instead of an adapter (``kdflow.student.full_finetune``); ``kb-text-full``
reads the passages as plain documents (continued pretraining, what ``python -m kdflow student read-kb``
does), and ``kb-text-full+current`` trains the pipeline's LoRA profile on the run's pairs on top of it.
``--pool`` judges one recipe over the bench files of several seeds.

    python -m kdflow.bench.learning --store /tmp/eval/store-a --run-id eval_default \\
        --recipes current,r64-all --out docs/benchmarks/learning.json

``--adapters DIR`` keeps each recipe's adapter in ``DIR/<recipe>`` and reuses it on the next call
(a recipe can train for an hour on two CPU cores), so the same adapters can be scored again, on
another gold set (``--set evaluation.gold_path=...``) for instance.

Prints one line per recipe as it finishes and writes a JSON document with every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("kdflow.bench.learning")

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R64_ALL = {"lora_r": 64, "lora_alpha": 128, "target_modules": ALL_LINEAR, "learning_rate": 1e-3, "epochs": 5}
# name -> (student overrides, training data: the run's "teacher" pairs, "teacher+cited" passages, the "kb" alone,
# or both: "teacher+kb" in one dataset, "kb-then-teacher" in two stages of one adapter)
RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "current": ({}, "teacher"),
    "r64-all": (R64_ALL, "teacher"),
    "r64-all+passages": (R64_ALL, "teacher+cited"),
    "current+passages": ({}, "teacher+cited"),
    "r16-all-1e-3x5": ({"target_modules": ALL_LINEAR, "learning_rate": 1e-3, "epochs": 5}, "teacher"),
    "kb-current": ({}, "kb"),
    "kb-r64-all": (R64_ALL, "kb"),
    "kb-sentences-current": ({}, "kb-sentences"),
    "kb-sentences-r64-all": (R64_ALL, "kb-sentences"),
    "kb-cued-r64-all": (R64_ALL, "kb-cued"),
    # the issue's own probe: each passage twice, its lead sentences and the whole passage (404 pairs)
    "kb-lead+passage-r64-all": (R64_ALL, "kb-lead+passage"),
    # the teacher's question-shaped pairs beside the passages: do they keep the answer form while the passages
    # bring the facts? Mixed, and the passages first (the pairs train last, from the passages' adapter)
    "r64-all+kb": (R64_ALL, "teacher+kb"),
    "kb-then-r64-all": (R64_ALL, "kb-then-teacher"),
    # no training: the run's own last adapter (the pipeline's profile, cycle after cycle), scored by the bench
    # on the gold set it is given, e.g. a larger one than the run was scored on
    "pipeline": ({}, "run-adapter"),
    # every weight trained, no adapter (FULL_FINETUNE): the passages under their section questions
    "kb-full": ({"learning_rate": 1e-4, "epochs": 5}, "kb"),
    # the passages as plain documents, no question and no chat turn (continued pretraining): facts stored without
    # teaching the answer turn to speak documentation prose? Only a full fine-tuning trains on documents.
    "kb-text-full": ({"learning_rate": 1e-4, "epochs": 5}, "kb-text"),
    # one pass at three times the rate: a fifth of the reading time, short enough for `make run`'s budget?
    "kb-text-full-short": ({"learning_rate": 3e-4, "epochs": 1}, "kb-text"),
    "kb-text-full+current": ({}, "teacher"),
    # the same pairs on top, gently (a fifth of the learning rate, one epoch): do the teacher's pairs still undo it?
    "kb-text-full+gentle": ({"learning_rate": 1e-4, "epochs": 1}, "teacher"),
}
# recipes that fine-tune the whole student (kdflow.student.full_finetune) instead of training a LoRA adapter
FULL_FINETUNE = {"kb-full", "kb-text-full", "kb-text-full-short"}
# recipes trained on another recipe's fully fine-tuned student instead of the base model: the knowledge base's
# text first (continued pretraining), then the pipeline's own LoRA profile on the run's teacher pairs
STARTS_FROM = {"kb-text-full+current": "kb-text-full", "kb-text-full+gentle": "kb-text-full"}
# sources that need a finished run: its training dataset, or its adapter
RUN_SOURCES = ("teacher", "teacher+cited", "teacher+kb", "kb-then-teacher", "run-adapter")


def _run_dataset(store_url: str, run_id: str,
                 cycle: int | None) -> tuple[Any, int, list[dict[str, Any]], dict[str, list[str]]]:
    """A run's context, the cycle whose training dataset is read (default: the last), its rows, and
    question id -> cited passage ids for every question of cycles 1..that one."""
    from kdflow.pipeline.context import RunContext

    ctx = RunContext.create(run_id, {"store": {"url": store_url}})
    last = cycle or max(int(n.split(".")[0].removeprefix("cycle_")) for n in ctx.store.manifest(run_id)
                        if n.endswith(".dataset"))
    cites = {q["id"]: q["passage_ids"] for n in range(1, last + 1)
             for q in ctx.rows(ctx.checkpoint(n, "questions.jsonl"))}
    return ctx, last, ctx.rows(ctx.checkpoint(last, "dataset.jsonl")), cites


def run_pairs(store_url: str, run_id: str, cycle: int | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """A run's training dataset of ``cycle`` (default: the last): (question, answer) pairs and the
    passage ids they cite."""
    _ctx, _last, rows, cites = _run_dataset(store_url, run_id, cycle)
    cited = [pid for row in rows for pid in cites.get(row["question_id"], [])]
    return [(r["prompt"], r["completion"]) for r in rows], list(dict.fromkeys(cited))


def fetch_run_adapter(store_url: str, run_id: str, cycle: int | None, target: Path) -> Path:
    """The run's adapter of ``cycle`` (default: the last), downloaded from its store into ``target``."""
    ctx, last, _rows, _cites = _run_dataset(store_url, run_id, cycle)
    return ctx.store.download_dir(ctx.checkpoint(last, "adapter"), target)


def scratch_folder(prefix: str) -> Path:
    """A temporary folder removed when the process exits (adapters are tens of MB)."""
    import atexit
    import shutil

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def trained_adapter(keep: Path | None, name: str, train: Any) -> tuple[Path, dict[str, Any]]:
    """A recipe's adapter and its training record, trained by ``train(folder) -> record`` into
    ``keep/<name>`` and reused from there when a finished record is already in it, so a recipe that
    trains for an hour is trained once and can be scored again (on another gold set, say). Without
    ``keep`` it trains into a temporary folder, removed at exit. The trained weights are in the
    record's ``weights`` subfolder: ``adapter`` (LoRA), or ``model`` for a fully fine-tuned student."""
    folder = scratch_folder(f"kdflow-recipe-{name}-") if keep is None else keep / name
    record_file = folder / "training.json"
    if record_file.is_file():
        log.info("%s: reusing the weights trained in %s", name, folder)
        record = json.loads(record_file.read_text())
        return folder / record.get("weights", "adapter"), {**record, "reused": str(folder)}
    folder.mkdir(parents=True, exist_ok=True)
    record = train(folder)
    partial = record_file.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(record_file)  # published last: a folder without it is trained again
    return folder / record.get("weights", "adapter"), record


def passage_pairs(config: Any, passage_ids: list[str] | None = None, form: str = "passage") -> list[tuple[str, str]]:
    """The knowledge base's passages as training pairs in ``form`` (``Passage.training_pairs``): the
    given ones, or every passage of the configured topics."""
    from kdflow.kb import load_from_config

    kb = load_from_config(config)
    if passage_ids is not None:
        passages = [kb.by_id(pid) for pid in passage_ids]
    else:
        passages = [p for t in config.pipeline.topics for p in kb.passages_for(t)]
    return [pair for p in passages for pair in p.training_pairs(kb.name, form)]


def lead_and_passage_pairs(config: Any) -> list[tuple[str, str]]:
    """Two pairs per passage under its section question: its lead (the first pair of the ``sentences``
    form, a short answer) and the whole passage. The recipe of issue 14's probe, which moved key-term
    recall on an independent gold set by +0.116 with r64 on all linear layers; measured here on the
    project's gold set."""
    from kdflow.kb import load_from_config

    kb = load_from_config(config)
    passages = [p for t in config.pipeline.topics for p in kb.passages_for(t)]
    return [pair for p in passages for pair in (p.training_pairs(kb.name, "sentences")[0], *p.training_pairs(kb.name))]


def cued_sentence_pairs(config: Any, cues: int = 3) -> list[tuple[str, str]]:
    """The ``sentences`` form with a question of its own per pair: the section question plus the
    pair's ``cues`` rarest words (by how many pairs of the knowledge base hold them), in their order in
    the text, e.g. "... say about Container probes: httpGet, 200 and 400?". Gold questions are written
    from the same sentences and share such words; a section question alone is the same cue for
    every pair of a passage. Built from the knowledge base only, never from the gold set."""
    import re
    from collections import Counter

    from kdflow.teacher.faithfulness import STOPWORDS

    word = re.compile(r"[A-Za-z][A-Za-z0-9.-]*[A-Za-z0-9]")
    pairs = passage_pairs(config, form="sentences")
    tokens = [[w for w in word.findall(answer) if w.lower() not in STOPWORDS] for _, answer in pairs]
    frequency = Counter(w for words in tokens for w in {t.lower() for t in words})
    cued = []
    for (question, answer), words in zip(pairs, tokens, strict=True):
        rarest = sorted(dict.fromkeys(words), key=lambda w: (frequency[w.lower()], -len(w)))[:cues]
        chosen = [w for w in dict.fromkeys(words) if w in rarest]
        if not chosen:
            cued.append((question, answer))
            continue
        listed = chosen[0] if len(chosen) == 1 else f"{', '.join(chosen[:-1])} and {chosen[-1]}"
        cued.append((f"{question.removesuffix('?')}: {listed}?", answer))
    return cued


def recipe_stages(config: Any, source: str, pairs: list[tuple[str, str]],
                  cited: list[str]) -> list[list[Any]]:
    """The training data of a recipe's ``source`` as stages trained one after the other on one adapter
    (one stage for every source but ``kb-then-teacher``). ``pairs`` and ``cited`` are the run's
    training pairs and the passages they cite; only the recipe's own source is built. ``kb-text`` is
    plain documents (strings), not pairs: only a full fine-tuning trains on them."""
    from kdflow.kb import load_from_config

    kb = {"kb": lambda: passage_pairs(config), "kb-sentences": lambda: passage_pairs(config, form="sentences"),
          "kb-cued": lambda: cued_sentence_pairs(config), "kb-lead+passage": lambda: lead_and_passage_pairs(config),
          "kb-text": lambda: load_from_config(config).documents(config.pipeline.topics)}
    if source in kb:
        return [kb[source]()]
    return {"teacher": lambda: [pairs], "run-adapter": lambda: [pairs],
            "teacher+cited": lambda: [pairs + passage_pairs(config, cited)],
            "teacher+kb": lambda: [pairs + passage_pairs(config)],
            "kb-then-teacher": lambda: [passage_pairs(config), pairs]}[source]()


def recipe_student(name: str, config: Any, model_path: Path | str, stages: list[list[Any]],
                   keep: Path | None) -> tuple[Path | str, Path | None, dict[str, Any]]:
    """A recipe's trained student as (the model to load, the LoRA adapter on it or None) and its training
    record, trained once into ``keep`` (:func:`trained_adapter`). A full fine-tuning trains every weight
    of one stage; a LoRA recipe trains its stages one after the other on one adapter, on the base model,
    or, for a recipe in ``STARTS_FROM``, on the fully fine-tuned student of another recipe (trained
    first, or reused from ``keep``)."""
    from kdflow.student.device import plan_device
    from kdflow.student.full_finetune import train_full
    from kdflow.student.train import train_adapter

    cfg = config.student.model_copy(update=RECIPES[name][0])
    start = model_path
    if name in STARTS_FROM:
        first = STARTS_FROM[name]
        start, _, _ = recipe_student(first, config, model_path, recipe_stages(config, RECIPES[first][1], [], []), keep)

    def train(folder: Path) -> dict[str, Any]:
        started = time.monotonic()
        if name in FULL_FINETUNE:  # one stage, every weight trained
            result = train_full(cfg, start, stages[0], folder / "model", plan=plan_device(cfg, "train"),
                                seed=config.seed)
            return {"stage_losses": [[result["initial_loss"], result["final_loss"]]], "weights": "model",
                    "train_s": round(time.monotonic() - started, 1)}
        adapter, losses = None, []
        for k, stage in enumerate(stages):  # each stage continues the previous stage's adapter
            previous, adapter = adapter, folder / (f"stage-{k}" if k < len(stages) - 1 else "adapter")
            result = train_adapter(cfg, start, stage, adapter, init_adapter_dir=previous,
                                   plan=plan_device(cfg, "train"), seed=config.seed)
            losses.append([result.initial_loss, result.final_loss])
        return {"stage_losses": losses, "train_s": round(time.monotonic() - started, 1)}

    weights, record = trained_adapter(keep, name, train)
    if record.get("weights") == "model":  # a fully fine-tuned student answers on its own
        return weights, None, record
    return start, weights, record


def answer_gold(cfg: Any, model_path: Any, items: list[Any], adapter_dir: Path | None,
                budget: int) -> list[dict[str, Any]]:
    """The student's answers to the gold questions, with the pipeline's gold token budget."""
    from kdflow.student.device import plan_device
    from kdflow.student.generate import answer_questions

    answers = answer_questions(cfg, model_path, [i.question for i in items], adapter_dir=adapter_dir,
                               plan=plan_device(cfg, "answer"), max_new_tokens=[budget] * len(items))
    return [{"question_id": i.as_question().id, "topic": i.topic, "split": "gold",
             "question": i.question, "answer": a.text}
            for i, a in zip(items, answers, strict=True)]


def score(cfg: Any, rows: list[dict[str, Any]], items: list[Any]) -> dict[str, dict[str, float | None]]:
    from kdflow.evaluation.metrics import score_gold_answers
    from kdflow.llm.cache import UsageLedger

    scored = score_gold_answers(cfg.evaluation, rows, items, store=None, ledger=UsageLedger(),
                                cycle=0, stage="finetuned")
    return {s.question_id: s.scores for s in scored}


def _answers_side_by_side(base_rows: list[dict[str, Any]], base: dict[str, dict], after_rows: list[dict[str, Any]],
                          after: dict[str, dict], metric: str) -> list[dict[str, Any]]:
    """Each gold question with the base and the trained answer and their lead-metric scores, so a
    verdict can be read answer by answer."""
    return [{"question_id": b["question_id"], "question": b["question"], "base": b["answer"],
             "after": a["answer"], metric: [base[b["question_id"]].get(metric), after[a["question_id"]].get(metric)]}
            for b, a in zip(base_rows, after_rows, strict=True)]


def answer_movement(answers: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """How many gold items a recipe gained or lost on the lead metric, and how long the answers got:
    a mean delta near the noise reads differently when it is eight items up and two down, and when the
    answers grew by a third (longer answers state more key terms by chance)."""
    moved = [(row[metric][0], row[metric][1]) for row in answers if None not in row[metric]]
    return {"gained": sum(after > before for before, after in moved),
            "lost": sum(after < before for before, after in moved),
            "mean_words": [round(sum(len(row[side].split()) for row in answers) / max(len(answers), 1), 1)
                           for side in ("base", "after")]}


def pooled_over_seeds(docs: dict[str, dict[str, Any]], recipe: str, seed: int = 0) -> dict[str, Any]:
    """One recipe trained under several seeds (one bench JSON each, by label), judged as one: each gold
    question's lead-metric score after training, averaged over the seeds, paired with the base model's.
    Which facts a small student brings out depends on the LoRA initialisation and the data order (two
    seeds of ``kb-r64-all`` gained 15 and 10 items, one in common), so one seed's verdict is partly a
    lottery; the mean over seeds estimates the recipe's expected gain with that lottery averaged out."""
    from kdflow.evaluation.stats import paired_comparison

    lead = {label: next(iter(doc["base_means"])) for label, doc in docs.items()}
    if len(set(lead.values())) != 1:
        raise ValueError(f"the bench files lead with different metrics: {lead}")
    metric = next(iter(lead.values()))
    scores = {}
    for label, doc in docs.items():
        if recipe not in doc["recipes"]:
            raise ValueError(f"{label} has no recipe {recipe!r} (it has {sorted(doc['recipes'])})")
        scores[label] = {row["question_id"]: row[metric] for row in doc["recipes"][recipe]["answers"]}
    first = next(iter(scores.values()))
    base = {qid: pair[0] for qid, pair in first.items()}
    for label, by_question in scores.items():
        if {qid: pair[0] for qid, pair in by_question.items()} != base:
            raise ValueError(f"{label}'s base model scores differ from the others': not the same gold set and base")
    after = {qid: sum(by_question[qid][1] for by_question in scores.values()) / len(scores) for qid in base}
    gained = {label: {qid for qid, (b, a) in by_question.items() if a > b} for label, by_question in scores.items()}
    return {"recipe": recipe, "metric": metric, "seeds": list(docs),
            "per_seed": {label: doc["recipes"][recipe]["comparison"][metric] for label, doc in docs.items()},
            "pooled": paired_comparison(base, after, seed=seed),
            "gained_under_every_seed": sorted(set.intersection(*gained.values())),
            "gained_under_any_seed": len(set.union(*gained.values()))}


def compare(base: dict[str, dict], after: dict[str, dict], metrics: list[str], seed: int) -> dict[str, Any]:
    from kdflow.evaluation.stats import paired_comparison

    return {m: paired_comparison({q: s.get(m) for q, s in base.items()},
                                 {q: s.get(m) for q, s in after.items()}, seed=seed)
            for m in metrics}


# Hand-written rewordings of gold questions (same question, other words): what decontamination must catch.
REWORDINGS = {
    "pods-01": "What interface lets the kubelet tell the container runtime to create a Pod's sandbox and containers?",
    "pods-10": "What HTTP status codes count as success for an httpGet probe?",
    "pods-19": "What value of unhealthyPodEvictionPolicy allows unhealthy running Pods to be evicted even if the PDB "
               "is not met?",
    "services-04": "What flag of the API server defines the range of virtual IPs assigned to ClusterIP Services?",
    "services-13": "In IPVS mode, which scheduling algorithm does kube-proxy use by default?",
    "services-22": "What Gateway API version matched Kubernetes 1.28 and how mature were its core resources?",
    "storage-07": "To use a raw block volume, which container field replaces volumeMounts?",
    "storage-16": "What name does the PVC of a generic ephemeral volume get?",
}


def contamination(store_url: str, run_id: str, top: int = 12) -> dict[str, Any]:
    """How close do the teacher's training questions of a run come to the gold questions? The
    distribution of each question's highest MiniLM cosine to any gold question, and the closest
    pairs to read by eye: what ``evaluation.decontamination_similarity`` is chosen from."""
    import numpy as np

    from kdflow.embeddings import embed
    from kdflow.gold import BUILTIN_GOLD, load_gold
    from kdflow.pipeline.context import RunContext

    ctx = RunContext.create(run_id, {"store": {"url": store_url}})
    cycles = sorted(int(n.split(".")[0].removeprefix("cycle_")) for n in ctx.store.manifest(run_id)
                    if n.endswith(".questions"))
    questions = [row["question"] for n in cycles for row in ctx.rows(ctx.checkpoint(n, "questions.jsonl"))]
    items = {item.id: item.question for item in load_gold(BUILTIN_GOLD).items}
    gold = list(items.values())
    rewordings = {gid: round(float(a @ b), 3) for gid, a, b in zip(
        REWORDINGS, embed(list(REWORDINGS.values())), embed([items[g] for g in REWORDINGS]), strict=True)}
    similarity = embed(questions) @ embed(gold).T
    best, closest = similarity.max(axis=1), similarity.argmax(axis=1)
    quantiles = {q: round(float(np.quantile(best, q)), 3) for q in (0.5, 0.9, 0.99, 1.0)}
    pairs = [{"cosine": round(float(best[i]), 3), "training": questions[i], "gold": gold[closest[i]]}
             for i in np.argsort(-best)[:top]]
    return {"questions": len(questions), "max_cosine_quantiles": quantiles, "closest_pairs": pairs,
            "at_or_above": {t: int((best >= t).sum()) for t in (0.6, 0.7, 0.8, 0.9)}, "rewordings_of_gold": rewordings}


def teachable(store_url: str, run_id: str, cycle: int | None = None) -> dict[str, Any]:
    """How many gold items could a run's training data teach at all? Items whose cited passage a
    training pair also cites, and of those, items whose every key fact a training reference states."""
    from kdflow.gold import BUILTIN_GOLD, load_gold, normalise_words

    _ctx, last, rows, cites = _run_dataset(store_url, run_id, cycle)
    references: dict[str, list[str]] = {}
    for pair in rows:
        for pid in cites.get(pair["question_id"], []):
            references.setdefault(pid, []).append(f" {normalise_words(pair['completion'])} ")
    gold = load_gold(BUILTIN_GOLD).items
    covered = [g for g in gold if any(pid in references for pid in g.passage_ids)]

    def stated(item: Any, fact: list[str]) -> bool:
        return any(f" {normalise_words(form)} " in ref for pid in item.passage_ids
                   for ref in references.get(pid, []) for form in fact)

    taught = [g.id for g in covered if all(stated(g, fact) for fact in g.key_facts)]
    return {"cycle": last, "passages_cited": len(references), "gold_items": len(gold),
            "gold_passage_cited": len(covered), "gold_facts_in_training_references": len(taught), "items": taught}


def _training_time(record: dict[str, Any]) -> str:
    if record["train_s"] is None:
        return "none (the run's own adapter)"
    return "reused" if record.get("reused") else f"{record['train_s']:.0f} s"


def main(argv: list[str] | None = None) -> int:
    from kdflow.config import deep_merge, load_config, set_overrides
    from kdflow.gold import validated_gold
    from kdflow.student.models import resolve_student

    parser = argparse.ArgumentParser(prog="python -m kdflow.bench.learning", description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="the finished run's store (not needed for kb- recipes)")
    parser.add_argument("--run-id")
    parser.add_argument("--cycle", type=int, default=None,
                        help="the training dataset of this cycle (default: the last)")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--adapters", type=Path, default=None,
                        help="keep each recipe's adapter in ADAPTERS/<recipe> and reuse it when it is there already")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any config value, e.g. evaluation.gold_path=my-gold.jsonl")
    parser.add_argument("--contamination", action="store_true",
                        help="only measure how close the run's questions come to gold")
    parser.add_argument("--teachable", action="store_true",
                        help="only count the gold items the run's training data could teach")
    parser.add_argument("--pool", nargs="+", type=Path, metavar="BENCH_JSON",
                        help="only judge --recipes (one) over the seeds of these bench files, trained nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.pool:
        if "," in args.recipes:
            parser.error("--pool judges one recipe over its seeds: name it with --recipes")
        report = pooled_over_seeds({path.stem: json.loads(path.read_text()) for path in args.pool}, args.recipes)
        args.out.write_text(json.dumps(report, indent=2))
        lead = report["pooled"]
        print(f"{args.recipes} over {len(args.pool)} seeds: {report['metric']} {lead['before_mean']:.3f} -> "
              f"{lead['after_mean']:.3f} (delta {lead['mean_delta']:+.3f} [{lead['ci_low']:+.3f}, "
              f"{lead['ci_high']:+.3f}], MDE {lead['mde']:.3f}, {lead['verdict']}); items up under every seed: "
              f"{len(report['gained_under_every_seed'])} of {report['gained_under_any_seed']} up under any")
        return 0
    if args.contamination or args.teachable:
        report = (contamination(args.store, args.run_id) if args.contamination
                  else teachable(args.store, args.run_id, args.cycle))
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return 0
    config = load_config(deep_merge({"student": {"torch_threads": args.threads}}, set_overrides(args.set)), environ={})
    items = validated_gold(config).items
    model_path = resolve_student(config.student.model)
    recipes = args.recipes.split(",")
    needs_run = any(RECIPES[name][1] in RUN_SOURCES for name in recipes)
    if needs_run and not (args.store and args.run_id):
        parser.error("--store and --run-id are required for recipes that train on a run's teacher pairs")
    pairs, cited = run_pairs(args.store, args.run_id, args.cycle) if needs_run else ([], [])
    metrics = list(config.evaluation.gold_metrics)
    started = time.monotonic()
    budget = config.evaluation.gold_max_new_tokens
    base_rows = answer_gold(config.student, model_path, items, None, budget)
    base = score(config, base_rows, items)
    doc: dict[str, Any] = {"run": args.run_id, "cycle": args.cycle, "seed": config.seed, "threads": args.threads,
                           "pairs": len(pairs),
                           "cited_passages": len(cited), "gold_items": len(items),
                           "base_means": {m: sum(s[m] for s in base.values()) / len(base) for m in metrics},
                           "base_answer_s": round(time.monotonic() - started, 1), "recipes": {}}
    print(f"base model: {doc['base_means']} ({len(pairs)} teacher pairs, {len(cited)} cited passages)", flush=True)
    for name in recipes:
        overrides, source = RECIPES[name]
        cfg = config.student.model_copy(update=overrides)
        stages = recipe_stages(config, source, pairs, cited)
        data = [pair for stage in stages for pair in stage]
        t0 = time.monotonic()

        if source == "run-adapter":
            start, adapter = model_path, fetch_run_adapter(args.store, args.run_id, args.cycle,
                                                           scratch_folder("kdflow-run-") / "adapter")
            record = {"stage_losses": [[None, None]], "train_s": None}
        else:
            start, adapter, record = recipe_student(name, config, model_path, stages, args.adapters)
        losses, train_s = record["stage_losses"], record["train_s"]
        after_rows = answer_gold(cfg, start, items, adapter, budget)
        after = score(config, after_rows, items)
        comparison = compare(base, after, metrics, config.seed)
        side_by_side = _answers_side_by_side(base_rows, base, after_rows, after, metrics[0])
        movement = answer_movement(side_by_side, metrics[0])
        doc["recipes"][name] = {"overrides": overrides, "data": source, "starts_from": STARTS_FROM.get(name),
                                "pairs": len(data),
                                "stages": [len(stage) for stage in stages], "stage_losses": losses,
                                "answers": side_by_side, "movement": movement,
                                "loss": [losses[0][0], losses[-1][1]], "train_s": train_s,
                                "reused_adapter": record.get("reused"),
                                "total_s": round(time.monotonic() - t0, 1), "comparison": comparison}
        lead = comparison[metrics[0]]
        loss = "the run's own" if losses[0][0] is None else f"{losses[0][0]:.2f} -> {losses[-1][1]:.2f}"
        print(f"{name}: {len(data)} pairs, loss {loss}, "
              f"{metrics[0]} {lead['before_mean']:.3f} -> {lead['after_mean']:.3f} (delta {lead['mean_delta']:+.3f} "
              f"[{lead['ci_low']:+.3f}, {lead['ci_high']:+.3f}], {lead['verdict']}; {movement['gained']} items up, "
              f"{movement['lost']} down, answers {movement['mean_words'][0]} -> {movement['mean_words'][1]} words), "
              f"train {_training_time(record)}", flush=True)
        args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
