"""Stage `features`: frozen features of every downstream split, cached on disk, or read from an .npz file.

The frozen encoder runs once per downstream split (and once per augmented view for a view bank); features and
labels are cached on disk, keyed by checkpoint, dataset, split and preprocessing, so the tuning loop never runs
the encoder. Features made by any other model (a PyTorch model, an embedding API, a language model) enter as an
`.npz` file:

    train_features [N, D] float, train_labels [N] int, test_features [M, D], test_labels [M],
    optional train_views [V, N, D] (augmented views of the train examples, a view bank),
    optional ood_<name>_features [K, D] and ood_<name>_labels [K] for each OOD test set <name>,
    optional num_classes (scalar; default max(train_labels) + 1).

The file is read without pickle and validated (shapes, dtypes, label range, non-finite values).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from typing import Any

import numpy as np
from absl import logging

from nml_jax import config_lib, data, defaults, encoders, files, parallel, tasks


class FeatureFileError(ValueError):
    """A features .npz is malformed; the message names the file, the key and what was expected."""


@dataclasses.dataclass
class TaskFeatures:
    """Everything a transfer head needs for one task: train views, labels and the test sets."""

    name: str
    kind: str
    train_domain: str
    train_views: np.ndarray  # [V, N, D] float32; view 0 is the un-augmented features.
    train_labels: np.ndarray  # [N] int64
    tests: dict[str, tuple[np.ndarray, np.ndarray]]  # domain -> (features [M, D], labels [M])
    num_classes: int
    # Test domain -> where its features came from ("dataset[split]", or "file.npz:key").
    test_sources: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def train_features(self) -> np.ndarray:
        return self.train_views[0]


# ---------------------------------------------------------------------------------------------------------------
# Black-box features from an .npz file.

_OOD_KEY = re.compile(r"^ood_(?P<name>.+)_(?P<what>features|labels)$")
_KNOWN = {
    "train_features",
    "train_labels",
    "test_features",
    "test_labels",
    "train_views",
    "num_classes",
}


def _features(path: str, key: str, array: np.ndarray, dim: int | None) -> np.ndarray:
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise FeatureFileError(
            f"{path}: {key} has dtype {array.dtype} and shape {array.shape}; expected a float array [N, D]."
        )
    if dim is not None and array.shape[1] != dim:
        raise FeatureFileError(
            f"{path}: {key} has dimension {array.shape[1]}; train_features has {dim}."
        )
    if not np.all(np.isfinite(array)):
        bad = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise FeatureFileError(f"{path}: {key} holds non-finite values (first in row {bad}).")
    return array.astype(np.float32)


def _labels(
    path: str, key: str, array: np.ndarray, rows: int, num_classes: int | None
) -> np.ndarray:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise FeatureFileError(
            f"{path}: {key} has dtype {array.dtype} and shape {array.shape}; expected integer labels [N]."
        )
    if array.shape[0] != rows:
        raise FeatureFileError(
            f"{path}: {key} has {array.shape[0]} labels for {rows} feature rows."
        )
    if array.size and array.min() < 0:
        raise FeatureFileError(f"{path}: {key} holds a negative label ({int(array.min())}).")
    if num_classes is not None and array.size and array.max() >= num_classes:
        raise FeatureFileError(
            f"{path}: {key} holds label {int(array.max())}, outside the source's {num_classes} classes "
            f"(0..{num_classes - 1}); OOD test sets must use the training set's label space."
        )
    return array.astype(np.int64)


def load_npz(path: str, name: str | None = None) -> list[TaskFeatures]:
    """Reads and validates a black-box features file; returns its ID task and, if OOD sets exist, its OOD task."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Features file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise FeatureFileError(
            f"{path}: could not read without pickle ({e}); save plain numeric arrays."
        ) from e
    missing = sorted(
        k
        for k in ("train_features", "train_labels", "test_features", "test_labels")
        if k not in arrays
    )
    if missing:
        raise FeatureFileError(f"{path}: missing {missing}; found {sorted(arrays)}.")
    unknown = sorted(k for k in arrays if k not in _KNOWN and not _OOD_KEY.match(k))
    if unknown:
        raise FeatureFileError(
            f"{path}: unknown keys {unknown}; expected {sorted(_KNOWN)} and ood_<name>_*."
        )
    name = name or os.path.splitext(os.path.basename(path))[0]
    train = _features(path, "train_features", arrays["train_features"], None)
    dim = train.shape[1]
    train_labels = _labels(path, "train_labels", arrays["train_labels"], len(train), None)
    num_classes = (
        int(arrays["num_classes"]) if "num_classes" in arrays else int(train_labels.max()) + 1
    )
    _labels(path, "train_labels", train_labels, len(train), num_classes)
    views = train[None]
    if "train_views" in arrays:
        views = arrays["train_views"]
        if views.ndim != 3 or views.shape[1:] != train.shape:
            raise FeatureFileError(
                f"{path}: train_views has shape {views.shape}; expected [V, {len(train)}, {dim}]."
            )
        views = np.stack(
            [_features(path, f"train_views[{v}]", x, dim) for v, x in enumerate(views)]
        )
    test = _features(path, "test_features", arrays["test_features"], dim)
    id_tests = {
        name: (test, _labels(path, "test_labels", arrays["test_labels"], len(test), num_classes))
    }
    result = [
        TaskFeatures(
            name,
            "id",
            name,
            views,
            train_labels,
            id_tests,
            num_classes,
            {name: f"{path}:test_features"},
        )
    ]
    ood_names = sorted({m["name"] for k in arrays if (m := _OOD_KEY.match(k))})
    ood_tests = {}
    for ood in ood_names:
        f_key, l_key = f"ood_{ood}_features", f"ood_{ood}_labels"
        if f_key not in arrays or l_key not in arrays:
            raise FeatureFileError(f"{path}: OOD set {ood!r} needs both {f_key} and {l_key}.")
        feats = _features(path, f_key, arrays[f_key], dim)
        ood_tests[ood] = (feats, _labels(path, l_key, arrays[l_key], len(feats), num_classes))
    if ood_tests:
        sources = {ood: f"{path}:ood_{ood}_features" for ood in ood_tests}
        result.append(
            TaskFeatures(
                f"{name}_ood", "ood", name, views, train_labels, ood_tests, num_classes, sources
            )
        )
    return result


