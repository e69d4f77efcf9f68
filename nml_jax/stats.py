"""Statistics behind the report's verdicts: one number per seed, t intervals, Holm's correction.

Seeds are the independent replicates of a study; noise levels and test sets of one seed share its pre-training
draws, so every claim is first reduced to ONE number per seed (`noise_effect_per_seed`, `paired_per_seed`) and
only those n numbers enter the test. With mean d̄, standard deviation s (ddof 1) and se = s / sqrt(n):

    t = d̄ / se,  p = 2 * P(T_{n-1} >= |t|),  interval at level L: d̄ ± t_{(1+L)/2, n-1} * se.

A report tests m claims at once; Holm's step-down procedure keeps the family-wise error rate at alpha
(`holm`), and `holm_levels` gives each claim the interval level that agrees exactly with its Holm decision.
`judge` puts the two together into verdicts. All functions are pure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05  # Family-wise error rate of one report's claims.
MIN_SEEDS = 3  # Fewer seeds: no test (with 2, the 95% t critical value is 12.7).
SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
TOO_FEW_SEEDS = "too few seeds"


def noise_effect_per_seed(
    values: Mapping[tuple[float, int], float], noises: Iterable[float], clean: float = 0.0
) -> dict[int, float]:
    """d_s = mean over n in `noises` of (values[n, s] - values[clean, s]), for every seed s.

    Each noise level is compared with the clean run of the SAME seed, and the |noises| differences of one seed
    are averaged into one number (they share that seed's clean run, so they are not independent). A seed that
    lacks the clean run or any of `noises` is left out, so every d_s averages the same levels.
    """
    noises = sorted(set(noises))
    out = {}
    for seed in sorted({s for _, s in values}) if noises else ():
        if (clean, seed) in values and all((n, seed) in values for n in noises):
            base = values[(clean, seed)]
            out[seed] = float(np.mean([values[(n, seed)] - base for n in noises]))
    return out


def paired_per_seed(
    a: Mapping[tuple[float, int], float], b: Mapping[tuple[float, int], float]
) -> dict[int, float]:
    """d_s = mean over the noise levels n with both a[n, s] and b[n, s] of (a[n, s] - b[n, s]).

    For two methods on the same features: the difference is paired within a run (noise, seed), then the runs
    of one seed are averaged into one number.
    """
    by_seed: dict[int, list[float]] = {}
    for key in sorted(set(a) & set(b)):
        by_seed.setdefault(key[1], []).append(a[key] - b[key])
    return {seed: float(np.mean(d)) for seed, d in sorted(by_seed.items())}


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, s / sqrt(n)) with s the sample standard deviation (ddof 1); needs n >= 2."""
    x = _checked(values, 2)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided interval d̄ ± t_{(1+level)/2, n-1} * se from the t distribution with n - 1 degrees of freedom."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} is not in (0, 1).")
    mean, se = mean_se(values)
    half = float(scipy_stats.t.ppf(0.5 + level / 2, len(values) - 1)) * se
    return mean - half, mean + half


def t_p_value(values: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t test of mean 0: 2 * P(T_{n-1} >= |d̄ / se|).

    Identical values (se = 0) give p = 0 when their mean is not 0 and p = 1 when it is.
    """
    mean, se = mean_se(values)
    if se == 0.0:
        return 0.0 if mean != 0.0 else 1.0
    return float(2.0 * scipy_stats.t.sf(abs(mean / se), len(values) - 1))


def _ranks(p_values: Sequence[float]) -> list[int]:
    """0-based rank of each p-value in ascending order (ties keep their input order)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    ranks = [0] * len(p_values)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in input order.

    With p_(1) <= ... <= p_(m) sorted ascending, p~_(i) = min(1, max_{j <= i} (m - j + 1) * p_(j)).
    Rejecting every hypothesis with p~ < alpha controls the family-wise error rate at alpha.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p_values[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def holm_levels(p_values: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """The confidence level of each hypothesis' interval that agrees with its Holm decision, in input order.

    Holm compares p_(i) with alpha / (m - i + 1) for i = 1, 2, ... and stops at the first rank k where
    p_(k) >= alpha / (m - k + 1) (k = m + 1 if none). Hypothesis i gets the level

        L_i = 1 - alpha / (m - min(i, k) + 1),

    its own Holm threshold while the procedure still rejects, and the threshold of the failed step after.
    Then the t interval at L_i excludes 0 exactly when Holm rejects (p~_i < alpha): for i < k,
    p_(i) < alpha / (m - i + 1); for i >= k, p_(i) >= p_(k) >= alpha / (m - k + 1).
    """
    m = len(p_values)
    ranks = _ranks(p_values)
    ordered = sorted(p_values)
    stop = next((r for r in range(m) if ordered[r] >= alpha / (m - r)), m)
    return [1.0 - alpha / (m - min(rank, stop)) for rank in ranks]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One claim's test. Intervals and p-values are None where they cannot be computed (too few seeds)."""

    verdict: str
    n: int
    estimate: float | None  # Mean of the per-seed numbers.
    ci95: tuple[float, float] | None  # Uncorrected 95% t interval.
    ci_holm: tuple[float, float] | None  # t interval at `level`, agrees with the verdict.
    level: float | None  # holm_levels' level for this claim.
    p: float | None  # Uncorrected two-sided t-test p-value.
    p_holm: float | None  # Holm-adjusted p-value across the claims of the family.


def judge(
    per_seed: Mapping[str, Sequence[float]], alpha: float = ALPHA, min_seeds: int = MIN_SEEDS
) -> dict[str, Verdict]:
    """Verdicts for a family of claims, each given as its per-seed numbers (positive = the claim's direction).

    A claim with fewer than `min_seeds` numbers is `too few seeds` and stays out of the family. The other m
    claims get t-test p-values, Holm-adjusted across the m; a claim is `supported` (mean > 0) or `contradicted`
    (mean < 0) when its Holm-adjusted p < alpha, and `inconclusive` otherwise. Its `ci_holm` is the t interval
    at `holm_levels`' level, which excludes 0 exactly for the supported and contradicted claims.
    """
    out = {}
    tested = [name for name, v in per_seed.items() if len(v) >= min_seeds]
    p = [t_p_value(per_seed[name]) for name in tested]
    adjusted, levels = holm(p), holm_levels(p, alpha)
    for name, values in per_seed.items():
        n = len(values)
        estimate = float(np.mean(_checked(values, 1))) if n else None
        ci95 = t_interval(values, 0.95) if n >= 2 else None
        if name not in tested:
            out[name] = Verdict(TOO_FEW_SEEDS, n, estimate, ci95, None, None, None, None)
            continue
        i = tested.index(name)
        if adjusted[i] < alpha:
            verdict = SUPPORTED if estimate > 0 else CONTRADICTED
        else:
            verdict = INCONCLUSIVE
        ci_holm = t_interval(values, levels[i])
        out[name] = Verdict(verdict, n, estimate, ci95, ci_holm, levels[i], p[i], adjusted[i])
    return out


def _checked(values: Sequence[float], minimum: int) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < minimum:
        raise ValueError(f"Expected at least {minimum} per-seed values, got {x.size}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"Per-seed values must be finite, got {x.tolist()}.")
    return x
