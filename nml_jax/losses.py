"""Every loss of the project as a small pure function: cross-entropy (with label smoothing), the symmetric
InfoNCE of CLIP, and the NMTune regularisers.

NMTune (Chen et al., ICLR 2024) tunes a residual MLP on frozen features with

    loss = CE(both views) + w_cons * consistency + w_cov * covariance - w_svd * dominant singular values.

Defaults follow the official implementation (`src/models/nml_tune.py` of Hhhhhhao/Noisy-Model-Learning):
CE is averaged over the 2B rows of both views; the consistency term is the element-wise MSE between
l2-normalised Z of view 2 and l2-normalised, gradient-stopped F of view 1; the covariance term centres Z (2B x D,
both views stacked) over the batch and uses the unbiased (n - 1) covariance; the dominant-singular-value term
uses the raw (uncentred) Z. Every function takes an optional row `mask` (1 = real row, 0 = padding) so a padded
last batch gives exactly the value of the shorter batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# F.normalize's floor on the norm.
_NORM_EPS = 1e-12


def _row_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """The mask as float32 [n], all ones when None."""
    if mask is None:
        return jnp.ones(x.shape[0], jnp.float32)
    return mask.astype(jnp.float32)


def smoothed_cross_entropy(
    logits: jax.Array, labels: jax.Array, smoothing: float = 0.0
) -> jax.Array:
    """Per-example -sum_c q_c log softmax(z)_c, with q = (1 - eps) onehot(y) + eps / C."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy over valid rows.

    CE = sum_i m_i * (logsumexp(logits_i) - logits_i[y_i]) / max(sum_i m_i, 1).
    """
    m = _row_mask(logits, mask)
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(per_row * m) / jnp.maximum(jnp.sum(m), 1.0)


def info_nce(image: jax.Array, text: jax.Array, scale: jax.Array) -> jax.Array:
    """Symmetric InfoNCE over the batch (CLIP).

    With L = s * I T^T (N x N, rows: images, columns: texts, pair i on the diagonal):
    loss = (1 / 2N) sum_i [ -log softmax(L_i.)_i - log softmax(L_.i)_i ].
    """
    logits = scale * jnp.matmul(image, text.T, precision=jax.lax.Precision.HIGHEST)
    labels = jnp.arange(logits.shape[0])
    rows = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    cols = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
    return 0.5 * (jnp.mean(rows) + jnp.mean(cols))


def l2_normalize(x: jax.Array) -> jax.Array:
    """x_i / max(||x_i||_2, 1e-12) per row (torch.nn.functional.normalize)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, _NORM_EPS)


