"""Spectrum metrics on matrices whose singular values are known by hand; plots write PNGs."""

import numpy as np
import pytest

from nml_jax import spectrum


def test_sve_lsvr_topk_hand_values():
    s = np.array([3.0, 1.0])
    np.testing.assert_allclose(spectrum.sve(s), -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    np.testing.assert_allclose(spectrum.lsvr(s), -np.log(0.75))
    np.testing.assert_allclose(spectrum.topk_share([1.0, 2.0, 3.0, 4.0], 2), 0.7)
    uniform = np.ones(8)
    np.testing.assert_allclose(spectrum.sve(uniform), np.log(8))
    np.testing.assert_allclose(spectrum.lsvr(uniform), np.log(8))
    # Zero singular values add nothing to the entropy.
    np.testing.assert_allclose(spectrum.sve([2.0, 0.0, 0.0]), 0.0)
    with pytest.raises(ValueError, match="k=3"):
        spectrum.topk_share(s, 3)
    with pytest.raises(ValueError, match="positive sum"):
        spectrum.sve([0.0, 0.0])


def test_preprocess_row_and_column_centering():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(spectrum.preprocess(x, "none"), unit)
    np.testing.assert_allclose(
        spectrum.preprocess(x, "row"), unit - unit.mean(axis=1, keepdims=True)
    )
    np.testing.assert_allclose(spectrum.preprocess(x, "column"), unit - unit.mean(axis=0))
    with pytest.raises(ValueError, match="centering='pca'"):
        spectrum.preprocess(x, "pca")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        spectrum.preprocess(np.ones(3))


def test_orthogonal_rows_have_flat_spectrum_and_rank_one_has_lsvr_zero():
    # Orthogonal rows of norms 3, 2, 1: after row normalisation all singular values are 1.
    diagonal = np.diag([3.0, 2.0, 1.0])
    s = spectrum.singular_values(diagonal, centering="none")
    np.testing.assert_allclose(s, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(spectrum.sve(s), np.log(3))
    # Positive multiples of one non-constant vector: rank 1 after both preprocessing steps.
    rank_one = np.outer([1.0, 2.0, 5.0, 0.5], [1.0, -2.0, 3.0])
    for centering in ("row", "none"):
        result = spectrum.summary(rank_one, centering)
        assert result["lsvr"] == pytest.approx(0.0, abs=1e-12)
        assert result["sve"] == pytest.approx(0.0, abs=1e-6)
        assert result["top1_share"] == pytest.approx(1.0)
        assert (result["dim"], result["count"]) == (3, 4)
        assert len(result["singular_values"]) == 3


def test_summary_matches_numpy_svd_of_row_centred_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)) @ np.diag([5.0, 3.0, 1.0, 1.0, 0.5, 0.1])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.linalg.svd(unit - unit.mean(axis=1, keepdims=True), compute_uv=False)
    result = spectrum.summary(x)
    np.testing.assert_allclose(result["singular_values"], expected)
    p = expected / expected.sum()
    assert result["sve"] == pytest.approx(-np.sum(p * np.log(p)))
    assert result["lsvr"] == pytest.approx(-np.log(p[0]))
    assert result["top5_share"] == pytest.approx(np.sum(p[:5]))


def test_plots_write_png(tmp_path):
    png = b"\x89PNG"
    path = spectrum.plot_spectra(
        {"noise 0": [3.0, 2.0, 1.0, 0.0], "noise 0.4": [5.0, 1.0, 0.5, 0.1]},
        str(tmp_path / "spectra.png"),
    )
    with open(path, "rb") as f:
        assert f.read(4) == png
    points = [
        {"label": "0.0", "sve": 2.1, "lsvr": 1.5, "accuracy": 0.9},
        {"label": "0.1", "sve": 2.2, "lsvr": 1.6, "accuracy": 0.88},
    ]
    path = spectrum.plot_metric_vs_accuracy(points, str(tmp_path / "metrics.png"))
    with open(path, "rb") as f:
        assert f.read(4) == png
    with pytest.raises(ValueError, match="missing \\['lsvr'\\]"):
        spectrum.plot_metric_vs_accuracy([{"label": "a", "sve": 1.0, "accuracy": 0.5}], "x.png")
