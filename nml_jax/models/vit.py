"""Vision Transformer (Dosovitskiy et al., 2021): patches, a [CLS] token, pre-norm blocks.

Features are the final-LayerNorm [CLS] token. Sizes: ViT-S/16 (384 wide, 12 deep, 6 heads), ViT-B/16
(768, 12, 12), and a tiny one for tests.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nml_jax.models import layers


class EncoderBlock(nn.Module):
    """x + MHA(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    num_heads: int
    mlp_dim: int
    dropout: float
    dtype: Any

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32
        )(y, y)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32)(y))
        y = nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32)(y)
        return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class ViT(nn.Module):
    """A ViT returning `(logits, features)`.

    Attributes:
      num_classes: classifier outputs.
      patch_size: side of the square patches.
      width, depth, num_heads, mlp_dim: encoder sizes.
      dropout: dropout rate inside the blocks (needs a 'dropout' rng when training).
      dtype: compute dtype; parameters stay float32.
    """

    num_classes: int
    patch_size: int = 16
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_dim: int = 1536
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
        dtype = layers.get_dtype(self.dtype)
        p = self.patch_size
        x = nn.Conv(
            self.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=dtype,
            param_dtype=jnp.float32,
            name="embedding",
        )(x.astype(dtype))
        x = x.reshape(x.shape[0], -1, self.width)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
        x = jnp.concatenate([jnp.tile(cls.astype(dtype), (x.shape[0], 1, 1)), x], axis=1)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (1, *x.shape[1:]), jnp.float32
        )
        x = x + pos.astype(dtype)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, dtype, name=f"block{i}")(
                x, train
            )
        features = nn.LayerNorm(dtype=dtype, name="final_norm")(x)[:, 0].astype(jnp.float32)
        logits = nn.Dense(
            self.num_classes,
            param_dtype=jnp.float32,
            name="head",
            kernel_init=nn.initializers.zeros,
        )(features)
        return logits.astype(jnp.float32), features


SIZES = {
    "s": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "b": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "tiny": dict(width=32, depth=2, num_heads=2, mlp_dim=64),
}


def vit(size: str, num_classes: int, **kwargs) -> ViT:
    """A ViT of a named size ('s', 'b', 'tiny'); `kwargs` override its attributes."""
    if size not in SIZES:
        raise ValueError(f"ViT size={size!r} is not valid; expected one of {sorted(SIZES)}.")
    return ViT(num_classes=num_classes, **{**SIZES[size], **kwargs})
