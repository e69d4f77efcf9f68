"""Class names, prompt templates and class subsets shipped with the package (`nml_jax/data/files/*.txt`).

Nothing is downloaded: the files hold public lists, one entry per line.
- `imagenet_class_names.txt`: the 1,000 human-readable ImageNet class names of the CLIP paper's zero-shot
  evaluation (OpenAI's curated names), in the label order of TFDS `imagenet2012` (whose own label names are
  WordNet ids, e.g. n01440764, useless in a prompt). ImageNet-V2, -Sketch, -A and -R share that label space.
- `clip_imagenet_templates.txt`: the 80 prompt templates of CLIP's ImageNet zero-shot ensemble (`{}` = name).
- `imagenet_a_classes.txt`, `imagenet_r_classes.txt`: the WordNet ids of the 200 classes ImageNet-A and
  ImageNet-R cover (Hendrycks et al. 2021). Their logits are masked to these classes, as in the papers that
  published the sets (argmax over the 200, not the 1,000).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")
# TFDS datasets labelled in ImageNet-1k's label space (label names = WordNet ids in imagenet2012 order).
IMAGENET_LABEL_SPACE = (
    "imagenet2012",
    "imagenet_v2",
    "imagenet_sketch",
    "imagenet_a",
    "imagenet_r",
)
# Test sets that cover only some classes of their label space: dataset -> its subset file.
SUBSETS = {"imagenet_a": "imagenet_a_classes.txt", "imagenet_r": "imagenet_r_classes.txt"}


@functools.cache
def read_lines(name: str) -> tuple[str, ...]:
    """The non-empty lines of `files/<name>`."""
    with open(os.path.join(FILES, name), encoding="utf-8") as f:
        return tuple(line.rstrip("\n") for line in f if line.strip())


def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 human-readable ImageNet class names, in label order."""
    return read_lines("imagenet_class_names.txt")


def clip_imagenet_templates() -> tuple[str, ...]:
    """CLIP's 80 ImageNet prompt templates, each with one `{}` for the class name."""
    return read_lines("clip_imagenet_templates.txt")


def base_name(dataset: str) -> str:
    """`imagenet_v2/matched-frequency:3.0.0` -> `imagenet_v2`."""
    return dataset.split("/")[0].split(":")[0]


def subset(dataset: str, label_names: Sequence[str]) -> np.ndarray | None:
    """The label indices a test set covers (sorted int64), or None when it covers its whole label space.

    Raises:
      ValueError: a class of the shipped subset is missing from `label_names` (another label space).
    """
    file = SUBSETS.get(base_name(dataset))
    if file is None:
        return None
    position = {name: i for i, name in enumerate(label_names)}
    missing = [wnid for wnid in read_lines(file) if wnid not in position]
    if missing:
        raise ValueError(
            f"{dataset}: {len(missing)} classes of its 200-class subset (first {missing[0]!r}) are not labels "
            f"of the dataset ({len(label_names)} labels); expected ImageNet-1k WordNet ids."
        )
    return np.sort([position[wnid] for wnid in read_lines(file)]).astype(np.int64)


def zero_shot_names(dataset: str, label_names: Sequence[str]) -> list[str]:
    """Names to put in prompts: ImageNet's human-readable names for the ImageNet label space, else the
    dataset's label names with underscores as spaces."""
    if base_name(dataset) in IMAGENET_LABEL_SPACE:
        names = imagenet_class_names()
        if len(label_names) != len(names):
            raise ValueError(
                f"{dataset} has {len(label_names)} labels; the ImageNet names are {len(names)}."
            )
        return list(names)
    return [name.replace("_", " ") for name in label_names]
