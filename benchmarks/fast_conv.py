"""A convolution whose kernel gradient is kh * kw matmuls (custom VJP): the candidate fast path for XLA:CPU.

DESIGN.md recorded XLA:CPU conv weight-gradients as slow (a ResNet-18 step 3.3x faster with this path). With
jaxlib 0.10.2, lax's own gradient is as fast or faster for the models' layers (benchmarks/conv_grad.py), so the
models keep `nn.Conv` and this lives with the benchmark that decided it. `Conv` has `nn.Conv`'s parameters, so a
model could switch to it where it wins; tests/test_fast_conv.py checks values and both gradients against lax's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

# ---------------------------------------------------------------------------------------------------------------
# Convolution with a matmul kernel-gradient.

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def _conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSIONS)


def kernel_gradient(
    x: jax.Array,
    grad: jax.Array,
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    padding: Padding,
) -> jax.Array:
    """Weight-gradient of a 2-D convolution as kh * kw matmuls.

    With xp = x zero-padded by `padding` and y[b,o,p,:] = sum_{i,j} xp[b, o*sh + i, p*sw + j, :] @ k[i,j],
    dL/dk[i,j] = X_ij^T G, where X_ij [B*OH*OW, C_in] is xp[:, i::sh, j::sw] cut to the OH x OW outputs and
    G = dL/dy as [B*OH*OW, C_out]. Products accumulate in float32; returns float32 [kh, kw, C_in, C_out].
    """
    (kh, kw), (sh, sw) = kernel_size, strides
    batch, out_h, out_w, out_channels = grad.shape
    in_channels = x.shape[-1]
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    grad_rows = grad.reshape(-1, out_channels)
    contract_rows = (((0,), (0,)), ((), ()))
    rows = []
    for i in range(kh):
        row = []
        for j in range(kw):
            patch = lax.slice(
                padded,
                (0, i, j, 0),
                (batch, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, in_channels),
                (1, sh, sw, 1),
            )
            row.append(
                lax.dot_general(
                    patch.reshape(-1, in_channels),
                    grad_rows,
                    contract_rows,
                    preferred_element_type=jnp.float32,
                )
            )
        rows.append(jnp.stack(row))
    return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding
) -> jax.Array:
    """y = lax.conv_general_dilated(x, kernel) for NHWC x and HWIO kernel, with explicit (lo, hi) padding.

    Same value and gradients as lax's convolution; the kernel gradient is `kernel_gradient` (matmuls), the
    input gradient is lax's own (the transposed convolution).
    """
    return _conv(x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda v: _conv(v, kernel, strides, padding), x)
    (grad_x,) = input_vjp(grad)
    grad_kernel = kernel_gradient(x, grad, kernel.shape[:2], strides, padding)
    return grad_x, grad_kernel.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{name}={value!r} is not valid; expected a positive int or two of them.")
    return pair


def explicit_padding(
    padding: str | int | Sequence,
    spatial_shape: tuple[int, int],
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
) -> Padding:
    """((top, bottom), (left, right)) zero padding for 'SAME', 'VALID', an int, or per-axis ints or pairs.

    'SAME' pads by max((ceil(n / s) - 1) * s + k - n, 0) in total, the smaller half first (as lax does).
    """
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            raise ValueError(f"padding={padding!r} is not valid; expected 'SAME', 'VALID' or ints.")
        pads = lax.padtype_to_pads(spatial_shape, kernel_size, strides, padding)
    elif isinstance(padding, int):
        pads = [(padding, padding)] * 2
    else:
        pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pads) != 2 or any(p < 0 for pair in pads for p in pair):
        raise ValueError(
            f"padding={padding!r} is not valid; expected two non-negative (low, high) pairs."
        )
    return pads


class Conv(nn.Module):
    """2-D convolution on NHWC inputs whose kernel gradient is `kernel_gradient` (matmuls).

    A drop-in for `nn.Conv` for what the models use: the same parameter names, shapes, initialisers and
    outputs. Whether it is faster than `nn.Conv` depends on the backend and the layer's shape: measure
    with benchmarks/conv_grad.py.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: an int or (sh, sw).
      padding: 'SAME', 'VALID', an int, or per-axis ints or (low, high) pairs.
      use_bias: add a learned per-channel bias.
      dtype: compute dtype (None: promoted from the input and parameters).
      param_dtype: parameter dtype.
      kernel_init: kernel initialiser (flax's default for nn.Conv).
      bias_init: bias initialiser.
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"Conv expects NHWC inputs of rank 4, got shape {x.shape}.")
        kernel_size = _pair(tuple(self.kernel_size), "kernel_size")
        strides = _pair(self.strides, "strides")
        padding = explicit_padding(self.padding, x.shape[1:3], kernel_size, strides)
        kernel = self.param(
            "kernel", self.kernel_init, (*kernel_size, x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(x, kernel, strides, padding)
        return y if bias is None else y + bias
