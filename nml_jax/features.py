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
import io
import json
import math
import os
import re
import time
import zipfile
import zlib
from typing import Any

import jax
import numpy as np
from absl import logging

from nml_jax import config_lib, data, defaults, encoders, files, parallel, tasks
from nml_jax.convert import importer
from nml_jax.data import classes as data_classes


class FeatureFileError(config_lib.UserError, ValueError):
    """A features .npz is malformed; the message names the file, the key and what was expected."""


@dataclasses.dataclass(frozen=True)
class OnlineViews:
    """What NMTune's online mode needs to draw two fresh augmented views of a training batch at every step and
    run the frozen encoder on them (tuning.fit)."""

    inputs: (
        np.ndarray
    )  # [N, H, W, C] float32: the encoder's preprocessed inputs of the training set.
    apply_fn: Any  # (variables, inputs [B, H, W, C]) -> features [B, D]
    variables: Any
    scale: tuple[float, float]
    flip: bool


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
    # Set in the online views mode: MLP/NMTune views are drawn per step.
    online: OnlineViews | None = None
    # Test domain -> the label indices it covers, when only some (ImageNet-A/R); its logits are masked to them.
    test_classes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def train_features(self) -> np.ndarray:
        return self.train_views[0]


# ---------------------------------------------------------------------------------------------------------------
# Black-box features from an .npz file.

_OOD_KEY = re.compile(r"^ood_(?P<name>.+)_(?P<what>features|labels)$")
_REQUIRED = ("train_features", "train_labels", "test_features", "test_labels")
_KNOWN = {*_REQUIRED, "train_views", "num_classes"}
_FORMAT = "an .npz archive of plain numeric arrays written by numpy.savez"


