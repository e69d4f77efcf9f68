"""CLIP's image tower `ModifiedResNet` (Radford et al., 2021; OpenAI `clip` and `open_clip` RN50 / RN101).

Differences from the ImageNet ResNet: a stem of three 3x3 convs (the first strided, widths w/2, w/2, w) and a
2x2 average pool instead of a 7x7 conv and max-pool; anti-aliased strided blocks: the stride is a 2x2 average
pool after the 3x3 conv, and the projection shortcut is a 2x2 average pool then a 1x1 conv; and attention pooling
instead of global average pooling: the mean of the final feature map, as the only query, attends over
[mean; positions] + a learned positional embedding with `num_heads` heads (separate q/k/v projections with
biases, softmax(q k^T / sqrt(d_head)) v, output projection `c_proj` to the embedding width). Batch norm epsilon
1e-5. The module names mirror the PyTorch ones (conv1, bn1, layerS_J, attnpool.q_proj, ...), so conversion is by
name. The positional embedding fixes the input resolution (`input_resolution`, 224 for the released models).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nml_jax.models import layers

# name -> (blocks per stage, width, embedding width); heads = width * 32 // 64 as in CLIP.
VARIANTS = {"rn50": ((3, 4, 6, 3), 64, 1024), "rn101": ((3, 4, 23, 3), 64, 512)}


def avg_pool(x: jnp.ndarray, window: int) -> jnp.ndarray:
    """Non-overlapping average pool (PyTorch AvgPool2d(window)); identity for window 1."""
    if window == 1:
        return x
    return nn.avg_pool(x, (window, window), strides=(window, window), padding="VALID")


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> avg-pool(stride) -> 1x1 (4x wider), shortcut avg-pool(stride) -> 1x1 when the shape changes."""

    planes: int
    strides: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm(name="bn1")(self.conv(self.planes, (1, 1), name="conv1")(x)))
        y = nn.relu(self.norm(name="bn2")(self.conv(self.planes, (3, 3), name="conv2")(y)))
        y = avg_pool(y, self.strides)
        y = self.norm(name="bn3")(self.conv(self.planes * 4, (1, 1), name="conv3")(y))
        shortcut = x
        if self.strides > 1 or x.shape[-1] != self.planes * 4:
            shortcut = self.conv(self.planes * 4, (1, 1), name="downsample_conv")(
                avg_pool(x, self.strides)
            )
            shortcut = self.norm(name="downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class AttentionPool(nn.Module):
    """CLIP's AttentionPool2d: one query (the spatial mean) over [mean; positions] + positional embedding."""

    num_heads: int
    out_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height * width, channels)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        pos = self.param(
            "positional_embedding",
            nn.initializers.normal(channels**-0.5),
            (height * width + 1, channels),
            jnp.float32,
        )
        x = x + pos.astype(x.dtype)
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        head_dim = channels // self.num_heads
        split = lambda t: t.reshape(batch, -1, self.num_heads, head_dim)
        q = split(dense(channels, name="q_proj")(x[:, :1])) * head_dim**-0.5
        k = split(dense(channels, name="k_proj")(x))
        v = split(dense(channels, name="v_proj")(x))
        weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v).reshape(batch, channels)
        return dense(self.out_dim, name="c_proj")(out)


class ModifiedResNet(nn.Module):
    """CLIP's ModifiedResNet image tower: images [B, H, W, 3] -> embeddings [B, embed_dim] (unnormalised).

    Attributes:
      embed_dim: output (shared embedding) width.
      stage_sizes: bottleneck blocks per stage.
      width: stem width (stage widths w, 2w, 4w, 8w; 4x wider outputs).
      num_heads: attention-pool heads (None: width * 32 // 64, as CLIP).
      dtype: compute dtype; parameters and batch-norm statistics stay float32.
    """

    embed_dim: int
    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    num_heads: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        dtype = layers.get_dtype(self.dtype)
        conv = functools.partial(
            layers.symmetric_conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32
        )
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=dtype,
            param_dtype=jnp.float32,
        )
        x = x.astype(dtype)
        half = self.width // 2
        for i, (features, strides) in enumerate(((half, 2), (half, 1), (self.width, 1)), 1):
            x = conv(features, (3, 3), (strides, strides), name=f"conv{i}")(x)
            x = nn.relu(norm(name=f"bn{i}")(x))
        x = avg_pool(x, 2)
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                x = Bottleneck(
                    self.width * 2**i, strides, conv=conv, norm=norm, name=f"layer{i + 1}_{j}"
                )(x)
        heads = self.num_heads or self.width * 32 // 64
        pooled = AttentionPool(heads, self.embed_dim, dtype=dtype, name="attnpool")(x)
        return pooled.astype(jnp.float32)


def modified_resnet(variant: str, embed_dim: int | None = None, **kwargs) -> ModifiedResNet:
    """CLIP's `variant` ('rn50' or 'rn101') image tower; `embed_dim` defaults to the released model's."""
    if variant not in VARIANTS:
        raise ValueError(
            f"ModifiedResNet variant {variant!r} is not valid; expected one of {sorted(VARIANTS)}."
        )
    stage_sizes, width, default_dim = VARIANTS[variant]
    kwargs.setdefault("stage_sizes", stage_sizes)
    kwargs.setdefault("width", width)
    return ModifiedResNet(embed_dim=embed_dim or default_dim, **kwargs)
