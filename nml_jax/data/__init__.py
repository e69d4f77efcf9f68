"""Datasets through TFDS: embedded offline builders, in-memory loading, preprocessing and input pipelines.

`load(name, split)` returns a whole split as numpy arrays. Embedded sets (`EMBEDDED`, built offline from files on
the machine on first use) and any prepared TFDS dataset (e.g. `imagenet2012` in a `data_dir`) go through the
same code path; a dataset that is not prepared fails with a message that says how to prepare it.
"""

from __future__ import annotations

import difflib
import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

# TensorFlow only feeds data; the accelerators belong to JAX.
tf.config.set_visible_devices([], "GPU")

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from nml_jax import config_lib, files  # noqa: E402
from nml_jax.data import aircraft  # noqa: E402, F401  (registers the `fgvc_aircraft` builder)
from nml_jax.data.builders import EMBEDDED, EmbeddedSet, embedded_names  # noqa: E402

__all__ = [
    "EMBEDDED",
    "READ_CONFIG",
    "DatasetError",
    "EmbeddedSet",
    "builder",
    "check_name",
    "class_names",
    "default_data_dir",
    "embedded_names",
    "limit_split",
    "load",
    "load_labels",
    "num_classes",
    "num_examples",
]

DATA_DIR_ENV = "NML_JAX_DATA_DIR"
# Sequential, deterministic reads: example i of a split is the same row for `load` and the streaming pipelines.
READ_CONFIG = tfds.ReadConfig(interleave_cycle_length=1, shuffle_seed=0, try_autocache=False)


def default_data_dir() -> str:
    """`$NML_JAX_DATA_DIR`, else `~/.cache/nml_jax/tensorflow_datasets`."""
    return os.environ.get(DATA_DIR_ENV) or os.path.expanduser(
        "~/.cache/nml_jax/tensorflow_datasets"
    )


def _resolve(data_dir: str | None) -> str:
    """The data_dir as TFDS gets it: a local path made absolute, or a URL (gs://...) unchanged."""
    return files.absolute(data_dir or default_data_dir())


class DatasetError(config_lib.UserError, ValueError):
    """A dataset name is neither an embedded set nor a TFDS dataset; the message names it and its config key."""


def _grouped(names) -> str:
    """`a, b/{x,y}`: the names, with the configs of one family in braces."""
    families: dict[str, list[str]] = {}
    for name in sorted(names):
        family, _, config = name.partition("/")
        families.setdefault(family, []).append(config)
    return ", ".join(
        f"{family}/{{{','.join(configs)}}}" if configs != [""] else family
        for family, configs in families.items()
    )


def _unknown(name: str, key: str | None) -> DatasetError:
    """One line: the unknown name, the config key, the embedded names, and a close match if there is one."""
    where = f" (config.{config_lib.key_name(key)})" if key else ""
    tfds_names = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name, [*EMBEDDED, *tfds_names], n=1, cutoff=0.75)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return DatasetError(
        f"Unknown dataset {name!r}{where}. {hint}Embedded datasets: {_grouped(EMBEDDED)}; a TFDS "
        f"dataset (e.g. imagenet2012) must be prepared in data_dir (default {default_data_dir()})."
    )


def check_name(name: str, key: str | None = "dataset") -> None:
    """Raises DatasetError unless `name` is an embedded set or a registered TFDS dataset (`name[/config][:version]`).

    Whether a TFDS dataset is prepared is checked when it is loaded; this check reads no data.
    """
    if name in EMBEDDED:
        return
    base = name.split("/")[0].split(":")[0] if isinstance(name, str) else None
    if not base or base not in tfds.list_builders(with_community_datasets=False):
        raise _unknown(name, key)