def _what_it_is(head: bytes) -> str:
    """What a file that is not a zip archive looks like, from its first bytes."""
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array, not an .npz archive (save with np.savez(path, train_features=..., ...))"
    if head.startswith(b"PK"):
        return "a truncated or damaged zip archive (write it again)"
    if head.startswith(b"\x80"):
        return "pickled Python data"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"a text file (it starts with {head.decode('ascii')!r})"
    return f"not an .npz archive (it starts with {head!r})"


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at `path`, read without pickle.

    Raises:
      FeatureFileError: the path is missing, a directory, empty, not a zip, a damaged zip, or holds a member
        that is not a plain .npy array (object arrays need pickle and are refused).
    """
    if not files.exists(path):
        raise FeatureFileError(f"Features file {path} does not exist.")
    if files.isdir(path):
        raise FeatureFileError(f"Features file {path} is a directory; expected {_FORMAT}.")
    with files.open_file(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise FeatureFileError(f"Features file {path} is empty (0 bytes); expected {_FORMAT}.")
    # A URL is read whole once: zipfile and np.load seek, which is slow (or unsupported) on object stores.
    source = io.BytesIO(files.read_bytes(path)) if files.is_url(path) else path
    if not zipfile.is_zipfile(source):
        raise FeatureFileError(f"Features file {path} is {_what_it_is(head)}; expected {_FORMAT}.")
    if not isinstance(source, str):
        source.seek(0)
    arrays = {}
    try:
        with np.load(source, allow_pickle=False) as archive:
            for key in archive.files:
                try:
                    value = archive[key]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise FeatureFileError(
                            f"{path}: {key} holds Python objects (dtype=object), which only pickle can read; "
                            "save plain numeric arrays."
                        ) from None
                    raise FeatureFileError(
                        f"{path}: {key} is not a valid .npy array ({e})."
                    ) from None
                if not isinstance(value, np.ndarray):
                    raise FeatureFileError(
                        f"{path}: member {key!r} of the archive is not a .npy array; expected {_FORMAT}."
                    )
                arrays[key] = value
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise FeatureFileError(
            f"{path} is a damaged .npz archive ({type(e).__name__}: {e}); write it again."
        ) from None
    return arrays


def _features(path: str, key: str, array: np.ndarray, dim: int | None) -> np.ndarray:
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise FeatureFileError(
            f"{path}: {key} has dtype {array.dtype} and shape {array.shape}; expected a float array [N, D]."
        )
    if not array.shape[0] or not array.shape[1]:
        raise FeatureFileError(
            f"{path}: {key} has shape {array.shape}; expected at least one row and one feature."
        )
    if dim is not None and array.shape[1] != dim:
        raise FeatureFileError(
            f"{path}: {key} has dimension {array.shape[1]}; train_features has {dim}."
        )
    if not np.all(np.isfinite(array)):
        row, col = (int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise FeatureFileError(
            f"{path}: {key} holds non-finite values (first {array[row, col]} in row {row}, column {col})."
        )
    return array.astype(np.float32)


def _labels(
    path: str, key: str, array: np.ndarray, rows: int, num_classes: int | None
) -> np.ndarray:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        fraction = ""
        if array.ndim == 1 and np.issubdtype(array.dtype, np.floating):
            bad = np.flatnonzero(array != np.round(array))
            fraction = (
                f" (row {bad[0]} is {array[bad[0]]})"
                if bad.size
                else " (whole numbers: save them with .astype(np.int64))"
            )
        raise FeatureFileError(
            f"{path}: {key} has dtype {array.dtype} and shape {array.shape}{fraction}; "
            "expected integer labels [N]."
        )
    if array.shape[0] != rows:
        raise FeatureFileError(
            f"{path}: {key} has {array.shape[0]} labels for {rows} feature rows."
        )
    if array.min() < 0:
        row = int(np.argmin(array))
        raise FeatureFileError(
            f"{path}: {key} holds a negative label ({int(array[row])} in row {row}); expected 0..C-1."
        )
    if num_classes is not None and array.max() >= num_classes:
        row = int(np.argmax(array))
        raise FeatureFileError(
            f"{path}: {key} holds label {int(array[row])} (row {row}), outside the training set's "
            f"{num_classes} classes (0..{num_classes - 1}); test and OOD sets use the training set's labels."
        )
    return array.astype(np.int64)


def _num_classes(path: str, arrays: dict[str, np.ndarray], train_labels: np.ndarray) -> int:
    """`num_classes` of the file (a whole number >= 2 above every train label), else max(train_labels) + 1."""
    if "num_classes" not in arrays:
        return int(train_labels.max()) + 1
    value = arrays["num_classes"]
    whole = (
        value.size == 1
        and (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating))
        and float(value.reshape(())) == round(float(value.reshape(())))
    )
    if not whole:
        raise FeatureFileError(
            f"{path}: num_classes={value.tolist()!r} (dtype {value.dtype}, shape {value.shape}); expected "
            "a whole number, e.g. np.int64(10)."
        )
    num_classes = int(value.reshape(()))
    if num_classes < 2:
        raise FeatureFileError(f"{path}: num_classes={num_classes}; expected at least 2 classes.")
    if train_labels.max() >= num_classes:
        raise FeatureFileError(
            f"{path}: num_classes={num_classes}, but train_labels holds label {int(train_labels.max())}."
        )
    return num_classes


def load_npz(path: str, name: str | None = None) -> list[TaskFeatures]:
    """Reads and validates a black-box features file; returns its ID task and, if OOD sets exist, its OOD task.

    Raises:
      FeatureFileError: anything wrong with the file; the message names the file, the key and what was expected.
    """
    arrays = _read_arrays(path)
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise FeatureFileError(f"{path}: missing {missing}; found {sorted(arrays)}.")
    unknown = sorted(k for k in arrays if k not in _KNOWN and not _OOD_KEY.match(k))
    if unknown:
        raise FeatureFileError(
            f"{path}: unknown keys {unknown}; expected {sorted(_KNOWN)} and ood_<name>_features/labels."
        )
    name = name or os.path.splitext(os.path.basename(path))[0]
    train = _features(path, "train_features", arrays["train_features"], None)
    dim = train.shape[1]
    train_labels = _labels(path, "train_labels", arrays["train_labels"], len(train), None)
    num_classes = _num_classes(path, arrays, train_labels)
    present = np.unique(train_labels)
    if len(present) < 2:
        raise FeatureFileError(
            f"{path}: train_labels hold only class {int(present[0])}; a classifier needs at least 2 classes "
            "to be trained and scored."
        )
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


def augmented_view(
    encoder, inputs: np.ndarray, view: int, spec: dict[str, Any], chunk: int
) -> np.ndarray:
    """Features [N, D] of augmented view `view` of preprocessed inputs [N, H, W, C]: view v of example i is
    `augment.augment_one` with the key of (spec['seed'], v, i), so it never depends on the chunking."""
    from nml_jax import augment

    run = augment.jitted(tuple(spec["scale"]), bool(spec["flip"]))
    parts = []
    for i in range(0, len(inputs), chunk):
        rows = np.arange(i, min(i + chunk, len(inputs)))
        keys = augment.example_keys(spec["seed"], view, rows)
        parts.append(encoder.embed(np.asarray(run(keys, inputs[rows]))))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.feature_dim), np.float32)


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
    encoder_fingerprint: str,
    domain: tasks.Domain,
    view: int,
    view_spec: dict[str, Any],
    pp: str | None = None,
) -> str:
    """The cache entry of one view of one domain's features; `pp` is the stream preprocessing (None for the
    in-memory path of the embedded sets, whose keys predate streaming)."""
    blob = {
        "encoder": encoder_fingerprint,
        "dataset": domain.dataset,
        "split": domain.split,
        "view": view,
        "views": view_spec if view else None,
    }
    if pp is not None:
        blob["pp"] = pp
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


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


def stream_pp(encoder) -> str:
    """The per-example preprocessing of a streamed TFDS split for `encoder` (undecoded images in, the encoder's
    inputs out, at a fixed shape).

    An eval pp that starts by decoding (the paper-scale configs: decode, resize the short side, central crop,
    normalise) is the encoder's own and is used as it is. Otherwise (an encoder trained on in-memory images of
    its input size) the image is decoded, its short side resized to the input size (area), centrally cropped
    to the input shape, its channels matched (ITU-R 601 luma or repeated grey), and the eval pp applied. No
    image is ever padded: every example is resized and cropped on its own.
    """
    pp = encoder.config.input.pp_eval
    height, width, channels = encoder.input_shape
    if not pp.strip().startswith("decode"):
        colour = "rgb_to_grey" if channels == 1 else "grey_to_rgb"
        size = f"resize_small({min(height, width)})|central_crop(({height}, {width}))"
        pp = f"decode|{size}|{colour}|{pp}"
    return f"{pp}|keep('image', 'label', 'index')"


def _stream_batch(batch_size: int, mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's devices (a global batch splits over all of them)."""
    devices = mesh.devices.size
    return -(-batch_size // devices) * devices


def stream_features(
    encoder,
    dataset: str,
    split: str,
    *,
    views: tuple[int, ...] = (0,),
    view_spec: dict[str, Any] | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
    mesh=None,
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Features of a TFDS split streamed through `encoder`: view v -> float32 [N, D], and labels [N], in the
    split's row order (the rows of `data.load_labels`).

    One pass: each process reads its own part of the split (`pipeline.stream_eval`), preprocesses every example
    on its own (`stream_pp`), and forms fixed-size batches, the last padded and masked; each global batch is
    sharded over the mesh's `data` axis and encoded (augmented first for views v >= 1, with the keys of
    (view_spec['seed'], v, row), as `augmented_view` draws them). Memory holds a few batches and the features,
    never the split's images.
    """
    from nml_jax import augment
    from nml_jax.data import pipeline

    mesh = mesh or parallel.make_mesh()
    global_batch = _stream_batch(batch_size, mesh)
    n = data.num_examples(dataset, split, data_dir)
    out = {v: np.zeros((n, encoder.feature_dim), np.float32) for v in views}
    labels = np.zeros(n, np.int64)
    variables = jax.device_put(encoder.variables, parallel.replicated(mesh))
    apply = jax.jit(encoder.apply_fn, compiler_options=parallel.conv_net_options())
    augmenter = (
        augment.jitted(tuple(view_spec["scale"]), bool(view_spec["flip"])) if any(views) else None
    )
    start, done = time.time(), 0
    batches = pipeline.stream_eval(
        dataset, split, data_dir=data_dir, global_batch=global_batch, pp=stream_pp(encoder)
    )
    for batch in batches:
        images = np.asarray(batch["image"], np.float32)
        rows = np.asarray(batch["index"], np.int64)
        local = {"index": rows, "label": batch["label"], "mask": batch["mask"]}
        for v in views:
            inputs = images
            if v:
                keys = augment.example_keys(view_spec["seed"], v, np.maximum(rows, 0))
                inputs = np.asarray(augmenter(keys, images))
            local[v] = apply(variables, parallel.to_global(inputs, mesh))
        meta = parallel.to_global({k: local[k] for k in ("index", "label", "mask")}, mesh)
        host = parallel.to_host({**meta, **{str(v): local[v] for v in views}})
        real = np.asarray(host["mask"]) > 0
        index = np.asarray(host["index"])[real]
        labels[index] = np.asarray(host["label"])[real]
        for v in views:
            out[v][index] = np.asarray(host[str(v)], np.float32)[real]
        done += int(real.sum())
    if done != n:
        raise RuntimeError(f"{dataset}[{split}]: streamed {done} examples; the split has {n}.")
    logging.info(
        "streamed features %s[%s] views %s: %d examples in %.1fs",
        dataset,
        split,
        list(views),
        n,
        time.time() - start,
    )
    return out, labels


def domain_features(
    encoder,
    domain: tasks.Domain,
    *,
    cache_dir: str,
    data_dir: str | None = None,
    chunk_size: int = 4096,
    batch_size: int = 256,
    views: int = 0,
    view_spec: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of `domain` as [1 + views, N, D] (view 0 un-augmented; views 1.. augmented as `view_spec` says,
    see `augmented_view`) and labels [N], read from the cache when present. Each view is a cache entry of its
    own, so asking for more views later reuses the first ones.

    Embedded sets are loaded whole (they are small and of one size); every other TFDS dataset is streamed
    (`stream_features`, `batch_size` images per global batch), all its missing views in one pass.
    """
    streamed = domain.dataset not in data.EMBEDDED
    pp = stream_pp(encoder) if streamed else None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{domain.dataset}_{domain.split}")
    paths = [
        os.path.join(
            cache_dir,
            f"{safe}_v{view}_{cache_key(encoder.fingerprint, domain, view, view_spec, pp)}.npz",
        )
        for view in range(1 + views)
    ]
    made: dict[int, np.ndarray] = {}
    labels = None
    missing = [view for view, path in enumerate(paths) if not files.exists(path)]
    if missing and streamed:
        made, labels = stream_features(
            encoder,
            domain.dataset,
            domain.split,
            views=tuple(missing),
            view_spec=view_spec,
            data_dir=data_dir,
            batch_size=batch_size,
        )
    elif missing:
        split = data.load(domain.dataset, domain.split, data_dir=data_dir)
        images = match_input(split["image"], encoder.input_shape)
        labels = split["label"].astype(np.int64)
        inputs = None
        for view in missing:
            start = time.time()
            if view:
                inputs = encoder.inputs(images) if inputs is None else inputs
                made[view] = augmented_view(encoder, inputs, view, view_spec, chunk_size)
            else:
                made[view] = encode(encoder, images, chunk_size)
            logging.info(
                "features %s[%s] view %d: %s in %.1fs",
                domain.dataset,
                domain.split,
                view,
                made[view].shape,
                time.time() - start,
            )
    stacked = []
    for view, path in enumerate(paths):
        if view in made:
            if parallel.is_main_process():
                files.write_npz(path, {"features": made[view], "labels": labels})
            stacked.append(made[view])
            continue
        with files.load_npz(path) as f:
            stacked.append(f["features"])
            labels = f["labels"] if labels is None else labels
    return np.stack(stacked), labels


def online_views(encoder, domain: tasks.Domain, spec: dict[str, Any], data_dir) -> OnlineViews:
    """The training set's preprocessed inputs and the encoder, for views drawn at every step."""
    split = data.load(domain.dataset, domain.split, data_dir=data_dir)
    inputs = encoder.inputs(match_input(split["image"], encoder.input_shape))
    return OnlineViews(
        inputs, encoder.apply_fn, encoder.variables, tuple(spec["scale"]), spec["flip"]
    )


def task_features(
    encoder, task: tasks.Task, num_classes: int, online: bool = False, **kwargs
) -> TaskFeatures:
    """Features for one task (with the inputs for online views when `online`); test domains never get
    augmented views."""
    train_views, train_labels = domain_features(encoder, task.train, **kwargs)
    test_kwargs = {**kwargs, "views": 0}
    tests = {}
    for domain in task.tests:
        feats, labels = domain_features(encoder, domain, **test_kwargs)
        tests[domain.name] = (feats[0], labels)
    sources = {d.name: f"{d.dataset}[{d.split}]" for d in task.tests}
    test_classes = {}
    for domain in task.tests:
        if domain.dataset not in data.EMBEDDED:
            names = data.class_names(domain.dataset, kwargs.get("data_dir"))
            covered = data_classes.subset(domain.dataset, names)
            if covered is not None:
                test_classes[domain.name] = covered
    return TaskFeatures(
        task.name,
        task.kind,
        task.train.name,
        train_views,
        train_labels,
        tests,
        num_classes,
        sources,
        online_views(encoder, task.train, kwargs["view_spec"], kwargs.get("data_dir"))
        if online
        else None,
        test_classes,
    )


def view_spec(views_config, encoder_kind: str) -> dict[str, Any]:
    """The augmentation of the views (`config.views`): the recipe's scale and flip, and the bank's seed."""
    from nml_jax import augment

    recipe = augment.recipe(views_config.recipe, encoder_kind)
    return {
        "recipe": recipe["name"],
        "scale": list(recipe["scale"]),
        "flip": recipe["flip"],
        "seed": views_config.seed,
    }


# ---------------------------------------------------------------------------------------------------------------
# The stage.


def validate(config) -> None:
    """Raises ConfigError naming the first invalid key of the settings that choose the features, and
    FeatureFileError for a malformed `config.features_npz`."""
    config_lib.check_choice("suite", config.suite, defaults.SUITES)
    if config.get("train_limit") is not None:
        config_lib.check_positive_int("train_limit", config.train_limit)
    config_lib.check_positive_int("feature_chunk_size", config.feature_chunk_size)
    config_lib.check_positive_int("feature_batch_size", config.feature_batch_size)
    if config.views.mode == "online" and config.suite != "embedded" and not npz_paths(config):
        raise config_lib.ConfigError(
            f"config.views.mode='online' keeps a training split's inputs in memory, which only the embedded "
            f"suite allows; use views.mode='bank' for config.suite={config.suite!r}."
        )
    config_lib.check_choice("views.mode", config.views.mode, defaults.VIEW_MODES)
    config_lib.check_choice("views.recipe", config.views.recipe, ("auto", "supervised", "clip"))
    if config.views.mode == "bank":
        config_lib.check_positive_int("views.count", config.views.count)
    if config.get("features_npz") and config.get("pretrained"):
        raise config_lib.ConfigError(
            "Set one of config.features_npz and config.pretrained, not both."
        )
    if importer.is_spec(config.get("pretrained")):
        importer.parse_spec(config.pretrained)
        if config.get("image_size") is not None:
            config_lib.check_positive_int("image_size", config.image_size)
    for key in ("test_limit",):
        if config.get(key) is not None:
            config_lib.check_positive_int(key, config[key])
    for path in npz_paths(config):
        # Read in full here, so a malformed file fails before any work (it is read again by the stage).
        load_npz(path)


def npz_paths(config) -> list[str]:
    """The black-box feature files `config.features_npz` names (one path or a list), or []."""
    npz = config.get("features_npz")
    if not npz:
        return []
    return [npz] if isinstance(npz, str) else list(npz)


def suite(config) -> list[tasks.Task]:
    """The downstream tasks the config names (`config.suite`), every training split cut to `config.train_limit`
    and every test split to `config.test_limit`."""
    data_dir = config.get("data_dir")
    chosen = tasks.limit_train(tasks.SUITES[config.suite](), config.get("train_limit"), data_dir)
    return tasks.limit_test(chosen, config.get("test_limit"), data_dir)


def encoder_source(config, workdir: str) -> str:
    """The pre-training workdir whose checkpoint is the encoder: `config.pretrained`, or this workdir (where
    PyTorch weights named by `config.pretrained = 'SOURCE:ARCH[:FILE]'` are imported first, once)."""
    pretrained = config.get("pretrained")
    if importer.is_spec(pretrained):
        importer.import_model(
            pretrained, workdir, config.get("image_size"), bool(config.get("overwrite", False))
        )
        return workdir
    return pretrained or workdir


def load_task_features(config, workdir: str) -> tuple[list[TaskFeatures], dict[str, Any]]:
    """Features of every task, and what identifies them (`noise_ratio`, `seed`, `source`, `pretrain_dataset`).

    For an encoder, the noise ratio and seed are those of the model card of the model that made the features.
    """
    paths = npz_paths(config)
    if paths:
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
    mode = config.views.mode
    per_task = [
        task_features(
            encoder,
            task,
            data.num_classes(task.train.dataset, data_dir=config.get("data_dir")),
            online=mode == "online",
            cache_dir=cache_dir,
            data_dir=config.get("data_dir"),
            chunk_size=config.feature_chunk_size,
            batch_size=config.feature_batch_size,
            views=config.views.count if mode == "bank" else 0,
            view_spec=view_spec(config.views, encoder.card["kind"]),
        )
        for task in suite(config)
    ]
    meta = {
        "noise_ratio": math.nan
        if encoder.card["noise_ratio"] is None
        else float(encoder.card["noise_ratio"]),
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
