"""Heads trained on frozen features: the linear probe and the NMTune residual MLP.

Both take `(features, *, train, mask=None)`; `mask` marks the real rows of a padded batch (1 = real) so that
BatchNorm statistics ignore padding. Initialisation follows the official NMTune code: the classifier has
kaiming-uniform weights (fan_in, gain sqrt(2): U(+-sqrt(6 / fan_in))) and a zero bias; the MLP's own Linear
layers keep PyTorch's nn.Linear default, U(+-1 / sqrt(fan_in)) for weights and biases; BatchNorm follows
PyTorch's BatchNorm1d (eps 1e-5, momentum 0.1, running variance updated with the unbiased batch variance).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# kaiming_uniform(a=0, mode='fan_in') as torch.nn.init.kaiming_uniform_ applies to the classifier weights.
classifier_kernel_init = nn.initializers.he_uniform()
# torch.nn.Linear's default weight init, kaiming_uniform(a=sqrt(5)): U(+-1 / sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """torch.nn.Linear's default bias init: U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def masked_moments(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-column mean, biased variance and row count over the valid rows of x (n x D).

    mean = sum_i m_i x_i / c, var = sum_i m_i (x_i - mean)^2 / c, with c = max(sum_i m_i, 1).
    """
    m = jnp.ones(x.shape[0], x.dtype) if mask is None else mask.astype(x.dtype)
    count = jnp.maximum(jnp.sum(m), 1.0)
    mean = jnp.sum(x * m[:, None], axis=0) / count
    var = jnp.sum(jnp.square(x - mean) * m[:, None], axis=0) / count
    return mean, var, count


class MaskedBatchNorm(nn.Module):
    """BatchNorm1d with PyTorch semantics that ignores masked rows.

    Training: y = (x - mean_B) / sqrt(var_B + eps) * gamma + beta with batch statistics of the valid rows, and
    running <- (1 - momentum) * running + momentum * stat (unbiased variance, c / (c - 1)). Evaluation: the
    running statistics.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        dim = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (dim,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (dim,), jnp.float32)
        gamma = self.param("scale", nn.initializers.ones, (dim,))
        beta = self.param("bias", nn.initializers.zeros, (dim,))
        if train:
            mean, var, count = masked_moments(x, mask)
            if not self.is_initializing():
                unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (
                    1 - self.momentum
                ) * running_var.value + self.momentum * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * gamma + beta


class LinearHead(nn.Module):
    """Linear probe: logits = F W + b, W kaiming-uniform (fan_in), b = 0."""

    num_classes: int

    @nn.compact
    def __call__(
        self, features: jax.Array, *, train: bool = False, mask: jax.Array | None = None
    ) -> jax.Array:
        del train, mask  # Stateless and row-wise: same in both modes, padding needs nothing.
        return nn.Dense(
            self.num_classes,
            kernel_init=classifier_kernel_init,
            bias_init=nn.initializers.zeros,
            name="classifier",
        )(features)


class NMTuneHead(nn.Module):
    """Residual MLP on frozen features followed by a linear classifier; returns (logits, z).

    MLP(F) = Linear(H -> D)(block_depth(... block_1(F))), block = Linear -> BatchNorm -> ReLU with H =
    int(D * mlp_ratio) units, so `depth` counts the hidden Linear-BN-ReLU blocks (the official
    `mlp_after_layers`; depth=1 gives Linear(D->4D) -> BN -> ReLU -> Linear(4D->D)). With `residual`,
    z = s * MLP(F) + F with a learnable per-dimension scale s (init `scale_init`); otherwise z = MLP(F).
    logits = Linear(D -> C)(z) with kaiming-uniform weights and zero bias.
    """

    num_classes: int
    mlp_ratio: float = 4
    depth: int = 1
    residual: bool = True
    scale_init: float = 1.0

    @nn.compact
    def __call__(
        self, features: jax.Array, *, train: bool, mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        dim = features.shape[-1]
        hidden = int(dim * self.mlp_ratio)
        x, fan_in = features, dim
        for i in range(self.depth):
            x = nn.Dense(
                hidden,
                kernel_init=torch_linear_kernel_init,
                bias_init=torch_linear_bias_init(fan_in),
                name=f"hidden_{i}",
            )(x)
            x = MaskedBatchNorm(name=f"bn_{i}")(x, train=train, mask=mask)
            x = nn.relu(x)
            fan_in = hidden
        x = nn.Dense(
            dim,
            kernel_init=torch_linear_kernel_init,
            bias_init=torch_linear_bias_init(fan_in),
            name="out",
        )(x)
        if self.residual:
            scale = self.param("scale", nn.initializers.constant(self.scale_init), (dim,))
            z = scale * x + features
        else:
            z = x
        logits = nn.Dense(
            self.num_classes,
            kernel_init=classifier_kernel_init,
            bias_init=nn.initializers.zeros,
            name="classifier",
        )(z)
        return logits, z
