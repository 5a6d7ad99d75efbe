"""Aggregates and comparisons on hand-made score files (numbers checked by hand)."""

from __future__ import annotations

import json

import pytest

from kdflow.evaluation.aggregate import aggregate, compare_all, compare_cycle, select
from kdflow.records import ScoreRow


def row(qid, topic, split, stage, cycle, rel, rouge=None, fail=None):
    scores = {"answer_relevancy": rel, "rouge_l": rouge if rouge is not None else (rel / 2 if rel is not None else 0.0)}
    failures = {"answer_relevancy": fail} if rel is None else {}
    return ScoreRow(question_id=qid, topic=topic, split=split, stage=stage, cycle=cycle,
                    scores=scores, failures=failures)


def cycle_rows(cycle: int, base: list, fine: list, held_base: list, held_fine: list) -> list[ScoreRow]:
    topics = ["pods", "services", "storage"]
    rows = []
    for stage, train, held in (("baseline", base, held_base), ("finetuned", fine, held_fine)):
        rows += [row(f"c{cycle}q{i}", topics[i % 3], "train", stage, cycle, v, fail="judge reply not JSON")
                 for i, v in enumerate(train)]
        rows += [row(f"h{i}", topics[i % 3], "held_out", stage, cycle, v, fail="judge reply not JSON")
                 for i, v in enumerate(held)]
    return rows


@pytest.fixture()
def score_file(tmp_path):
    """Two cycles written as JSONL like the store holds them, and read back."""
    rows = cycle_rows(1, [0.2, 0.4, None], [0.5, 0.3, 0.8], [0.2, 0.4, 0.6], [0.3, 0.5, 0.6])
    rows += cycle_rows(2, [0.4, 0.6, 0.5], [0.7, 0.9, 0.8], [0.3, 0.5, 0.6], [0.6, 0.7, 0.5])
    path = tmp_path / "scores.jsonl"
    path.write_text("\n".join(r.model_dump_json() for r in rows))
    return [ScoreRow.model_validate(json.loads(line)) for line in path.read_text().splitlines()]


def test_aggregate_means_medians_counts_and_failures(score_file):
    agg = aggregate([r for r in score_file if r.cycle == 1])
    base = agg["by_split_stage"]["train"]["baseline"]["answer_relevancy"]
    assert base["mean"] == pytest.approx(0.3)  # (0.2 + 0.4) / 2, the failed row excluded
    assert base["median"] == pytest.approx(0.3)
    assert (base["count"], base["failures"]) == (2, 1)
    fine = agg["by_split_stage"]["train"]["finetuned"]["answer_relevancy"]
    assert fine["mean"] == pytest.approx(1.6 / 3) and fine["median"] == pytest.approx(0.5) and fine["failures"] == 0
    topic = agg["by_topic"]["held_out"]["finetuned"]["storage"]["answer_relevancy"]
    assert topic == {"mean": pytest.approx(0.6), "median": pytest.approx(0.6), "count": 1, "failures": 0}
    assert agg["by_split_stage"]["train"]["baseline"]["rouge_l"]["count"] == 3  # rouge of the failed row still counts


def test_compare_cycle_improvements_success_rates_and_training(score_file):
    rows = [r for r in score_file if r.cycle == 1]
    training = {"losses": [2.0, 1.5, 1.2], "wall_s": 12.5, "steps": 3, "tokens_per_s": 100.0}
    comp = compare_cycle(select(rows, stage="baseline"), select(rows, stage="finetuned"), training=training,
                         success_threshold=0.5)
    assert comp["cycle"] == 1
    train = comp["splits"]["train"]["answer_relevancy"]
    assert train["abs_improvement"] == pytest.approx(1.6 / 3 - 0.3)
    # paired on q0 and q1 only (q2's baseline failed): deltas +0.3 and -0.1
    assert train["mean_delta"] == pytest.approx(0.1) and train["verdict"] == "no detectable change"
    assert train["rel_improvement_pct"] == pytest.approx((1.6 / 3 - 0.3) / 0.3 * 100)
    assert train["paired"] == 2 and train["improved_share"] == pytest.approx(0.5)  # q0 up, q1 down, q2 unpaired
    assert train["finetuned_above_threshold_share"] == pytest.approx(2 / 3)
    assert train["baseline_above_threshold_share"] == pytest.approx(0.0)
    held = comp["splits"]["held_out"]["answer_relevancy"]
    assert held["baseline_mean"] == pytest.approx(0.4) and held["finetuned_mean"] == pytest.approx(1.4 / 3)
    assert held["improved_share"] == pytest.approx(2 / 3)  # 0.6 -> 0.6 is not an improvement
    assert comp["training"] == {"wall_s": 12.5, "final_loss": 1.2, "losses": [2.0, 1.5, 1.2], "steps": 3,
                                "tokens_per_s": 100.0}


