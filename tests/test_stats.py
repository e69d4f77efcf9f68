"""nml_jax.stats against statistics computed by hand.

With n = 3 seeds (2 degrees of freedom) the t distribution has a closed form, F(t) = 1/2 + t / (2 sqrt(t^2 + 2)):
the two-sided p-value is 1 - |t| / sqrt(t^2 + 2) and the two-sided quantile at level L is L sqrt(2 / (1 - L^2)).
Every literal below was computed from those formulas, not with scipy.
"""

import math

import pytest

from nml_jax import stats

T95_DF2 = 4.302652729749464  # t_{0.975, 2} = 0.95 * sqrt(2 / 0.0975), exact to 16 digits.


def _t_df2(level):
    """Two-sided t quantile with 2 degrees of freedom at `level`, in closed form."""
    return level * math.sqrt(2.0 / (1.0 - level * level))


def test_one_number_per_seed_from_noise_levels():
    values = {(0.0, 0): 10.0, (0.1, 0): 12.0, (0.2, 0): 7.0, (0.0, 1): 5.0, (0.1, 1): 6.0}
    # Seed 0: mean(12 - 10, 7 - 10) = -0.5; seed 1 lacks noise 0.2, so it is left out.
    assert stats.noise_effect_per_seed(values, [0.1, 0.2]) == {0: -0.5}
    assert stats.noise_effect_per_seed(values, [0.1]) == {0: 2.0, 1: 1.0}
    assert stats.noise_effect_per_seed(values, []) == {}


def test_one_number_per_seed_from_paired_methods():
    a = {(0.0, 0): 3.0, (0.1, 0): 5.0, (0.0, 1): 1.0}
    b = {(0.0, 0): 1.0, (0.1, 0): 1.0, (0.0, 1): 2.0, (0.2, 1): 9.0}
    assert stats.paired_per_seed(a, b) == {0: 3.0, 1: -1.0}


def test_t_interval_and_p_value_by_hand():
    values = [1.00, 1.05, 0.95]  # mean 1, s 0.05, se 0.05 / sqrt(3)
    se = 0.028867513459481315
    lo, hi = stats.t_interval(values)
    assert lo == pytest.approx(1.0 - T95_DF2 * se, rel=1e-12)
    assert (lo, hi) == pytest.approx((0.8757931144124833, 1.1242068855875167), rel=1e-9)
    assert stats.t_p_value(values) == pytest.approx(0.0008322931113192711, rel=1e-9)
    # n = 5, df = 4: t_{0.975, 4} = 2.7764451051977987; mean 3, s = sqrt(2.5).
    lo, hi = stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert (lo, hi) == pytest.approx((3.0 - half, 3.0 + half), rel=1e-12)
    # Identical values: no spread, p = 0 unless the mean is 0.
    assert stats.t_p_value([2.0, 2.0, 2.0]) == 0.0 and stats.t_p_value([0.0, 0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        stats.t_interval([1.0])
    with pytest.raises(ValueError, match="finite"):
        stats.t_p_value([1.0, float("nan"), 2.0])


def test_holm_adjusted_p_and_levels_by_hand():
    p = [0.01, 0.04, 0.03]
    # Sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04).
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06])
    # Thresholds 0.05/3 (0.01 passes), 0.05/2 (0.03 fails: Holm stops at rank 2).
    assert stats.holm_levels(p) == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 2, 1 - 0.05 / 2])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm_levels([0.001, 0.002]) == pytest.approx([1 - 0.05 / 2, 1 - 0.05 / 1])


def test_inconclusive_when_one_seed_carries_the_mean():
    """[+2.0, +0.2, +0.1]: mean 0.77, t = 1.24 on 2 df (the old rule, over 15 pairs, said 'supported')."""
    v = stats.judge({"claim": [2.0, 0.2, 0.1]})["claim"]
    assert v.verdict == stats.INCONCLUSIVE and v.n == 3
    assert v.estimate == pytest.approx(0.7666666666666667)
    assert v.ci95 == pytest.approx((-1.8895414568510662, 3.4228747901843994), rel=1e-9)
    assert v.p == pytest.approx(0.34015839286836613, rel=1e-9)


