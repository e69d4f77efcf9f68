"""The architectures PyTorch weights can be brought in from: `(source, arch)` -> our model and its inputs.

Each entry names our registered model (nml_jax.models) and its attributes, the Flax -> PyTorch name map, the
input resolution the weights were trained at, the eval resize they were evaluated with (interpolation and the
centre crop's share of the resized short side) and the normalisation they expect (a preprocessing string applied
after the image is converted to RGB floats in [0, 1] and resized).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nml_jax import models
from nml_jax.convert import converters
from nml_jax.models import efficientnet, modified_resnet, resnet

# TensorFlow's EfficientNet-Lite inputs: (x - 127) / 128 on 0..255 pixels, i.e. [0, 1] -> [-127/128, 1].
TF_LITE_NORM = "value_range(-0.9921875, 1.0, 0.0, 1.0)"
IMAGENET_NORM = "normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))"
CLIP_NORM = "normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))"


@dataclasses.dataclass(frozen=True)
class Arch:
    """How to build our model for one PyTorch architecture and read its state dict."""

    model: str  # Name in the nml_jax.models registry.
    kwargs: dict[str, Any]
    module_map: Callable[[tuple[str, ...]], str]
    resolution: int
    normalization: str
    num_outputs: int = 1000  # ImageNet classes (a CLIP tower: its embedding width).
    card_kind: str = "classifier"
    # A whole model's state dict whose tensors of this prefix are the part we take (CLIP: the image tower).
    prefix: str = ""
    fixed_resolution: bool = (
        False  # The weights fit one input size only (CLIP's positional embedding).
    )
    # Eval resize: the short side to resolution / crop_fraction with this interpolation, then the central crop.
    interpolation: str = "bilinear"
    crop_fraction: float = 1.0

    def build(self):
        return models.get(self.model, self.num_outputs, **self.kwargs)

    def apply(self, variables, x):
        """(logits or CLIP embedding, penultimate features or None) of preprocessed images `x`."""
        out = self.build().apply(variables, x)
        return out if isinstance(out, tuple) else (out, None)

    def abstract_variables(self) -> dict:
        """The model's variables as ShapeDtypeStructs (no parameters are initialised)."""
        x = jnp.zeros((1, self.resolution, self.resolution, 3), jnp.float32)
        shapes = jax.eval_shape(lambda: self.build().init(jax.random.key(0), x))
        return {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}


ARCHS: dict[tuple[str, str], Arch] = {
    ("efficientnet_lite", f"lite{v}"): Arch(
        model=f"efficientnet_lite{v}",
        kwargs={},
        module_map=converters.efficientnet_lite_names,
        resolution=efficientnet.VARIANTS[v][2],
        normalization=TF_LITE_NORM,
        # The whole image, bilinear: TensorFlow's reference eval crops 224/256 of the short side (bicubic), which
        # would cut the edges off the small embedded images this model is run on here.
    )
    for v in efficientnet.VARIANTS
}
# torchvision and timm name ResNet tensors alike (conv1, bn1, layerS.J.{conv,bn}K, downsample.{0,1}, fc).
ARCHS.update(
    {
        (source, f"resnet{depth}"): Arch(
            model=f"resnet{depth}",
            kwargs={"stem": "imagenet", "padding": "symmetric"},
            module_map=converters.resnet_names(*resnet.STAGE_SIZES[depth]),
            resolution=224,
            normalization=IMAGENET_NORM,
            crop_fraction=0.875,  # torchvision's and timm's ResNet eval: short side 256, centre 224.
        )
        for source in ("torchvision", "timm")
        for depth in resnet.STAGE_SIZES
    }
)
# OpenAI CLIP and open_clip name the ModifiedResNet alike; a whole CLIP state dict holds it under `visual.`.
ARCHS.update(
    {
        ("open_clip", name): Arch(
            model=f"clip_modified_{variant}",
            kwargs={},
            module_map=converters.modified_resnet_names,
            resolution=224,
            normalization=CLIP_NORM,
            num_outputs=modified_resnet.VARIANTS[variant][2],
            card_kind="clip_image",
            prefix="visual.",
            fixed_resolution=True,
            interpolation="bicubic",  # CLIP's own transform: bicubic short side 224, centre 224.
        )
        for variant, name in (("rn50", "RN50"), ("rn101", "RN101"))
    }
)
SOURCES = tuple(sorted({source for source, _ in ARCHS}))


def get(source: str, arch: str) -> Arch:
    """The entry of (`source`, `arch`); the error lists what is supported."""
    if (source, arch) not in ARCHS:
        supported = ", ".join(f"{s}:{a}" for s, a in sorted(ARCHS))
        raise converters.StateDictError(
            f"No converter for {source}:{arch}; supported: {supported}."
        )
    return ARCHS[(source, arch)]


def convert(source: str, arch: str, state_dict: dict[str, np.ndarray]) -> dict:
    """Our model's variables ({'params', 'batch_stats'}) from a PyTorch `state_dict` of `source`:`arch`.

    Raises:
      StateDictError: unsupported architecture, or missing / unexpected / mis-shaped tensors (all listed).
    """
    entry = get(source, arch)
    if entry.prefix and any(k.startswith(entry.prefix) for k in state_dict):
        # The other towers of a whole model (CLIP's text transformer) are left out on purpose.
        state_dict = {
            k[len(entry.prefix) :]: v for k, v in state_dict.items() if k.startswith(entry.prefix)
        }
    return converters.map_state_dict(
        state_dict, entry.abstract_variables(), entry.module_map, f"{source}:{arch}"
    )
