"""Paired before/after statistics: does a change exceed its noise?

Every before/after the report shows compares the SAME questions at two models, so the unit of
evidence is the per-question delta. For each comparison:

* ``mean_delta`` with a seeded 95 % bootstrap confidence interval (scipy.stats.bootstrap, 10,000
  resamples of the deltas by default);
* the Wilcoxon signed-rank p-value (scipy.stats.wilcoxon), which does not assume normal deltas;
* the minimum detectable effect at this n: the true mean delta a two-sided 5 % test would find
  80 % of the time, from the measured spread of the deltas, ``(z_0.975 + z_0.8) * sd / sqrt(n)``;
* a verdict: ``improved`` only when the interval's lower bound is above 0, ``regressed`` when its
  upper bound is below 0, else ``no detectable change``.

A mean over different questions (cycle 1's vs cycle 2's) is not paired and never gets a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

Verdict = Literal["improved", "regressed", "no detectable change", "not enough data"]
IMPROVED: Verdict = "improved"
REGRESSED: Verdict = "regressed"
NO_CHANGE: Verdict = "no detectable change"
TOO_FEW: Verdict = "not enough data"
MIN_PAIRS = 2  # a single pair has no spread: no interval, no test
DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
POWER = 0.8


def verdict_of(low: float | None, high: float | None) -> Verdict:
    """The verdict an interval supports (see module docstring)."""
    if low is None or high is None:
        return TOO_FEW
    if low > 0:
        return IMPROVED
    if high < 0:
        return REGRESSED
    return NO_CHANGE


def paired_values(before: Mapping[str, float | None],
                  after: Mapping[str, float | None]) -> list[tuple[str, float, float]]:
    """``(id, before, after)`` for every id scored on both sides (a failed score, None, pairs with nothing)."""
    return [(k, float(b), float(a)) for k, b in before.items() if b is not None and (a := after.get(k)) is not None]


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeded: the same data give the
    same interval in every process). Identical values have a zero-width interval."""
    import numpy as np
    from scipy import stats

    data = np.asarray(values, dtype=float)
    if np.ptp(data) == 0:
        return float(data[0]), float(data[0])
    result = stats.bootstrap((data,), np.mean, n_resamples=resamples, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def wilcoxon_p(deltas: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value; 1.0 when every delta is 0 (nothing moved)."""
    from scipy import stats

    if len(deltas) < MIN_PAIRS:
        return None
    if all(d == 0 for d in deltas):
        return 1.0
    # The exact distribution for small n without ties or zeros; else the normal approximation
    # (scipy would run a slow permutation test for ties, seconds per call at n = 72).
    magnitudes = [abs(d) for d in deltas]
    exact = len(deltas) <= 50 and 0 not in magnitudes and len(set(magnitudes)) == len(magnitudes)
    return float(stats.wilcoxon(deltas, zero_method="zsplit", method="exact" if exact else "approx").pvalue)


def minimum_detectable_effect(deltas: Sequence[float], *, confidence: float = DEFAULT_CONFIDENCE,
                              power: float = POWER) -> float | None:
    """Smallest true mean delta detectable at this n with the given two-sided confidence and power."""
    from scipy import stats

    n = len(deltas)
    if n < MIN_PAIRS:
        return None
    mean = math.fsum(deltas) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in deltas) / (n - 1))
    z = stats.norm.ppf(1 - (1 - confidence) / 2) + stats.norm.ppf(power)
    return float(z * sd / math.sqrt(n))


def paired_comparison(
    before: Mapping[str, float | None],
    after: Mapping[str, float | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two score maps (question id -> score) on the ids both scored.

    Returns ``{"n", "before_mean", "after_mean", "mean_delta", "ci_low", "ci_high", "confidence",
    "resamples", "p_value", "mde", "verdict"}``; numbers are None when fewer than 2 pairs exist."""
    pairs = paired_values(before, after)
    n = len(pairs)
    out: dict[str, Any] = {"n": n, "confidence": confidence, "resamples": resamples,
                           "before_mean": None, "after_mean": None,
                           "mean_delta": None, "ci_low": None, "ci_high": None, "p_value": None, "mde": None}
    if n:
        out["before_mean"] = math.fsum(b for _, b, _ in pairs) / n
        out["after_mean"] = math.fsum(a for _, _, a in pairs) / n
        out["mean_delta"] = out["after_mean"] - out["before_mean"]
    if n >= MIN_PAIRS:
        deltas = [a - b for _, b, a in pairs]
        out["ci_low"], out["ci_high"] = bootstrap_interval(deltas, resamples=resamples,
                                                           confidence=confidence, seed=seed)
        out["p_value"] = wilcoxon_p(deltas)
        out["mde"] = minimum_detectable_effect(deltas, confidence=confidence)
    out["verdict"] = verdict_of(out["ci_low"], out["ci_high"])
    return out


def gap_closed(
    start: Mapping[str, float | None],
    end: Mapping[str, float | None],
    ceiling: Mapping[str, float | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Share of the gap between the start model and the ceiling (the teacher's open-book score)
    that the end model closed: ``(mean(end) - mean(start)) / (mean(ceiling) - mean(start))`` over
    questions scored at all three, with a paired bootstrap interval (questions resampled together).
    None when there is no gap to close (the ceiling is not above the start)."""
    import numpy as np
    from scipy import stats

    ids = [k for k, v in start.items() if v is not None and end.get(k) is not None and ceiling.get(k) is not None]
    out: dict[str, Any] = {"n": len(ids), "share": None, "ci_low": None, "ci_high": None, "start_mean": None,
                           "end_mean": None, "ceiling_mean": None, "confidence": confidence}
    if not ids:
        return out
    s, e, c = (np.array([float(m[k]) for k in ids]) for m in (start, end, ceiling))
    out.update(start_mean=float(s.mean()), end_mean=float(e.mean()), ceiling_mean=float(c.mean()))

    def share(s_: np.ndarray, e_: np.ndarray, c_: np.ndarray, axis: int = -1) -> np.ndarray:
        gap = c_.mean(axis=axis) - s_.mean(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap > 0, (e_.mean(axis=axis) - s_.mean(axis=axis)) / gap, np.nan)

    point = float(share(s, e, c))
    if math.isnan(point):
        return out
    out["share"] = point
    if len(ids) >= MIN_PAIRS:
        result = stats.bootstrap((s, e, c), share, paired=True, vectorized=True, n_resamples=resamples,
                                 confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        out["ci_low"], out["ci_high"] = (None if math.isnan(low) else low), (None if math.isnan(high) else high)
    return out
