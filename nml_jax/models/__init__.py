"""The model registry: Flax image classifiers and CLIP image towers, built by name.

Every classifier's `__call__(x, train)` returns `(logits, features)`; a CLIP image tower (`clip_<name>`) maps
images to the shared embedding. `get(name, num_outputs, **kwargs)` builds one by name (`num_outputs` is the
number of classes, or a tower's embedding width); `kwargs` override the model's attributes (e.g.
`dtype='bfloat16'`, `stem='small'`, `width=16`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn

from nml_jax.models import clip, cnn, efficientnet, modified_resnet, resnet, vit

_CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "cnn": lambda num_classes, **kw: cnn.SmallCNN(num_classes=num_classes, **kw),
    **{f"resnet{d}": functools.partial(resnet.resnet, d) for d in resnet.STAGE_SIZES},
    "vit_s16": functools.partial(vit.vit, "s", patch_size=16),
    "vit_b16": functools.partial(vit.vit, "b", patch_size=16),
    "vit_tiny": functools.partial(vit.vit, "tiny", patch_size=4),
    **{
        f"efficientnet_lite{v}": functools.partial(efficientnet.efficientnet_lite, v)
        for v in efficientnet.VARIANTS
    },
}
_CLIP_TOWERS: dict[str, Callable[..., nn.Module]] = {
    "clip_cnn": lambda embed_dim, **kw: clip.CNNTower(embed_dim=embed_dim, **kw),
    "clip_vit": lambda embed_dim, **kw: clip.ViTTower(embed_dim=embed_dim, **kw),
    **{
        f"clip_resnet{d}": functools.partial(
            lambda depth, embed_dim, **kw: clip.ResNetTower(embed_dim=embed_dim, depth=depth, **kw),
            d,
        )
        for d in resnet.STAGE_SIZES
    },
    # CLIP's own ModifiedResNet towers (converted OpenAI / open_clip weights).
    **{
        f"clip_modified_{v}": functools.partial(modified_resnet.modified_resnet, v)
        for v in modified_resnet.VARIANTS
    },
}
_REGISTRY = {**_CLASSIFIERS, **_CLIP_TOWERS}

NAMES = tuple(sorted(_CLASSIFIERS))  # The classifiers supervised pre-training can train.


def get(name: str, num_outputs: int, **kwargs) -> nn.Module:
    """The model called `name` with `num_outputs` classes (or embedding width, for a CLIP tower)."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; expected one of {sorted(_REGISTRY)}.")
    return _REGISTRY[name](num_outputs, **kwargs)


def from_config(model_config, num_classes: int) -> nn.Module:
    """The classifier a config's `model` block names (`name`; the other keys are its attributes)."""
    kwargs = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    return get(kwargs.pop("name"), num_classes, **kwargs)
