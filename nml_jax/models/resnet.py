"""ResNet-18/34/50/101/152 (He et al., 2016), v1.5 (stride on the 3x3 conv of bottleneck blocks).

Two stems: `imagenet` (7x7/2 conv + 3x3/2 max-pool, for 224 px) and `small` (one 3x3/1
conv, no pool, for 28-32 px inputs such as CIFAR and Fashion-MNIST). Strided convs and the stem pool pad as
XLA's "SAME" (the extra row and column at the end) or, with `padding='symmetric'`, as PyTorch (k // 2 on both
sides), which weights converted from torchvision or timm need. Features are the
globally average-pooled last stage. Batch norm statistics cover the whole global batch: under
`jax.jit` with the batch sharded over devices, the mean over axis 0 is a global reduction
(tests/test_pretrain.py checks 8 devices against 1).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nml_jax.models import layers


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    filters: int
    strides: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="proj")(x)
            residual = self.norm(name="proj_norm")(residual)
        return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (4x wider) convs plus a residual (ResNet-50/101/152)."""

    filters: int
    strides: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(
                self.filters * 4, (1, 1), (self.strides, self.strides), name="proj"
            )(x)
            residual = self.norm(name="proj_norm")(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """A ResNet returning `(logits, features)`.

    Attributes:
      num_classes: classifier outputs.
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      bottleneck: bottleneck blocks (ResNet-50+) instead of basic blocks.
      width: channels of the first stage (doubled at each later stage).
      stem: 'imagenet' (7x7/2 conv + max-pool) or 'small' (3x3/1 conv).
      padding: 'same' (XLA) or 'symmetric' (PyTorch) padding of the convs and the stem pool.
      dtype: compute dtype; parameters and batch-norm statistics stay float32.
    """

    num_classes: int
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    bottleneck: bool = False
    width: int = 64
    stem: str = "imagenet"
    padding: str = "same"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
        if self.stem not in ("imagenet", "small"):
            raise ValueError(f"stem={self.stem!r} is not valid; expected 'imagenet' or 'small'.")
        if self.padding not in ("same", "symmetric"):
            raise ValueError(
                f"padding={self.padding!r} is not valid; expected 'same' or 'symmetric'."
            )
        dtype = layers.get_dtype(self.dtype)
        conv = functools.partial(
            nn.Conv if self.padding == "same" else layers.symmetric_conv,
            use_bias=False,
            dtype=dtype,
            param_dtype=jnp.float32,
            padding="SAME",
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
        if self.stem == "imagenet":
            x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
            x = nn.relu(norm(name="stem_norm")(x))
            pool_padding = "SAME" if self.padding == "same" else ((1, 1), (1, 1))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool_padding)
        else:
            x = conv(self.width, (3, 3), name="stem_conv")(x)
            x = nn.relu(norm(name="stem_norm")(x))
        block = BottleneckBlock if self.bottleneck else BasicBlock
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                x = block(self.width * 2**i, strides, conv=conv, norm=norm)(x)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(
            self.num_classes,
            dtype=dtype,
            param_dtype=jnp.float32,
            name="head",
            kernel_init=nn.initializers.zeros,
        )(features)
        return logits.astype(jnp.float32), features


STAGE_SIZES = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def resnet(depth: int, num_classes: int, **kwargs) -> ResNet:
    """ResNet-`depth` for depth in 18, 34, 50, 101, 152."""
    if depth not in STAGE_SIZES:
        raise ValueError(
            f"ResNet depth={depth} is not valid; expected one of {sorted(STAGE_SIZES)}."
        )
    stage_sizes, bottleneck = STAGE_SIZES[depth]
    kwargs.setdefault("stage_sizes", stage_sizes)
    return ResNet(num_classes=num_classes, bottleneck=bottleneck, **kwargs)
