"""Small building blocks shared by the models: dtype parsing, a fast max-pool, PyTorch-style conv padding.

`max_pool` uses a reshape when the window tiles the input exactly (window == stride, no
padding): on XLA:CPU this trains about 2x faster than `lax.reduce_window` for the small CNN
(tests/test_models.py checks both paths agree).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def get_dtype(dtype) -> jnp.dtype:
    """Maps a dtype name ('float32', 'bfloat16', 'float16') or a dtype to a jnp dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not valid; expected one of {sorted(DTYPES)}.")
        return DTYPES[dtype]
    return jnp.dtype(dtype)


def max_pool(x: jnp.ndarray, window: int) -> jnp.ndarray:
    """Non-overlapping max-pool of NHWC `x`: y[b,i,j,c] = max_{p,q<w} x[b, i*w+p, j*w+q, c].

    Uses a reshape + max when H and W are multiples of `window` (fast on XLA:CPU); otherwise
    falls back to `nn.max_pool` with VALID padding, which gives the same result.
    """
    batch, height, width, channels = x.shape
    if height % window or width % window:
        return nn.max_pool(x, (window, window), strides=(window, window), padding="VALID")
    x = x.reshape(batch, height // window, window, width // window, window, channels)
    return x.max(axis=(2, 4))


def symmetric_conv(features: int, kernel_size, strides=1, padding="SAME", **kwargs) -> nn.Conv:
    """An `nn.Conv` padded as PyTorch's `Conv2d(padding=k // 2)`: k // 2 on both sides of each spatial axis
    (XLA's "SAME" puts the extra row and column of a strided conv at the end instead). An explicit
    `padding` other than "SAME" is kept."""
    if isinstance(padding, str) and padding == "SAME":
        padding = [(k // 2, k // 2) for k in kernel_size]
    return nn.Conv(features, kernel_size, strides, padding=padding, **kwargs)


class DepthwiseConv(nn.Module):
    """A depthwise k x k conv (one filter per channel, no bias) with XLA "SAME" padding, computed as the sum of
    k^2 shifted, strided slices times per-channel weights: y[b,i,j,c] = sum_{p,q} x_pad[b, s*i+p, s*j+q, c] w[p,q,0,c].

    The kernel has `nn.Conv(feature_group_count=C)`'s shape (k, k, 1, C). On XLA:CPU a grouped convolution is
    ~15x slower than this sum (EfficientNet-Lite's 5x5 depthwise layers, measured); tests check they agree.
    """

    kernel_size: int
    strides: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        k, s = self.kernel_size, self.strides
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1, 2)),
            (k, k, 1, x.shape[-1]),
            self.param_dtype,
        ).astype(self.dtype)
        x = x.astype(self.dtype)
        height, width = x.shape[1], x.shape[2]
        out_h, out_w = -(-height // s), -(-width // s)
        pad_h = max((out_h - 1) * s + k - height, 0)
        pad_w = max((out_w - 1) * s + k - width, 0)
        x = jnp.pad(
            x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
        )
        out = 0
        for p in range(k):
            for q in range(k):
                window = x[:, p : p + (out_h - 1) * s + 1 : s, q : q + (out_w - 1) * s + 1 : s, :]
                out = out + window * kernel[p, q, 0]
        return out
