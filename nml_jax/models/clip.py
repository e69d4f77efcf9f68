"""CLIP (Radford et al., 2021): an image tower and a causal text transformer in one embedding space.

- Image towers (each maps images to the shared embedding): the SmallCNN of the embedded default (its linear
  head is the projection); the project's ResNets with CLIP's attention-pool head (the ModifiedResNet idea:
  the mean of the final feature map, as query, attends over all positions plus a learned positional embedding);
  a ViT whose final-LayerNorm [CLS] token is projected without bias.
- Text tower: token + learned positional embeddings, pre-LN blocks with a causal mask, a final LayerNorm and
  the EOT token's state (the last non-padding position) projected without bias.
- A learnable temperature: logit_scale starts at log(1 / 0.07) and the scale exp(logit_scale) is clipped at 100.

`__call__(images, tokens)` returns L2-normalised image and text embeddings and the scale; `encode_image` is the
frozen feature extractor of the features stage (unnormalised embeddings, as CLIP's `encode_image`).
Parameters are float32; `dtype` sets the compute precision (bfloat16 for mixed precision).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from nml_jax import losses
from nml_jax.models import cnn, layers, resnet, vit

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


class CNNTower(nn.Module):
    """The SmallCNN; its linear head (on the ReLU dense features) is the projection to `embed_dim`."""

    embed_dim: int
    widths: tuple[int, ...] = (32, 64)
    feature_dim: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        net = cnn.SmallCNN(
            num_classes=self.embed_dim,
            widths=tuple(self.widths),
            feature_dim=self.feature_dim,
            dtype=self.dtype,
            name="cnn",
        )
        return net(x, train=train)[0]


class AttentionPool(nn.Module):
    """CLIP's attention pooling: q = mean over positions; softmax(q K^T / sqrt(d)) V over [mean; positions] + pos."""

    num_heads: int
    out_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height * width, channels)
        x = jnp.concatenate([jnp.mean(x, axis=1, keepdims=True), x], axis=1)
        pos = self.param(
            "pos_embedding",
            nn.initializers.normal(channels**-0.5),
            (1, height * width + 1, channels),
            jnp.float32,
        )
        x = x + pos.astype(x.dtype)
        pooled = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            out_features=self.out_dim,
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )(x[:, :1], x)
        return pooled[:, 0]


class ResNetTower(nn.Module):
    """A ResNet trunk (resnet.py blocks and stems) with an attention-pool head to `embed_dim`."""

    embed_dim: int
    depth: int = 50
    width: int = 64
    stem: str = "imagenet"
    num_heads: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        dtype = layers.get_dtype(self.dtype)
        stage_sizes, bottleneck = resnet.STAGE_SIZES[self.depth]
        conv = nn.Conv
        conv_kw = dict(use_bias=False, dtype=dtype, param_dtype=jnp.float32, padding="SAME")
        norm_kw = dict(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=dtype,
            param_dtype=jnp.float32,
        )

        def make_conv(*args, **kwargs):
            return conv(*args, **{**conv_kw, **kwargs})

        def make_norm(**kwargs):
            return nn.BatchNorm(**{**norm_kw, **kwargs})

        x = x.astype(dtype)
        if self.stem == "imagenet":
            x = make_conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
            x = nn.relu(make_norm(name="stem_norm")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        elif self.stem == "small":
            x = make_conv(self.width, (3, 3), name="stem_conv")(x)
            x = nn.relu(make_norm(name="stem_norm")(x))
        else:
            raise ValueError(f"stem={self.stem!r} is not valid; expected 'imagenet' or 'small'.")
        block = resnet.BottleneckBlock if bottleneck else resnet.BasicBlock
        for i, size in enumerate(stage_sizes):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                x = block(self.width * 2**i, strides, conv=make_conv, norm=make_norm)(x)
        pooled = AttentionPool(self.num_heads, self.embed_dim, dtype=dtype, name="attnpool")(x)
        return pooled.astype(jnp.float32)


class ViTTower(nn.Module):
    """A ViT: patches, [CLS], LayerNorm, pre-norm blocks, LayerNorm of [CLS], projection without bias."""

    embed_dim: int
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        dtype = layers.get_dtype(self.dtype)
        p = self.patch_size
        x = nn.Conv(
            self.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            param_dtype=jnp.float32,
            name="embedding",
        )(x.astype(dtype))
        x = x.reshape(x.shape[0], -1, self.width)
        cls = self.param("cls", nn.initializers.normal(self.width**-0.5), (1, 1, self.width))
        x = jnp.concatenate([jnp.tile(cls.astype(dtype), (x.shape[0], 1, 1)), x], axis=1)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(self.width**-0.5), (1, *x.shape[1:])
        )
        x = nn.LayerNorm(dtype=dtype, name="pre_norm")(x + pos.astype(dtype))
        for i in range(self.depth):
            x = vit.EncoderBlock(self.num_heads, self.mlp_dim, 0.0, dtype, name=f"block{i}")(
                x, train
            )
        x = nn.LayerNorm(dtype=dtype, name="post_norm")(x[:, 0])
        proj = nn.Dense(
            self.embed_dim,
            use_bias=False,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.normal(self.width**-0.5),
            name="proj",
        )
        return proj(x).astype(jnp.float32)


