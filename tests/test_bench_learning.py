"""The learning bench's knowledge-base recipes build their training data from the knowledge base
alone (kdflow.bench.learning): the same words as the passages, cut as the recipe says, and never a
gold question."""

from __future__ import annotations

import pytest

from kdflow.bench.learning import (
    RECIPES,
    RUN_SOURCES,
    answer_movement,
    cued_sentence_pairs,
    lead_and_passage_pairs,
    passage_pairs,
    recipe_stages,
    trained_adapter,
)
from kdflow.config import load_config
from kdflow.gold import BUILTIN_GOLD, load_gold


def _words(pairs: list[tuple[str, str]]) -> list[str]:
    return " ".join(answer for _, answer in pairs).split()


def test_sentence_and_cued_recipes_train_on_exactly_the_passages_words():
    config = load_config({}, environ={})
    passages = passage_pairs(config)
    sentences = passage_pairs(config, form="sentences")
    cued = cued_sentence_pairs(config)
    assert len(passages) == 202 and len(sentences) == len(cued) > len(passages)
    assert _words(sentences) == _words(cued) == _words(passages)  # the same text, only cut and asked differently
    assert [a for _, a in cued] == [a for _, a in sentences]
    assert {RECIPES[name][1] for name in ("kb-sentences-r64-all", "kb-cued-r64-all")} == {"kb-sentences", "kb-cued"}


def test_a_cued_question_names_words_of_its_own_answer_and_no_gold_question_is_trained():
    config = load_config({}, environ={})
    cued = cued_sentence_pairs(config)
    gold = {item.question for item in load_gold(BUILTIN_GOLD).items}
    assert not gold & {question for question, _ in cued}
    for question, answer in cued:
        section, _, cues = question.removesuffix("?").partition(": ")
        assert section.startswith("What does the Kubernetes v1.28 documentation say about ")
        words = cues.replace(" and ", ", ").split(", ")
        assert 1 <= len(words) <= 3 and all(word in answer for word in words), (question, answer)
    assert len({question for question, _ in cued}) > 0.9 * len(cued)  # nearly every pair has a cue of its own


def test_the_probe_recipe_trains_each_passage_twice_its_lead_then_the_whole_passage():
    config = load_config({}, environ={})
    passages = passage_pairs(config)
    pairs = lead_and_passage_pairs(config)
    assert len(pairs) == 2 * len(passages) == 404
    for (lead_q, lead), (whole_q, whole), passage in zip(pairs[::2], pairs[1::2], passages, strict=True):
        assert lead_q == whole_q == passage[0] and (whole_q, whole) == passage
        assert whole.startswith(lead) and len(lead) < len(whole) or lead == whole
    assert RECIPES["kb-lead+passage-r64-all"][1] == "kb-lead+passage"


def test_the_mixed_recipes_train_the_runs_pairs_with_every_passage_together_or_after_them():
    config = load_config({}, environ={})
    teacher = [("What is a Pod?", "The smallest deployable unit."), ("What is a Service?", "A stable endpoint.")]
    passages = passage_pairs(config)
    [mixed] = recipe_stages(config, RECIPES["r64-all+kb"][1], teacher, cited=[])
    assert mixed == teacher + passages  # one dataset: the trainer shuffles it
    first, then = recipe_stages(config, RECIPES["kb-then-r64-all"][1], teacher, cited=[])
    assert (first, then) == (passages, teacher)  # passages first, the question-shaped pairs last
    assert {"r64-all+kb", "kb-then-r64-all"} <= {name for name, (_, source) in RECIPES.items() if source in RUN_SOURCES}
    assert recipe_stages(config, "kb", teacher, cited=[]) == [passages]  # a kb recipe never reads the run's pairs


def test_answer_movement_counts_items_up_and_down_and_the_answers_length():
    rows = [{"base": "one two", "after": "one two three four", "key_fact_recall": [0.0, 0.5]},
            {"base": "a b c d", "after": "a b", "key_fact_recall": [1.0, 0.0]},
            {"base": "x y", "after": "x y", "key_fact_recall": [0.5, 0.5]},
            {"base": "p q", "after": "p q r s", "key_fact_recall": [None, 1.0]}]  # unscored: neither up nor down
    assert answer_movement(rows, "key_fact_recall") == {"gained": 1, "lost": 1, "mean_words": [2.5, 3.0]}