@functools.cache
def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    try:
        result = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        # TFDS's own message lists every registered dataset (hundreds of lines).
        raise _unknown(name, None) from None
    if name in EMBEDDED:
        if not result.is_prepared():
            tfds.disable_progress_bar()  # Seconds-long local builds; the bars only clutter logs.
            result.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    compute_stats=tfds.download.ComputeStatsMode.SKIP
                )
            )
    elif not result.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {data_dir}. Prepare it once with "
            f"`tfds build {name} --data_dir={data_dir}`; datasets with manual downloads (e.g. imagenet2012) need "
            f"their files in {os.path.join(data_dir, 'downloads', 'manual')} first. Then pass data_dir={data_dir!r} "
            f"or set ${DATA_DIR_ENV}."
        )
    return result


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of `name` (embedded sets are built on first use)."""
    return _builder(name, _resolve(data_dir))


def load(name: str, split: str, *, data_dir: str | None = None) -> dict[str, np.ndarray]:
    """The whole `split` (TFDS slicing allowed, e.g. `train[:500]`) in memory.

    Only the embedded sets (at most ~60 MB each) are cached in-process; a TFDS dataset is read again on every
    call, so no caller keeps a large split alive by accident (`features` streams those instead of loading).

    Returns:
      {'image': uint8 [N, H, W, C], 'label': int32 [N]}; the arrays are read-only because cached ones are
      shared by every caller (copy before changing them).
    """
    if name in EMBEDDED:
        return _load_embedded(name, split, _resolve(data_dir))
    return _read(name, split, _resolve(data_dir))


def _read(name: str, split: str, data_dir: str) -> dict[str, np.ndarray]:
    ds = _builder(name, data_dir).as_dataset(
        split=split, batch_size=-1, shuffle_files=False, read_config=READ_CONFIG
    )
    data = tfds.as_numpy(ds)
    missing = {"image", "label"} - set(data)
    if missing:
        raise ValueError(
            f"Dataset {name!r} has no {sorted(missing)} feature; it has {sorted(data)}."
        )
    image, label = data["image"], data["label"]
    if image.ndim != 4 or image.dtype != np.uint8:
        raise ValueError(
            f"{name}/{split}: images {image.shape} {image.dtype}; expected uint8 [N, H, W, C]."
        )
    result = {"image": image, "label": label.astype(np.int32)}
    for value in result.values():
        value.flags.writeable = False
    return result


_load_embedded = functools.lru_cache(maxsize=64)(_read)


def num_classes(name: str, data_dir: str | None = None) -> int:
    """Number of classes of `name`'s `label` feature."""
    if name in EMBEDDED:
        return len(EMBEDDED[name].class_names)
    return builder(name, data_dir).info.features["label"].num_classes


def class_names(name: str, data_dir: str | None = None) -> list[str]:
    """Class names of `name`'s `label` feature, in label order."""
    if name in EMBEDDED:
        return list(EMBEDDED[name].class_names)
    return list(builder(name, data_dir).info.features["label"].names)


def load_labels(name: str, split: str, *, data_dir: str | None = None) -> np.ndarray:
    """The labels of `split` in row order (the same rows as `load` and the streams), without decoding images."""
    if name in EMBEDDED:
        return load(name, split, data_dir=data_dir)["label"].astype(np.int64)
    ds = builder(name, data_dir).as_dataset(
        split=split,
        shuffle_files=False,
        read_config=READ_CONFIG,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    batches = ds.map(lambda x: x["label"]).batch(8192).prefetch(2)
    return np.concatenate([b for b in tfds.as_numpy(batches)] or [np.zeros(0)]).astype(np.int64)


def num_examples(name: str, split: str, data_dir: str | None = None) -> int:
    """Number of examples of `split` (TFDS slicing allowed)."""
    return builder(name, data_dir).info.splits[split].num_examples


def limit_split(name: str, split: str, limit: int | None, data_dir: str | None = None) -> str:
    """The first `limit` examples of `split` as a TFDS split string (`split` itself when it has no more).

    Works for any split TFDS accepts, unions and slices included: `train+validation` with limit 1200 and 1020
    train examples is `train[:1020]+validation[:180]`.
    """
    if not limit:
        return split
    infos = builder(name, data_dir).info.splits
    # (split name, first row, end row) of each piece; TFDS leaves the ends of an unsliced piece as None.
    pieces = [
        (p.splitname, p.from_ or 0, infos[p.splitname].num_examples if p.to is None else p.to)
        for p in tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    ]
    if sum(end - start for _, start, end in pieces) <= limit:
        return split
    parts, left = [], limit
    for piece, start, end in pieces:
        take = min(end - start, left)
        if take:
            # `train[:N]` when the piece starts at 0: the spelling of earlier feature caches.
            parts.append(f"{piece}[{start or ''}:{start + take}]")
        left -= take
    return "+".join(parts)
