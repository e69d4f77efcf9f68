"""Stand-in TFDS datasets for tests: the real names, versions and feature specs, a few tiny JPEGs each.

`write(name, data_dir, {"train": 6, "test": 4})` prepares `name` (e.g. `imagenet2012`, `domainnet/sketch`) in
`data_dir` with TFDS's own builder and writer: the catalog's builder class supplies the version, the feature spec
and the file layout, and only its example generator is replaced. `tfds.builder(name, data_dir=data_dir)` then
reads the stand-in exactly as it would read the real dataset. Images whose spec leaves the size open get the
sizes of `SIZES` in turn (JPEG-encoded by the Image feature, as in the real files); fixed-size specs (CIFAR's
32x32) get their own size. Label names that a real builder reads from its downloaded files (CIFAR-10's) are set
from `LABEL_NAMES`; other such sets (CIFAR-100) keep TFDS's numeric names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from nml_jax import tasks

SIZES = (
    (60, 80),
    (300, 200),
)  # (height, width): one portrait-ish, one landscape, 10x apart in area.

# Every dataset a paper path reads, with the splits it reads (tiny sizes; tests pass their own when they need).
PAPER_SPLITS = {
    "imagenet2012": {"train": 8, "validation": 4},
    "imagenet_v2": {"test": 4},
    "imagenet_sketch": {"test": 4},
    "imagenet_a": {"test": 4},
    "imagenet_r": {"test": 4},
    **{
        f"domainnet/{d}": {"train": 6, "test": 4} for d in ("real", "sketch", "painting", "clipart")
    },
    "cifar10": {"train": 8, "test": 4},
    "cifar100": {"train": 8, "test": 4},
}
# The paper's ID suite: 5 examples in every split its train/test specs name (`train[:80%]` -> train).
for _name, _specs in tasks.PAPER_ID.items():
    _splits = {p.split("[")[0] for spec in _specs for p in spec.split("+")}
    PAPER_SPLITS.setdefault(_name, {split: 5 for split in sorted(_splits)})


# Label names that the real builders read from the downloaded files (the stand-in has none to read).
LABEL_NAMES = {
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}


def _image(shape: Sequence[int | None], size: tuple[int, int], label: int, colour) -> np.ndarray:
    """A uint8 image of `shape` (open dims from `size`): a constant `colour`, else a class-tinted gradient."""
    height = shape[0] or size[0]
    width = shape[1] or size[1]
    channels = shape[2] or 3
    if colour is not None:
        return np.full((height, width, channels), colour, np.uint8)[..., :channels]
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    tint = (np.array([37, 91, 173])[:channels] * (label + 1)) % 256
    return np.clip(0.5 * tint + 120 * y + 60 * x, 0, 255).astype(np.uint8)


def _value(feature, index: int, label: int, colour):
    """A value of `feature` for example `index` (label `label`)."""
    if isinstance(feature, tfds.features.Image):
        return _image(feature.shape, SIZES[index % len(SIZES)], label, colour)
    if isinstance(feature, tfds.features.ClassLabel):
        return (
            label % feature.num_classes
        )  # `label` itself for the label; any other class feature fits too.
    if isinstance(feature, tfds.features.Text):
        return f"standin_{index:05d}.JPEG"
    if isinstance(feature, tfds.features.BBoxFeature):
        return tfds.features.BBox(0.1, 0.2, 0.8, 0.9)
    if isinstance(feature, tfds.features.Tensor):
        return np.zeros([d or 1 for d in feature.shape], feature.np_dtype)
    raise NotImplementedError(f"No stand-in value for feature {feature!r}.")


def write(
    name: str,
    data_dir: str,
    splits: dict[str, int],
    *,
    classes: Iterable[int] | None = None,
    colour: Sequence[int] | None = None,
) -> tfds.core.DatasetBuilder:
    """Prepares the stand-in of TFDS dataset `name` in `data_dir` and returns its builder.

    Args:
      name: a catalog name, with its config (`domainnet/real`); its registered version is used.
      data_dir: the TFDS data_dir to write into.
      splits: split name -> number of examples.
      classes: the labels examples cycle through (default the first min(C, 4) classes).
      colour: every image one constant colour (for checks that no padding reaches the encoder).
    """
    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    label_feature = features["label"]
    if name in LABEL_NAMES:
        label_feature.names = list(LABEL_NAMES[name])
    labels = (
        list(classes) if classes is not None else list(range(min(label_feature.num_classes, 4)))
    )

    def examples(split: str, count: int):
        for i in range(count):
            label = labels[i % len(labels)]
            values = {k: _value(f, i, label, colour) for k, f in features.items()}
            yield f"{split}_{i}", values

    # Only the example source changes; TFDS encodes, shards, writes and records split sizes as for the real set.
    builder._split_generators = lambda dl_manager: {
        split: examples(split, count) for split, count in splits.items()
    }
    tfds.disable_progress_bar()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
            manual_dir=os.path.join(data_dir, "downloads", "manual"),
        )
    )
    return tfds.builder(name, data_dir=data_dir)


def write_all(data_dir: str, names: Iterable[str] | None = None) -> str:
    """Writes the stand-ins of `names` (default every set of PAPER_SPLITS) into `data_dir`; returns it."""
    for name in names or PAPER_SPLITS:
        write(name, data_dir, PAPER_SPLITS[name])
    return data_dir
