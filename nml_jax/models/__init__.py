"""Flax image classifiers; every model's `__call__(x, train)` returns `(logits, features)`.

`get(name, num_classes, **kwargs)` builds one by name; `kwargs` override the model's attributes
(e.g. `dtype='bfloat16'`, `stem='small'`, `width=16`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn

from nml_jax.models import cnn, resnet, vit

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "cnn": lambda num_classes, **kw: cnn.SmallCNN(num_classes=num_classes, **kw),
    **{f"resnet{d}": functools.partial(resnet.resnet, d) for d in resnet.STAGE_SIZES},
    "vit_s16": functools.partial(vit.vit, "s", patch_size=16),
    "vit_b16": functools.partial(vit.vit, "b", patch_size=16),
    "vit_tiny": functools.partial(vit.vit, "tiny", patch_size=4),
}

NAMES = tuple(sorted(_REGISTRY))


def get(name: str, num_classes: int, **kwargs) -> nn.Module:
    """The model called `name` (one of NAMES) with `num_classes` outputs."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; expected one of {list(NAMES)}.")
    return _REGISTRY[name](num_classes, **kwargs)