def test_compare_cycle_rejects_mixed_cycles_and_stages(score_file):
    with pytest.raises(ValueError, match="several cycles"):
        compare_cycle(select(score_file, stage="baseline"), [], training=None, success_threshold=0.5)
    cycle1 = [r for r in score_file if r.cycle == 1]
    with pytest.raises(ValueError, match="wrong stage"):
        compare_cycle(cycle1, [], training=None, success_threshold=0.5)


def test_compare_all_overall_and_held_out_trend(score_file):
    comps = [
        compare_cycle(select(rows, stage="baseline"), select(rows, stage="finetuned"), training=None,
                      success_threshold=0.5)
        for rows in ([r for r in score_file if r.cycle == c] for c in (2, 1))
    ]
    across = compare_all(comps, {c: [r for r in score_file if r.cycle == c] for c in (1, 2)}, resamples=2000)
    assert [t["cycle"] for t in across["table"]
            if t["metric"] == "answer_relevancy" and t["split"] == "train"] == [1, 2]
    overall = across["overall"]["held_out"]["answer_relevancy"]
    # the same held-out questions h0..h2: cycle 1's baseline [0.2, 0.4, 0.6] -> cycle 2's fine-tuned [0.6, 0.7, 0.5]
    assert overall["first_baseline_mean"] == pytest.approx(0.4) and overall["last_finetuned_mean"] == pytest.approx(0.6)
    assert overall["n"] == 3 and overall["mean_delta"] == pytest.approx(0.2)
    assert overall["ci_low"] <= 0.2 <= overall["ci_high"] and overall["verdict"] in ("improved", "no detectable change")
    # cycle 1's and cycle 2's trained questions differ: no unpaired "overall" row for them
    assert "train" not in across["overall"]
    assert across["held_out_trend"]["answer_relevancy"] == [
        {"cycle": 1, "baseline_mean": pytest.approx(0.4), "finetuned_mean": pytest.approx(1.4 / 3)},
        {"cycle": 2, "baseline_mean": pytest.approx(1.4 / 3), "finetuned_mean": pytest.approx(0.6)},
    ]


def test_relative_improvement_from_zero_is_none():
    base = [row("q", "pods", "train", "baseline", 1, 0.0, rouge=0.0)]
    fine = [row("q", "pods", "train", "finetuned", 1, 0.4, rouge=0.2)]
    comp = compare_cycle(base, fine, training=None, success_threshold=0.5)["splits"]["train"]["answer_relevancy"]
    assert comp["abs_improvement"] == pytest.approx(0.4) and comp["rel_improvement_pct"] is None
    assert comp["improved_share"] == 1.0


def test_each_split_is_compared_on_its_own_metrics():
    """Gold rows carry key_fact_recall; the trained questions' comparison must not list it."""
    base = [row("q", "pods", "train", "baseline", 1, 0.2)]
    fine = [row("q", "pods", "train", "finetuned", 1, 0.4)]
    gold = [ScoreRow(question_id="gold-1", topic="pods", split="gold", stage=stage, cycle=1,
                     scores={"key_fact_recall": 0.5})
            for stage in ("baseline", "finetuned")]
    comp = compare_cycle([*base, gold[0]], [*fine, gold[1]], training=None, success_threshold=0.5)
    assert set(comp["splits"]) == {"train"} and set(comp["splits"]["train"]) == {"answer_relevancy", "rouge_l"}
    agg = aggregate([*base, *gold])["by_split_stage"]
    assert set(agg["train"]["baseline"]) == {"answer_relevancy",
                                             "rouge_l"} and set(agg["gold"]["baseline"]) == {"key_fact_recall"}
