"""Loss terms against values computed by hand in numpy, and the Gram-route singular values against the SVD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nml_jax import losses


def _np_normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_off_diagonal_cov(z):
    c = np.cov(z.T, ddof=1)
    return (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / z.shape[1]


def _np_dominant(z, k):
    s = np.linalg.svd(z, compute_uv=False)
    return np.mean(s[:k]) / np.sum(s)


def _np_ce(logits, labels):
    log_z = np.log(np.sum(np.exp(logits), axis=1))
    return np.mean(log_z - logits[np.arange(len(labels)), labels])


def test_cross_entropy_hand_value_and_mask():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 1.0, 1.0]], np.float32)
    labels = np.array([2, 0, 1])
    # Row 0: log(e + e^2 + e^3) - 3; row 1: log 3.
    row0 = np.log(np.e + np.e**2 + np.e**3) - 3.0
    expected = (row0 + np.log(3.0)) / 2
    got = losses.cross_entropy(logits, labels, jnp.array([1, 1, 0]))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(
        losses.cross_entropy(logits, labels), _np_ce(logits, labels), rtol=1e-6
    )


def test_consistency_loss_hand_value_mask_and_stop_gradient():
    z2 = np.array([[3.0, 4.0], [1.0, 0.0], [9.0, 9.0]], np.float32)
    f1 = np.array([[0.0, 2.0], [0.0, 1.0], [1.0, -1.0]], np.float32)
    # Rows normalised: z2 -> (0.6, 0.8), (1, 0); f1 -> (0, 1), (0, 1). Squared distances 0.36 + 0.04, 1 + 1.
    expected = ((0.36 + 0.04) + 2.0) / (2 * 2)
    np.testing.assert_allclose(
        losses.consistency_loss(z2, f1, jnp.array([1, 1, 0])), expected, rtol=1e-6
    )
    grad_f1 = jax.grad(lambda f: losses.consistency_loss(jnp.asarray(z2), f))(jnp.asarray(f1))
    np.testing.assert_array_equal(grad_f1, 0.0)


def test_covariance_loss_matches_numpy_cov_and_ignores_padding():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 4)).astype(np.float32)
    np.testing.assert_allclose(losses.covariance_loss(z), _np_off_diagonal_cov(z), rtol=1e-5)
    padded = np.concatenate([z, 100.0 * rng.normal(size=(3, 4)).astype(np.float32)])
    mask = np.arange(10) < 7
    np.testing.assert_allclose(
        losses.covariance_loss(padded, mask), _np_off_diagonal_cov(z), rtol=1e-5
    )
    # Tiny hand case: columns (1, -1) and (2, -2): var 2 and 8, covariance 4 -> 2 * 4^2 / 2 = 16.
    np.testing.assert_allclose(losses.covariance_loss(np.array([[1.0, 2.0], [-1.0, -2.0]])), 16.0)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_gram_singular_values_and_gradients_match_svd(shape):
    rng = np.random.default_rng(sum(shape))
    z = jnp.asarray(rng.normal(size=shape), jnp.float32)
    weights = jnp.asarray(rng.uniform(0.5, 1.5, size=min(shape)), jnp.float32)
    np.testing.assert_allclose(
        losses.singular_values_via_gram(z), jnp.linalg.svd(z, compute_uv=False), rtol=1e-4
    )
    grad_gram = jax.grad(lambda x: jnp.sum(weights * losses.singular_values_via_gram(x)))(z)
    grad_svd = jax.grad(lambda x: jnp.sum(weights * jnp.linalg.svd(x, compute_uv=False)))(z)
    np.testing.assert_allclose(grad_gram, grad_svd, rtol=1e-3, atol=1e-4)


def test_gram_singular_values_rank_deficient_have_finite_gradients():
    rng = np.random.default_rng(1)
    z = np.zeros((6, 8), np.float32)
    z[:2] = rng.normal(size=(2, 8))
    z[2] = z[0]  # Rank 2 with duplicated and zero rows.
    s = losses.singular_values_via_gram(jnp.asarray(z))
    np.testing.assert_allclose(s, np.linalg.svd(z, compute_uv=False), atol=1e-4)
    np.testing.assert_array_equal(s[2:], 0.0)
    grad = jax.grad(lambda x: losses.dominant_sv_loss(x, k=2))(jnp.asarray(z))
    assert np.all(np.isfinite(grad))


def test_dominant_sv_loss_hand_value_mask_and_bad_k():
    z = np.diag([5.0, 4.0, 3.0, 2.0, 1.0, 1.0]).astype(np.float32)
    np.testing.assert_allclose(losses.dominant_sv_loss(z, k=2), (5 + 4) / 2 / 16, rtol=1e-5)
    padded = np.concatenate([z, np.full((2, 6), 7.0, np.float32)])
    np.testing.assert_allclose(
        losses.dominant_sv_loss(padded, k=2, mask=np.arange(8) < 6), 9 / 2 / 16, rtol=1e-5
    )
    with pytest.raises(ValueError, match="k=7"):
        losses.dominant_sv_loss(z, k=7)


def test_nmtune_loss_combines_terms_with_signs_and_weights():
    rng = np.random.default_rng(2)
    batch, dim, classes = 5, 8, 3
    f1 = rng.normal(size=(batch, dim)).astype(np.float32)
    z = rng.normal(size=(2 * batch, dim)).astype(np.float32)
    logits = rng.normal(size=(2 * batch, classes)).astype(np.float32)
    labels = rng.integers(0, classes, batch)
    loss, aux = losses.nmtune_loss(logits, z, f1, labels)
    ce = _np_ce(logits, np.concatenate([labels, labels]))
    cons = np.mean((_np_normalize(z[batch:]) - _np_normalize(f1)) ** 2)
    cov = _np_off_diagonal_cov(z)
    dom = _np_dominant(z, 5)
    np.testing.assert_allclose(aux["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(aux["consistency"], cons, rtol=1e-5)
    np.testing.assert_allclose(aux["covariance"], cov, rtol=1e-4)
    np.testing.assert_allclose(aux["dominant_sv"], dom, rtol=1e-4)
    np.testing.assert_allclose(loss, ce + cons + 0.04 * cov - 0.001 * dom, rtol=1e-5)
    weighted, _ = losses.nmtune_loss(
        logits, z, f1, labels, consistency_weight=2.0, covariance_weight=0.0, svd_weight=1.0, k=2
    )
    np.testing.assert_allclose(weighted, ce + 2 * cons - _np_dominant(z, 2), rtol=1e-5)
    with pytest.raises(ValueError, match="2 \\* 5 rows"):
        losses.nmtune_loss(logits[:batch], z, f1, labels)