def save_npz(path: str, task_features: list[TaskFeatures]) -> None:
    """Writes an ID task (and its OOD task, if any) in the black-box format above."""
    main = next(t for t in task_features if t.kind == "id")
    ((test, test_labels),) = main.tests.values()
    arrays = {
        "train_features": main.train_views[0],
        "train_labels": main.train_labels,
        "test_features": test,
        "test_labels": test_labels,
        "num_classes": np.int64(main.num_classes),
    }
    if len(main.train_views) > 1:
        arrays["train_views"] = main.train_views
    for t in task_features:
        if t.kind == "ood":
            for domain, (feats, labels) in t.tests.items():
                arrays[f"ood_{domain}_features"], arrays[f"ood_{domain}_labels"] = feats, labels
    files.write_npz(path, arrays)


# ---------------------------------------------------------------------------------------------------------------
# Features from the project's own encoders, cached on disk.


def view_augment(
    images: np.ndarray, rng: np.random.Generator, max_shift: int, flip: bool
) -> np.ndarray:
    """One augmented view: a random translation by up to `max_shift` pixels (zero fill) and an optional
    horizontal flip per image."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    out = np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if flip:
        flips = rng.random(n) < 0.5
        out[flips] = out[flips, :, ::-1]
    return out


def match_input(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Converts uint8 images [N,H,W,C] to the encoder's input (H, W, C): RGB <-> grey (ITU-R 601 luma), resize."""
    channels = images.shape[-1]
    if channels == 3 and shape[-1] == 1:
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        images = np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
    elif channels == 1 and shape[-1] == 3:
        images = np.repeat(images, 3, axis=-1)
    elif channels != shape[-1]:
        raise ValueError(
            f"Cannot feed {channels}-channel images to an encoder that takes {shape[-1]}."
        )
    if images.shape[1:3] != tuple(shape[:2]):
        import tensorflow as tf

        images = tf.image.resize(images, shape[:2], antialias=True).numpy()
        images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    return images