def test_a_kept_adapter_is_trained_once_and_reused_until_its_record_is_published(tmp_path):
    """--adapters: an hour of training is not repeated to score the same adapter on another gold set; a
    folder whose training never finished (no record published) is trained again."""
    calls = []

    def train(folder):
        calls.append(folder)
        (folder / "adapter").mkdir()
        return {"stage_losses": [[3.6, 0.3]], "train_s": 12.5}

    adapter, record = trained_adapter(tmp_path, "r64-all+kb", train)
    assert adapter == tmp_path / "r64-all+kb" / "adapter" and record == {"stage_losses": [[3.6, 0.3]], "train_s": 12.5}
    again, reused = trained_adapter(tmp_path, "r64-all+kb", train)
    assert again == adapter and len(calls) == 1
    assert reused["stage_losses"] == [[3.6, 0.3]] and reused["reused"] == str(tmp_path / "r64-all+kb")
    (tmp_path / "kb-r64-all").mkdir()
    (tmp_path / "kb-r64-all" / "training.json.partial").write_text("{}")  # killed before publishing
    trained_adapter(tmp_path, "kb-r64-all", train)
    assert len(calls) == 2 and (tmp_path / "kb-r64-all" / "training.json").is_file()
    _, scratch = trained_adapter(None, "current", lambda folder: {"stage_losses": [[1.0, 0.5]], "train_s": 1.0,
                                                                     "folder": str(folder)})
    assert "kdflow-recipe-current-" in scratch["folder"] and "reused" not in scratch


def test_the_pipeline_recipe_scores_the_runs_own_adapter_and_needs_a_run():
    overrides, source = RECIPES["pipeline"]
    assert overrides == {} and source in RUN_SOURCES
    pairs = [("What is a Pod?", "The smallest deployable unit.")]
    assert recipe_stages(load_config({}, environ={}), source, pairs, []) == [pairs]


def test_the_printed_training_time_tells_trained_reused_and_untrained_adapters_apart():
    from kdflow.bench.learning import _training_time

    assert _training_time({"stage_losses": [[3.6, 0.3]], "train_s": 1650.4}) == "1650 s"
    assert _training_time({"train_s": 1650.4, "reused": "/tmp/eval/adapters/r64-all+kb"}) == "reused"
    assert _training_time({"stage_losses": [[None, None]], "train_s": None}) == "none (the run's own adapter)"


def test_full_fine_tuning_recipes_keep_a_model_folder_and_reuse_it(tmp_path):
    """A fully fine-tuned recipe's weights are a whole model in ``<recipe>/model``, found again from
    its record when the recipe is reused; its training data is the same as its LoRA twin's."""
    from kdflow.bench.learning import FULL_FINETUNE

    assert FULL_FINETUNE <= set(RECIPES)
    assert RECIPES["kb-full"][1] == RECIPES["kb-r64-all"][1]  # the same data as its LoRA twin
    record = {"stage_losses": [[3.6, 0.2]], "weights": "model", "train_s": 30.0}
    weights, _ = trained_adapter(tmp_path, "kb-full", lambda folder: record)
    again, reused = trained_adapter(tmp_path, "kb-full", lambda folder: pytest.fail("trained twice"))
    assert weights == again == tmp_path / "kb-full" / "model" and reused["reused"]


def _bench_doc(after: list[float], base: list[float]) -> dict:
    answers = [{"question_id": f"q{i}", "key_fact_recall": [b, a]}
               for i, (b, a) in enumerate(zip(base, after, strict=True))]
    return {"base_means": {"key_fact_recall": sum(base) / len(base), "rouge_l": 0.3},
            "recipes": {"kb-full": {"answers": answers, "comparison": {"key_fact_recall": {"mean_delta": 0.0}}}}}