def test_consistent_seeds_supported_after_holm_over_eight_claims():
    family = {"strong": [1.00, 1.05, 0.95]}
    family.update({f"noise{i}": [1.0, -1.0, 0.5 + 0.1 * i] for i in range(7)})
    verdicts = stats.judge(family)
    v = verdicts["strong"]
    assert v.verdict == stats.SUPPORTED
    assert v.p_holm == pytest.approx(
        8 * 0.0008322931113192711, rel=1e-9
    )  # Smallest p, times m = 8.
    assert v.level == pytest.approx(1 - 0.05 / 8)
    half = _t_df2(1 - 0.05 / 8) * 0.028867513459481315  # t = 12.58974056119185
    assert v.ci_holm == pytest.approx((1.0 - half, 1.0 + half), rel=1e-8)
    assert v.ci_holm == pytest.approx((0.6365654948984165, 1.3634345051015835), rel=1e-8)
    assert all(verdicts[k].verdict == stats.INCONCLUSIVE for k in family if k != "strong")
    flipped = stats.judge({"down": [-1.00, -1.05, -0.95]})["down"]
    assert flipped.verdict == stats.CONTRADICTED and flipped.ci_holm[1] < 0


def test_holm_correction_changes_a_verdict():
    """[2, 3, 4] has p = 0.0351: supported alone, inconclusive beside [1, 2, 3] (p = 0.0742)."""
    alone = stats.judge({"a": [2.0, 3.0, 4.0]})["a"]
    assert alone.verdict == stats.SUPPORTED
    assert alone.p == pytest.approx(0.03509871864598468, rel=1e-9)
    both = stats.judge({"a": [2.0, 3.0, 4.0], "c": [1.0, 2.0, 3.0]})
    assert both["a"].verdict == both["c"].verdict == stats.INCONCLUSIVE
    assert both["a"].p_holm == pytest.approx(2 * 0.03509871864598468, rel=1e-9)
    assert both["c"].p_holm == pytest.approx(0.07417990022744858, rel=1e-9)
    # Its uncorrected 95% interval excludes 0, its Holm interval (level 1 - 0.05/2) does not.
    assert both["a"].ci95[0] == pytest.approx(0.5158622882496693, rel=1e-9)
    assert both["a"].ci_holm == pytest.approx((-0.582658654962076, 6.582658654962076), rel=1e-8)


def test_interval_agrees_with_the_holm_step_down():
    """p = 0.0310 then 0.0351: the first fails 0.05/2, so Holm stops and the second is not rejected although
    0.0351 < 0.05/1; its interval is therefore at the failed step's level 0.975 and contains 0."""
    verdicts = stats.judge({"x": [2.2, 3.2, 4.2], "a": [2.0, 3.0, 4.0]})
    assert verdicts["x"].p == pytest.approx(0.031044218953479863, rel=1e-9)
    for v in verdicts.values():
        assert v.verdict == stats.INCONCLUSIVE
        assert v.level == pytest.approx(0.975)
        assert v.ci_holm[0] < 0 < v.ci_holm[1]
        assert v.ci95[0] > 0
    assert verdicts["a"].p_holm == pytest.approx(verdicts["x"].p_holm)


def test_too_few_seeds_stay_out_of_the_family():
    verdicts = stats.judge({"one": [0.5], "two": [1.0, 1.2], "three": [2.0, 3.0, 4.0]})
    assert verdicts["one"].verdict == verdicts["two"].verdict == stats.TOO_FEW_SEEDS
    assert verdicts["one"].ci95 is None and verdicts["one"].estimate == 0.5
    assert verdicts["two"].ci95 is not None and verdicts["two"].p_holm is None
    assert verdicts["three"].verdict == stats.SUPPORTED  # m = 1: no correction.
    assert stats.judge({"none": []})["none"].estimate is None
