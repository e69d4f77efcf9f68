"""EfficientNet-Lite0..4 (Tan & Le, 2019; the TensorFlow `efficientnet/lite` variants), returning
`(logits, features)`.

The Lite changes to EfficientNet: ReLU6 instead of swish, no squeeze-excite, and a fixed stem (32 channels) and
head (1280 channels) whose widths and repeats are not scaled. The network: stem 3x3/2 conv -> BN -> ReLU6; seven
stages of mobile inverted bottlenecks (MBConv: 1x1 expand -> BN -> ReLU6 -> kxk depthwise (strided on the first
block of a stage) -> BN -> ReLU6 -> 1x1 project -> BN, plus the identity when the shape is kept); head 1x1 conv ->
BN -> ReLU6; global average pool (= the features); dropout; linear classifier. Convolutions pad as TensorFlow's
"SAME" (the extra row and column at the end), as the original and the `efficientnet_lite_pytorch` port do; batch
norm epsilon 1e-3. Depthwise convs are layers.DepthwiseConv (a sum of shifted slices: ~15x faster than a grouped
convolution on XLA:CPU). Widths are rounded as the reference's `round_filters` (multiples of 8).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nml_jax.models import layers

# (repeats, kernel, stride, expand ratio, input filters, output filters) of the seven stages at width/depth 1.
BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# Variant -> (width multiplier, depth multiplier, input resolution, dropout rate).
VARIANTS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 280, 0.3),
    4: (1.4, 1.8, 300, 0.3),
}
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """filters * width rounded to the nearest multiple of `divisor`, never more than 10% below it."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stage_specs(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """The scaled stages: repeats ceil(depth * r) except the first and last (Lite keeps them); widths rounded;
    the first stage takes the fixed 32-channel stem."""
    specs = []
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(BLOCKS):
        fixed = i in (0, len(BLOCKS) - 1)
        specs.append(
            (
                repeats if fixed else math.ceil(depth * repeats),
                kernel,
                stride,
                expand,
                STEM_FILTERS if i == 0 else round_filters(cin, width),
                round_filters(cout, width),
            )
        )
    return specs


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite (ReLU6)."""

    out_filters: int
    kernel: int
    strides: int
    expand: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = x
        hidden = x.shape[-1] * self.expand
        if self.expand != 1:
            y = self.conv(hidden, (1, 1), name="expand_conv")(y)
            y = nn.relu6(self.norm(name="expand_norm")(y))
        y = layers.DepthwiseConv(self.kernel, self.strides, dtype=y.dtype, name="depthwise_conv")(y)
        y = nn.relu6(self.norm(name="depthwise_norm")(y))
        y = self.conv(self.out_filters, (1, 1), name="project_conv")(y)
        y = self.norm(name="project_norm")(y)
        if self.strides == 1 and x.shape[-1] == self.out_filters:
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite returning `(logits, features)`; features are the pooled 1280-d head activations.

    Attributes:
      num_classes: classifier outputs.
      width: width multiplier; depth: depth multiplier (VARIANTS gives the published pairs).
      dropout: dropout rate before the classifier (training only).
      dtype: compute dtype; parameters and batch-norm statistics stay float32.
    """

    num_classes: int
    width: float = 1.0
    depth: float = 1.0
    dropout: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
        dtype = layers.get_dtype(self.dtype)
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32, padding="SAME"
        )
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.99,
            epsilon=BN_EPSILON,
            dtype=dtype,
            param_dtype=jnp.float32,
        )
        x = conv(STEM_FILTERS, (3, 3), (2, 2), name="stem_conv")(x.astype(dtype))
        x = nn.relu6(norm(name="stem_norm")(x))
        index = 0
        for repeats, kernel, stride, expand, _, cout in stage_specs(self.width, self.depth):
            for j in range(repeats):
                x = MBConv(
                    cout,
                    kernel,
                    stride if j == 0 else 1,
                    expand,
                    conv=conv,
                    norm=norm,
                    name=f"block{index}",
                )(x)
                index += 1
        x = conv(HEAD_FILTERS, (1, 1), name="head_conv")(x)
        x = nn.relu6(norm(name="head_norm")(x))
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        y = nn.Dropout(self.dropout, deterministic=not train)(features)
        logits = nn.Dense(self.num_classes, dtype=dtype, param_dtype=jnp.float32, name="head")(y)
        return logits.astype(jnp.float32), features


def efficientnet_lite(variant: int, num_classes: int, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite`variant` for variant in 0..4."""
    if variant not in VARIANTS:
        raise ValueError(
            f"EfficientNet-Lite variant {variant} is not valid; expected one of {sorted(VARIANTS)}."
        )
    width, depth, _, dropout = VARIANTS[variant]
    kwargs.setdefault("dropout", dropout)
    return EfficientNetLite(num_classes=num_classes, width=width, depth=depth, **kwargs)
