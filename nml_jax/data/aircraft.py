"""TFDS builder `fgvc_aircraft`: FGVC-Aircraft 2013b at the variant level (100 classes), from the manual download.

The paper's ID suite (and the official NMTune code, through torchvision) uses FGVC-Aircraft, which the TFDS
catalog does not have. This builder reads the official archive: put `fgvc-aircraft-2013b.tar.gz` (from
https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/), or the `fgvc-aircraft-2013b` directory extracted from
it, into `<data_dir>/downloads/manual/`, then run `tfds build` with `--imports=nml_jax.data` (or let
`data.builder('fgvc_aircraft')` fail with the same instructions). Splits `train` (3,334), `val` (3,333) and
`test` (3,333) are the official `images_variant_{split}.txt` lists; images keep the 20-pixel copyright banner
at the bottom, as torchvision's loader does. The variant names (`files/fgvc_aircraft_variants.txt`) are checked
against the archive's `variants.txt` when the dataset is built.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from nml_jax.data import classes

_ARCHIVE = "fgvc-aircraft-2013b.tar.gz"
_ROOT = "fgvc-aircraft-2013b"
SPLITS = ("train", "val", "test")


class FgvcAircraft(tfds.core.GeneratorBasedBuilder):
    """FGVC-Aircraft 2013b, variant level, from the manual download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "FGVC-Aircraft 2013b, 100 variants, official train/val/test."}  # noqa: RUF012
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Put {_ARCHIVE} from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (or its extracted {_ROOT} "
        "directory) in the manual directory."
    )
    # No checksums file or metadata directory next to this module (as the embedded builders).
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="FGVC-Aircraft 2013b (Maji et al. 2013), variant level, 100 classes.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(
                        names=list(classes.read_lines("fgvc_aircraft_variants.txt"))
                    ),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
        )

    def _split_generators(self, dl_manager):
        manual = dl_manager.manual_dir
        root = os.path.join(manual, _ROOT)
        if not os.path.isdir(root):
            archive = os.path.join(manual, _ARCHIVE)
            if not os.path.exists(archive):
                raise FileNotFoundError(
                    f"Neither {root} nor {archive} exists. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
            root = os.path.join(dl_manager.extract(archive), _ROOT)
        data_dir = os.path.join(root, "data")
        with open(os.path.join(data_dir, "variants.txt"), encoding="utf-8") as f:
            found = [line.strip() for line in f if line.strip()]
        expected = self.info.features["label"].names
        if found != expected:
            first = next(
                (i for i, (a, b) in enumerate(zip(found, expected)) if a != b),
                min(len(found), len(expected)),
            )
            raise ValueError(
                f"{data_dir}/variants.txt lists {len(found)} variants; this builder names {len(expected)}, and "
                f"they first differ at line {first + 1}."
            )
        return {split: self._generate_examples(data_dir, split) for split in SPLITS}

    def _generate_examples(self, data_dir: str, split: str):
        with open(os.path.join(data_dir, f"images_variant_{split}.txt"), encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                image_id, variant = line.rstrip("\n").split(" ", 1)
                yield (
                    image_id,
                    {
                        "image": os.path.join(data_dir, "images", f"{image_id}.jpg"),
                        "label": variant,
                        "file_name": f"{image_id}.jpg",
                    },
                )