def test_a_recipe_is_judged_over_its_seeds_by_the_mean_score_per_question(tmp_path, capsys):
    """Two seeds that each gain on other questions: pooled, every question's after-score is the mean of
    the seeds', paired with the one base score; only the question both gained counts as gained under
    every seed. Files of different bases are refused."""
    import json

    from kdflow.bench.learning import main, pooled_over_seeds

    base = [0.0] * 6
    seed_a = _bench_doc([1.0, 1.0, 0.0, 0.0, 0.5, 0.0], base)
    seed_b = _bench_doc([1.0, 0.0, 1.0, 0.0, 0.0, 0.0], base)
    report = pooled_over_seeds({"a": seed_a, "b": seed_b}, "kb-full")
    assert report["metric"] == "key_fact_recall" and report["seeds"] == ["a", "b"]
    assert report["pooled"]["after_mean"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.25) / 6)
    assert report["pooled"]["n"] == 6 and report["pooled"]["before_mean"] == 0.0
    assert report["gained_under_every_seed"] == ["q0"] and report["gained_under_any_seed"] == 4
    with pytest.raises(ValueError, match="base model scores differ"):
        pooled_over_seeds({"a": seed_a, "c": _bench_doc([0.0] * 6, [0.5] + [0.0] * 5)}, "kb-full")
    with pytest.raises(ValueError, match="no recipe 'kb-r64-all'"):
        pooled_over_seeds({"a": seed_a}, "kb-r64-all")
    files = []
    for name, doc in (("seed-a", seed_a), ("seed-b", seed_b)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(doc))
    assert main(["--pool", *map(str, files), "--recipes", "kb-full", "--out", str(tmp_path / "pooled.json")]) == 0
    assert "kb-full over 2 seeds: key_fact_recall 0.000 -> 0.375" in capsys.readouterr().out
    assert json.loads((tmp_path / "pooled.json").read_text())["seeds"] == ["seed-a", "seed-b"]


def test_the_plain_text_recipe_trains_every_passage_as_a_document_and_only_as_a_full_fine_tuning():
    from kdflow.bench.learning import FULL_FINETUNE

    config = load_config({}, environ={})
    overrides, source = RECIPES["kb-text-full"]
    [documents] = recipe_stages(config, source, [], [])
    passages = passage_pairs(config)
    assert len(documents) == len(passages) == 202 and all(isinstance(d, str) for d in documents)
    assert all(doc.endswith("\n\n" + text) for doc, (_, text) in zip(documents, passages, strict=True))
    assert {name for name, (_, data) in RECIPES.items() if data == "kb-text"} <= FULL_FINETUNE


def test_a_recipe_on_top_of_the_knowledge_base_student_trains_its_adapter_on_that_student(tiny_phi_dir, tmp_path):
    """``kb-text-full+current``: the knowledge base's text first (a fully fine-tuned student, trained
    once and kept), then the pipeline's LoRA profile on the run's pairs, on that student, not on the
    base model; asked again, both are reused."""
    import json

    from fixtures_student import TINY_PAIRS
    from kdflow.bench.learning import STARTS_FROM, recipe_student

    assert STARTS_FROM["kb-text-full+current"] == "kb-text-full" and RECIPES["kb-text-full+current"][1] == "teacher"
    student = {"model": str(tiny_phi_dir), "lora_r": 4, "lora_alpha": 8, "epochs": 3, "learning_rate": 3e-2,
               "max_length": 64, "batch_size": 8, "torch_threads": 1, "target_modules": ["q_proj", "v_proj"]}
    config = load_config({"pipeline": {"topics": ["pods"]}, "student": student}, environ={})
    stages = recipe_stages(config, "teacher", list(TINY_PAIRS), [])
    start, adapter, record = recipe_student("kb-text-full+current", config, tiny_phi_dir, stages, tmp_path)
    assert start == tmp_path / "kb-text-full" / "model" and adapter == tmp_path / "kb-text-full+current" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(start)
    assert json.loads((start / "train_result.json").read_text())["data"] == "documents"
    assert record["stage_losses"][0][1] < record["stage_losses"][0][0]
    again = recipe_student("kb-text-full+current", config, tiny_phi_dir, stages, tmp_path)
    assert again[:2] == (start, adapter) and again[2]["reused"]