def consistency_loss(
    z_view2: jax.Array, f_view1: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """MSE between the tuned features of view 2 and the frozen features of view 1.

    L_cons = sum_{i,j} m_i * (l2n(z2)_ij - sg(l2n(f1))_ij)^2 / (max(sum_i m_i, 1) * D), where l2n normalises
    each row and sg stops the gradient (the official `mse(normalize(Z_s), normalize(F_w.detach()))`).
    """
    m = _row_mask(z_view2, mask)
    target = jax.lax.stop_gradient(l2_normalize(f_view1))
    sq = jnp.sum(jnp.square(l2_normalize(z_view2) - target), axis=-1)
    return jnp.sum(sq * m) / (jnp.maximum(jnp.sum(m), 1.0) * z_view2.shape[-1])


def covariance_loss(z: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Squared off-diagonal covariance of z (n x D), as in VICReg and the official code.

    C = (z - mean(z))^T (z - mean(z)) / (n - 1) over the n valid rows (unbiased, mean-centred over the batch),
    L_cov = sum_{a != b} C_ab^2 / D.
    """
    m = _row_mask(z, mask)
    count = jnp.sum(m)
    mean = jnp.sum(z * m[:, None], axis=0) / jnp.maximum(count, 1.0)
    centred = (z - mean) * m[:, None]
    cov = centred.T @ centred / jnp.maximum(count - 1.0, 1.0)
    off_diagonal = cov - jnp.diag(jnp.diag(cov))
    return jnp.sum(jnp.square(off_diagonal)) / z.shape[-1]


def singular_values_via_gram(z: jax.Array) -> jax.Array:
    """Singular values of z (n x D), largest first, from the eigenvalues of its smaller Gram matrix.

    G = z z^T (n x n) when n <= D, else z^T z (D x D); sigma_i = sqrt(max(lambda_i(G), 0)). Eigenvalues at or
    below max(n, D) * eps * lambda_max are round-off of G (float precision of the Gram route), so they count as
    exact zeros with a zero gradient, which keeps sqrt's gradient finite (rank-deficient or padded batches).
    Elsewhere d sigma_i = u_i^T dz v_i, as for the SVD. Returns min(n, D) values.
    """
    n, d = z.shape
    gram = z @ z.T if n <= d else z.T @ z
    eigenvalues = jnp.linalg.eigvalsh(gram)[::-1]
    tolerance = max(n, d) * jnp.finfo(z.dtype).eps * jnp.maximum(eigenvalues[0], 0.0)
    positive = eigenvalues > tolerance
    safe = jnp.where(positive, eigenvalues, 1.0)
    return jnp.where(positive, jnp.sqrt(safe), 0.0)


def dominant_sv_loss(z: jax.Array, k: int = 5, mask: jax.Array | None = None) -> jax.Array:
    """Share of the top-k singular values of the uncentred z (2B x D): mean(sigma_1..k) / sum_i sigma_i.

    Reading of DESIGN.md's "-0.001 * mean of the top-5 singular values of Z divided by their sum": the official
    code normalises s = s / s.sum() and takes s[:5].mean(), i.e. this function's value is
    (1/k) * sum_{i<=k} sigma_i / sum_i sigma_i, and `nmtune_loss` SUBTRACTS it with weight 0.001 (it rewards
    dominant singular values). Padded rows are zeroed, which only adds zero singular values.
    """
    n, d = z.shape
    if not 1 <= k <= min(n, d):
        raise ValueError(f"k={k} must be in [1, min(rows, dims)] = [1, {min(n, d)}].")
    m = _row_mask(z, mask)
    s = singular_values_via_gram(z * m[:, None])
    return jnp.mean(s[:k]) / jnp.maximum(jnp.sum(s), _NORM_EPS)


def nmtune_loss(
    logits: jax.Array,
    z: jax.Array,
    features_view1: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    *,
    consistency_weight: float = 1.0,
    covariance_weight: float = 0.04,
    svd_weight: float = 0.001,
    k: int = 5,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The NMTune objective on a batch of B examples seen in two views.

    loss = CE(logits, [y; y]) + w_cons * L_cons(z2, f1) + w_cov * L_cov(z) - w_svd * L_sv(z), with
    z = [z1; z2] (2B x D, view-1 rows first), logits = classifier(z) (2B x C), f1 the frozen view-1
    features (B x D), labels and mask of shape [B].

    Returns:
      (loss, aux) where aux holds every term: `ce`, `consistency`, `covariance`, `dominant_sv` and `loss`.
    """
    batch = features_view1.shape[0]
    if logits.shape[0] != 2 * batch or z.shape[0] != 2 * batch:
        raise ValueError(
            f"logits {logits.shape} and z {z.shape} must have 2 * {batch} rows (view 1 then view 2)."
        )
    m = _row_mask(features_view1, mask)
    both_mask = jnp.concatenate([m, m])
    terms = {
        "ce": cross_entropy(logits, jnp.concatenate([labels, labels]), both_mask),
        "consistency": consistency_loss(z[batch:], features_view1, m),
        "covariance": covariance_loss(z, both_mask),
        "dominant_sv": dominant_sv_loss(z, k, both_mask),
    }
    loss = (
        terms["ce"]
        + consistency_weight * terms["consistency"]
        + covariance_weight * terms["covariance"]
        - svd_weight * terms["dominant_sv"]
    )
    return loss, {**terms, "loss": loss}
