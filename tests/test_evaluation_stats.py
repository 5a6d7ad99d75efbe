"""Paired statistics on constructed data with a known answer: improved, regressed, no detectable
change; the interval is seeded and uses 10,000 resamples; the MDE and the gap share by hand."""

from __future__ import annotations

import math

import pytest

from kdflow.evaluation.stats import (
    DEFAULT_RESAMPLES,
    gap_closed,
    minimum_detectable_effect,
    paired_comparison,
    verdict_of,
)


def scores(values) -> dict[str, float]:
    return {f"q{i}": v for i, v in enumerate(values)}


BEFORE = scores([0.2 + 0.01 * (i % 7) for i in range(40)])


def test_a_consistent_gain_is_improved():
    after = {k: v + 0.1 + 0.01 * ((i % 5) - 2) for i, (k, v) in enumerate(BEFORE.items())}
    result = paired_comparison(BEFORE, after, seed=3)
    assert result["n"] == 40 and result["mean_delta"] == pytest.approx(0.1)
    assert 0 < result["ci_low"] < 0.1 < result["ci_high"] and result["verdict"] == "improved"
    assert result["p_value"] < 1e-6 and result["resamples"] == DEFAULT_RESAMPLES == 10_000


def test_a_consistent_loss_is_regressed():
    after = {k: v - 0.05 + 0.01 * ((i % 3) - 1) for i, (k, v) in enumerate(BEFORE.items())}
    result = paired_comparison(BEFORE, after)
    assert result["ci_high"] < 0 and result["verdict"] == "regressed"


def test_a_gain_inside_the_noise_is_no_detectable_change():
    """Mean +0.0125 from deltas of both signs and many sizes: the interval spans 0."""
    deltas = [(1 if i % 2 else -1) * (0.1 + 0.05 * (i % 5)) + 0.0125 for i in range(40)]
    after = {k: v + d for (k, v), d in zip(BEFORE.items(), deltas, strict=True)}
    result = paired_comparison(BEFORE, after)
    assert result["mean_delta"] == pytest.approx(0.0125)
    assert result["ci_low"] < 0 < result["ci_high"] and result["verdict"] == "no detectable change"
    assert result["p_value"] > 0.05 and result["mde"] > abs(result["mean_delta"])


def test_the_interval_is_seeded_and_pairs_only_shared_scores():
    after = {k: v + (0.1 if i % 3 else -0.05) for i, (k, v) in enumerate(BEFORE.items())}
    after["q0"] = None  # a failed score pairs with nothing
    after["extra"] = 1.0  # not scored before
    one, two = paired_comparison(BEFORE, after, seed=7), paired_comparison(BEFORE, after, seed=7)
    assert one == two and one["n"] == 39
    other = paired_comparison(BEFORE, after, seed=8)
    assert (other["ci_low"], other["ci_high"]) != (one["ci_low"], one["ci_high"])


def test_too_few_pairs_and_no_change_at_all():
    single = paired_comparison({"a": 0.1}, {"a": 0.9})
    assert single["n"] == 1 and single["mean_delta"] == pytest.approx(0.8) and single["verdict"] == "not enough data"
    same = paired_comparison(BEFORE, dict(BEFORE))
    assert (same["ci_low"], same["ci_high"], same["p_value"], same["verdict"]) == (0.0, 0.0, 1.0,
                                                                                   "no detectable change")


def test_verdict_boundaries():
    assert verdict_of(0.001, 0.2) == "improved" and verdict_of(-0.2, -0.001) == "regressed"
    assert verdict_of(0.0, 0.2) == "no detectable change" and verdict_of(None, None) == "not enough data"


def test_minimum_detectable_effect_by_hand():
    deltas = [0.1, -0.1, 0.2, 0.0]  # mean 0.05, sample sd 0.1291
    sd = math.sqrt(sum((d - 0.05) ** 2 for d in deltas) / 3)
    assert minimum_detectable_effect(deltas) == pytest.approx((1.959964 + 0.841621) * sd / 2, rel=1e-5)


def test_share_of_the_gap_closed():
    start = scores([0.2] * 20)
    end = scores([0.4 + 0.02 * (i % 3 - 1) for i in range(20)])
    ceiling = scores([0.7 + 0.02 * (i % 2) for i in range(20)])
    result = gap_closed(start, end, ceiling)
    assert result["n"] == 20 and result["share"] == pytest.approx((0.4 - 0.2) / (0.71 - 0.2), rel=1e-2)
    assert result["ci_low"] < result["share"] < result["ci_high"]
    # no gap: the start already reaches the ceiling
    assert gap_closed(ceiling, end, start)["share"] is None