class TextBlock(nn.Module):
    """x + MHA(LN(x), causal), then x + MLP(LN(x)) with a 4x GELU MLP."""

    num_heads: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32
        )(y, y, mask=mask)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.gelu(nn.Dense(4 * x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32)(y))
        return x + nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32)(y)


class TextTower(nn.Module):
    """Causal pre-LN transformer over token ids [B, L]; returns the final-LN state at `eot_index` [B, width]."""

    vocab_size: int
    context_length: int
    width: int
    depth: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, eot_index: jnp.ndarray) -> jnp.ndarray:
        dtype = layers.get_dtype(self.dtype)
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"Token rows of length {length} exceed context {self.context_length}.")
        x = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=nn.initializers.normal(0.02),
            dtype=dtype,
            param_dtype=jnp.float32,
        )(tokens)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(0.01), (self.context_length, self.width)
        )
        x = x + pos[:length].astype(dtype)
        mask = nn.make_causal_mask(tokens)
        for i in range(self.depth):
            x = TextBlock(self.num_heads, dtype, name=f"block{i}")(x, mask)
        x = nn.LayerNorm(dtype=dtype, name="final_norm")(x)
        return jnp.take_along_axis(x, eot_index[:, None, None], axis=1)[:, 0]


class CLIP(nn.Module):
    """Image and text towers, a text projection and the learnable temperature.

    Attributes:
      image_tower: a module mapping (images, train) to embeddings [B, embed_dim].
      text_tower: a TextTower.
      embed_dim: width of the shared embedding.
      pad_id: the padding token id (the EOT is the last non-padding token of each row).
    """

    image_tower: nn.Module
    text_tower: TextTower
    embed_dim: int
    pad_id: int = 0

    def setup(self):
        self.text_projection = nn.Dense(
            self.embed_dim,
            use_bias=False,
            dtype=self.text_tower.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.normal(self.text_tower.width**-0.5),
        )
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(INIT_LOGIT_SCALE), (), jnp.float32
        )

    def encode_image(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Unnormalised image embeddings [B, embed_dim] (float32)."""
        return self.image_tower(images, train=train).astype(jnp.float32)

    def encode_text(self, tokens: jnp.ndarray) -> jnp.ndarray:
        """Unnormalised text embeddings [B, embed_dim] (float32) of token rows [B, L]."""
        eot_index = jnp.sum(tokens != self.pad_id, axis=-1) - 1
        states = self.text_tower(tokens, eot_index)
        return self.text_projection(states).astype(jnp.float32)

    def scale(self) -> jnp.ndarray:
        """exp(min(logit_scale, log 100)): the temperature's inverse, at most 100."""
        return jnp.exp(jnp.minimum(self.logit_scale, MAX_LOGIT_SCALE))

    def __call__(self, images, tokens, train: bool = False):
        """(normalised image embeddings, normalised text embeddings, scale)."""
        image = losses.l2_normalize(self.encode_image(images, train=train))
        text = losses.l2_normalize(self.encode_text(tokens))
        return image, text, self.scale()


def image_tower(image: dict[str, Any], embed_dim: int, dtype: Any) -> nn.Module:
    """The image tower named by image['name'] ('cnn', 'resnet<depth>', 'vit'); other keys are its attributes."""
    from nml_jax import models

    kwargs = dict(image)
    return models.get(f"clip_{kwargs.pop('name')}", embed_dim, dtype=dtype, **kwargs)


def build(model_config: ml_collections.ConfigDict | dict, pad_id: int = 0) -> CLIP:
    """A CLIP from a config with `embed_dim`, `image` (name + attributes), `text` and `dtype`."""
    cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    dtype = cfg.get("dtype", "float32")
    text = TextTower(dtype=dtype, **cfg["text"])
    return CLIP(
        image_tower=image_tower(cfg["image"], cfg["embed_dim"], dtype),
        text_tower=text,
        embed_dim=cfg["embed_dim"],
        pad_id=pad_id,
    )