def cache_key(
    encoder_fingerprint: str, domain: tasks.Domain, view: int, view_spec: dict[str, Any]
) -> str:
    blob = json.dumps(
        {
            "encoder": encoder_fingerprint,
            "dataset": domain.dataset,
            "split": domain.split,
            "view": view,
            "views": view_spec if view else None,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode(encoder, images: np.ndarray, chunk: int) -> np.ndarray:
    """`encoder.features` over `images`, `chunk` images at a time (the encoder pads its own batches)."""
    out = [
        np.asarray(encoder.features(images[i : i + chunk])) for i in range(0, len(images), chunk)
    ]
    return (
        np.concatenate(out).astype(np.float32)
        if out
        else np.zeros((0, encoder.feature_dim), np.float32)
    )


def domain_features(
    encoder,
    domain: tasks.Domain,
    *,
    cache_dir: str,
    data_dir: str | None = None,
    chunk_size: int = 4096,
    views: int = 0,
    view_spec: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of `domain` as [1 + views, N, D] (view 0 un-augmented) and labels [N], read from the cache when
    present. Each view is a cache entry of its own, so asking for more views later reuses the first ones."""
    view_spec = dict(view_spec or {"max_shift": 2, "flip": False, "seed": 0})
    split = None
    stacked = []
    for view in range(1 + views):
        key = cache_key(encoder.fingerprint, domain, view, view_spec)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{domain.dataset}_{domain.split}")
        path = os.path.join(cache_dir, f"{safe}_v{view}_{key}.npz")
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as f:
                stacked.append(f["features"])
                labels = f["labels"]
            continue
        if split is None:
            split = data.load(domain.dataset, domain.split, data_dir=data_dir)
            images = match_input(split["image"], encoder.input_shape)
            labels = split["label"].astype(np.int64)
        start = time.time()
        inputs = images
        if view:
            rng = np.random.default_rng([view_spec["seed"], view])
            inputs = view_augment(images, rng, view_spec["max_shift"], view_spec["flip"])
        feats = encode(encoder, inputs, chunk_size)
        logging.info(
            "features %s[%s] view %d: %s in %.1fs",
            domain.dataset,
            domain.split,
            view,
            feats.shape,
            time.time() - start,
        )
        if parallel.is_main_process():
            files.write_npz(path, {"features": feats, "labels": labels})
        stacked.append(feats)
    return np.stack(stacked), labels


def task_features(encoder, task: tasks.Task, num_classes: int, **kwargs) -> TaskFeatures:
    """Features for one task; test domains never get augmented views."""
    train_views, train_labels = domain_features(encoder, task.train, **kwargs)
    test_kwargs = {**kwargs, "views": 0}
    tests = {}
    for domain in task.tests:
        feats, labels = domain_features(encoder, domain, **test_kwargs)
        tests[domain.name] = (feats[0], labels)
    sources = {d.name: f"{d.dataset}[{d.split}]" for d in task.tests}
    return TaskFeatures(
        task.name,
        task.kind,
        task.train.name,
        train_views,
        train_labels,
        tests,
        num_classes,
        sources,
    )


# ---------------------------------------------------------------------------------------------------------------
# The stage.


def validate(config) -> None:
    """Raises ConfigError naming the first invalid key of the settings that choose the features."""
    config_lib.check_choice("suite", config.suite, defaults.SUITES)
    if config.get("train_limit") is not None:
        config_lib.check_positive_int("train_limit", config.train_limit)
    config_lib.check_positive_int("feature_chunk_size", config.feature_chunk_size)
    if config.views.count:
        config_lib.check_positive_int("views.count", config.views.count)
    else:
        config_lib.check_choice("views.count", config.views.count, [0])
    config_lib.check_range("views.max_shift", config.views.max_shift, 0, 64)
    if config.get("features_npz") and config.get("pretrained"):
        raise config_lib.ConfigError(
            "Set one of config.features_npz and config.pretrained, not both."
        )


def suite(config) -> list[tasks.Task]:
    """The downstream tasks the config names (`config.suite`, with `config.train_limit` for the embedded one)."""
    if config.suite == "embedded":
        return tasks.embedded_suite(config.get("train_limit"))
    return tasks.SUITES[config.suite]()


def encoder_source(config, workdir: str) -> str:
    """The pre-training workdir whose checkpoint is the encoder: `config.pretrained` or this workdir."""
    return config.get("pretrained") or workdir


def load_task_features(config, workdir: str) -> tuple[list[TaskFeatures], dict[str, Any]]:
    """Features of every task, and what identifies them (`noise_ratio`, `seed`, `source`, `pretrain_dataset`).

    For an encoder, the noise ratio and seed are those of the model card of the model that made the features.
    """
    npz = config.get("features_npz")
    if npz:
        paths = [npz] if isinstance(npz, str) else list(npz)
        noise_ratio = config.get("noise_ratio")
        meta = {
            "noise_ratio": math.nan if noise_ratio is None else noise_ratio,
            "seed": config.seed,
            "source": ",".join(paths),
            "pretrain_dataset": None,
        }
        return [t for path in paths for t in load_npz(path)], meta
    source = encoder_source(config, workdir)
    encoder = encoders.restore(source)
    cache_dir = config.get("feature_cache_dir") or os.path.join(source, "features")
    view_spec = config.views.to_dict()
    num_views = view_spec.pop("count")
    per_task = [
        task_features(
            encoder,
            task,
            data.num_classes(task.train.dataset, data_dir=config.get("data_dir")),
            cache_dir=cache_dir,
            data_dir=config.get("data_dir"),
            chunk_size=config.feature_chunk_size,
            views=num_views,
            view_spec=view_spec,
        )
        for task in suite(config)
    ]
    meta = {
        "noise_ratio": float(encoder.card["noise_ratio"]),
        "seed": int(encoder.card["seed"]),
        "source": encoder.fingerprint,
        "pretrain_dataset": encoder.config.get("dataset"),
    }
    return per_task, meta


def run(config, workdir: str) -> dict[str, Any]:
    """Stage `features`: extract (or find cached) features for every task of the suite."""
    task_features, meta = load_task_features(config, workdir)
    for t in task_features:
        shapes = {d: f.shape for d, (f, _) in t.tests.items()}
        print(f"{t.name}: train views {t.train_views.shape}, tests {shapes}")
    return {"task_features": task_features, "meta": meta}
