"""Image-text pairs for contrastive (CLIP) pre-training: synthetic captions offline, TFRecord shards at scale.

Embedded default (offline): Fashion-MNIST train images paired with SYNTHETIC captions. Each caption is composed
from one of several templates ("a photo of a {}.", "a black and white picture of a {}, a kind of {category}.")
and one of a few synonyms of the image's class, drawn from a seed; they are not human captions, and the README
says so. Zero-shot classification uses its own prompt templates and the first synonym of each class.

Paper scale (YFCC15M, CC3M, CC12M): TFRecord shards found by a glob; every record is a `tf.train.Example` with
  - `jpg`: bytes, the encoded image (JPEG or PNG),
  - `txt`: bytes, the UTF-8 caption.
Example i of the dataset is record i with the shards in sorted file order; process 0 counts the records of each
shard once and stores the counts in `<workdir>/shards.json`, which every process reads. Process p of P streams
shards p, p + P, ... (`stream_pairs`), reading each shard's images and captions together: captions are
tokenized per shard in the input pipeline and caption-swap noise never leaves a shard, so no process ever holds
all captions or all tokens; a resumed run skips whole shards instead of re-reading every record.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from nml_jax import files as files_lib
from nml_jax.data import pipeline, shards

# Class -> (synonyms, category). The first synonym is the class's zero-shot name.
FASHION_MNIST_DESCRIPTIONS = (
    (("t-shirt", "tee", "top"), "upper-body clothing"),
    (("trousers", "pants", "slacks"), "legwear"),
    (("pullover", "sweater", "jumper"), "knitwear"),
    (("dress", "gown", "frock"), "clothing"),
    (("coat", "jacket", "overcoat"), "outerwear"),
    (("sandal", "flip-flop", "open shoe"), "footwear"),
    (("shirt", "button-up shirt", "blouse"), "upper-body clothing"),
    (("sneaker", "trainer", "running shoe"), "footwear"),
    (("bag", "handbag", "purse"), "accessory"),
    (("ankle boot", "boot", "bootie"), "footwear"),
)
DESCRIPTIONS = {"nml_fashion_mnist": FASHION_MNIST_DESCRIPTIONS}

TRAIN_TEMPLATES = (
    "a photo of a {name}.",
    "a black and white picture of a {name}, a kind of {category}.",
    "a low resolution photo of the {name}.",
    "a grayscale image of a {name}.",
    "a small picture of a {name}, a piece of {category}.",
    "product photo: {name}.",
    "a centered {name} on a dark background.",
    "my new {name}.",
)
ZERO_SHOT_TEMPLATES = ("a photo of a {name}.", "a picture of a {name}.", "an image of the {name}.")

# {'files', 'bytes', 'counts'}: records per shard, counted once by process 0 (recounted when a size changes).
SHARDS_FILE = "shards.json"
TFRECORD_FEATURES = {
    "jpg": tf.io.FixedLenFeature([], tf.string),
    "txt": tf.io.FixedLenFeature([], tf.string),
}


def descriptions(dataset: str) -> tuple[tuple[tuple[str, ...], str], ...]:
    """The (synonyms, category) of every class of `dataset`; a ValueError names the known sets."""
    if dataset not in DESCRIPTIONS:
        raise ValueError(
            f"No caption vocabulary for dataset {dataset!r}; expected one of {sorted(DESCRIPTIONS)}."
        )
    return DESCRIPTIONS[dataset]


def compose_captions(
    labels: np.ndarray,
    class_descriptions: Sequence[tuple[Sequence[str], str]],
    seed: int,
    templates: Sequence[str] = TRAIN_TEMPLATES,
) -> list[str]:
    """Caption i = a template (uniform over `templates`) filled with a synonym (uniform) of class labels[i].

    Deterministic from `seed`.
    """
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    template_ids = rng.integers(0, len(templates), size=labels.size)
    draws = rng.random(labels.size)
    out = []
    for label, template_id, draw in zip(labels, template_ids, draws):
        synonyms, category = class_descriptions[label]
        name = synonyms[int(draw * len(synonyms))]
        out.append(templates[template_id].format(name=name, category=category))
    return out


def zero_shot_prompts(
    class_descriptions: Sequence[tuple[Sequence[str], str]],
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
) -> list[list[str]]:
    """For every class, the prompts `templates` filled with the class's first synonym."""
    return [[t.format(name=synonyms[0]) for t in templates] for synonyms, _ in class_descriptions]


def swap_captions(tokens: np.ndarray, caption_index: np.ndarray) -> np.ndarray:
    """The captions seen in training: image i gets tokens[caption_index[i]] (noise.caption_swap)."""
    caption_index = np.asarray(caption_index)
    if caption_index.shape != (len(tokens),):
        raise ValueError(
            f"caption_index has shape {caption_index.shape}; expected ({len(tokens)},), one per pair."
        )
    return np.asarray(tokens)[caption_index]


# ---------------------------------------------------------------------------------------------------------------
# TFRecord shards of a web image-text dataset.


def write_shards(
    prefix: str, images: np.ndarray, texts: Sequence[str], num_shards: int
) -> list[str]:
    """Writes uint8 images [N, H, W, C] (as JPEG) and captions into `num_shards` TFRecord files.

    Files are `{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord`; example j goes to shard j * num_shards // N, so
    reading the shards in order gives the examples in order.
    """
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} captions.")
    paths = [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    shard_of = np.arange(len(images)) * num_shards // max(len(images), 1)
    for i, path in enumerate(paths):
        with tf.io.TFRecordWriter(path) as writer:
            for j in np.flatnonzero(shard_of == i):
                jpg = tf.io.encode_jpeg(tf.constant(images[j]), quality=95).numpy()
                feature = {
                    "jpg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpg])),
                    "txt": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[texts[j].encode("utf-8")])
                    ),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
    return paths


def list_shards(pattern: str) -> list[str]:
    """The shard files matching `pattern` (a glob, local or gs://), sorted; FileNotFoundError when none."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"No TFRecord shards match {pattern!r}; expected files of tf.train.Example with `jpg` "
            "(encoded image bytes) and `txt` (UTF-8 caption) features."
        )
    return files


def count_records(files: Sequence[str]) -> list[int]:
    """The number of records of each shard (read once, nothing parsed)."""
    return [
        int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1)) for path in files
    ]


def _listing(files: Sequence[str]) -> dict[str, list]:
    """The shard files with their sizes in bytes (one stat each), what shards.json's counts belong to."""
    return {"files": list(files), "bytes": [int(tf.io.gfile.stat(f).length) for f in files]}


def load_or_count(workdir: str, files: Sequence[str]) -> list[int]:
    """The record counts of `files`, from `<workdir>/shards.json` when it lists the same files of the same sizes,
    else counted and written there (call it in process 0; the others read the file with `read_counts`)."""
    path = os.path.join(workdir, SHARDS_FILE)
    listing = _listing(files)
    saved = files_lib.read_json(path)
    if isinstance(saved, dict) and {k: saved.get(k) for k in listing} == listing:
        return saved["counts"]
    counts = count_records(files)
    files_lib.write_json(path, {**listing, "counts": counts})
    return counts


def read_counts(workdir: str, files: Sequence[str]) -> list[int]:
    """The record counts process 0 stored in `<workdir>/shards.json`; a ValueError if they are of other files."""
    path = os.path.join(workdir, SHARDS_FILE)
    saved = files_lib.read_json(path)
    if not isinstance(saved, dict) or saved.get("files") != list(files):
        raise ValueError(
            f"{path} does not list the {len(files)} shards this process found; every process must see "
            "the same files, and process 0 writes this file first."
        )
    return saved["counts"]


def first_captions(files: Sequence[str], limit: int | None) -> Iterator[str]:
    """The first `limit` captions (all when None) in shard order, one shard read at a time (no images decoded)."""
    spec = {"txt": TFRECORD_FEATURES["txt"]}
    remaining = limit
    for path in files:
        if remaining is not None and remaining <= 0:
            return
        ds = tf.data.TFRecordDataset(path).map(lambda r: tf.io.parse_single_example(r, spec)["txt"])
        if remaining is not None:
            ds = ds.take(remaining)
        for batch in ds.batch(4096).as_numpy_iterator():
            if remaining is not None:
                remaining -= len(batch)
            yield from (t.decode("utf-8") for t in batch)


def _shard_reader(
    tokenize: Callable[[list[str]], np.ndarray], local_index: np.ndarray, is_noisy: np.ndarray
) -> Callable[[dict[str, tf.Tensor]], tf.data.Dataset]:
    """piece -> its records {'image' (undecoded), 'tokens', 'is_noisy', 'index'} batched, one read of the shard.

    The shard's captions are tokenized together, and record i gets the tokens of record local_index[i] of the
    same shard (`local_index` and `is_noisy` are this process's shards' entries, concatenated in shard order;
    a piece's `row` is where its shard starts there).
    """
    local_index = tf.constant(np.asarray(local_index, np.int64))
    is_noisy = tf.constant(np.asarray(is_noisy, bool))

    def encode(texts):
        return tokenize([t.decode("utf-8") for t in texts])

    def attach(piece, records):
        n = piece["count"]
        check = tf.debugging.assert_equal(
            tf.shape(records["txt"], out_type=tf.int64)[0],
            n,
            message="A shard holds another number of records than shards.json says (was it rewritten?)",
        )
        with tf.control_dependencies([check]):
            tokens = tf.numpy_function(encode, [records["txt"]], tf.int32, stateful=False)
        tokens = tf.ensure_shape(tokens, [None, None])
        rows = tf.range(n) + piece["row"]
        return {
            "image": records["jpg"],
            "tokens": tf.gather(tokens, tf.gather(local_index, rows)),
            "is_noisy": tf.gather(is_noisy, rows),
            "index": piece["first_index"] + tf.range(n),
        }

    def read(piece):
        # The whole shard as one element (a shuffle block holds at least a shard anyway).
        whole = tf.data.TFRecordDataset(piece["path"]).batch(piece["count"])
        return whole.map(
            lambda serialized: attach(piece, tf.io.parse_example(serialized, TFRECORD_FEATURES))
        )

    return read


def stream_pairs(
    files: Sequence[str],
    counts: Sequence[int],
    *,
    caption_index: np.ndarray,
    is_noisy: np.ndarray,
    tokenize: Callable[[list[str]], np.ndarray],
    global_batch: int,
    seed: int,
    start_step: int = 0,
    pp: str = "decode",
    shuffle_buffer: int = 10_000,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite batches {'image', 'tokens', 'is_noisy', 'index'} of this process's shards (p, p + P, ...).

    Every shard is read once per epoch, its captions tokenized by `tokenize` (texts -> int32 [n, L]) as it is
    read and handed out as `caption_index` says (swaps within the shard, `noise.caption_swap_within_shards`),
    so no process holds more than a shuffle block of captions or tokens. The order is `shards.stream`'s: per
    epoch the shards in a (seed, process, epoch) order, permuted fully within blocks of about `shuffle_buffer`
    records; the first `start_step` batches are skipped by position, so a resumed run opens only the shards of
    its block and later ones and sees the same batches. `index` is the pair's position in the whole dataset
    (shards in sorted order). `pp` must start with a decode op.
    """
    index, count, local = pipeline._processes(process_index, process_count, global_batch)
    counts = np.asarray(counts, np.int64)
    if len(files) != len(counts):
        raise ValueError(f"{len(files)} shards but {len(counts)} record counts.")
    if len(files) < count:
        raise ValueError(f"{len(files)} shards cannot be split over {count} processes.")
    for name, values in (("caption_index", caption_index), ("is_noisy", is_noisy)):
        if len(values) != counts.sum():
            raise ValueError(
                f"{name} has {len(values)} entries; the shards hold {counts.sum()} pairs."
            )
    offsets = np.cumsum(counts) - counts
    mine = np.arange(index, len(files), count)
    local_index = np.concatenate(
        [np.asarray(caption_index[offsets[s] : offsets[s] + counts[s]]) - offsets[s] for s in mine]
    )
    pieces = {
        "path": np.asarray(files)[mine],
        "count": counts[mine],
        "first_index": offsets[mine],
        "row": np.cumsum(counts[mine]) - counts[mine],
    }
    noisy = np.concatenate(
        [np.asarray(is_noisy[offsets[s] : offsets[s] + counts[s]]) for s in mine]
    )
    reader = _shard_reader(tokenize, local_index, noisy)
    ds = shards.stream(
        pieces,
        reader,
        block_size=shuffle_buffer,
        seed=seed,
        process=index,
        start=start_step * local,
    )
    process_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])

    def with_seed(example):
        position = example.pop(shards.POSITION)
        return {
            **example,
            pipeline.preprocess.SEED_KEY: pipeline._aug_seeds(process_seed, position),
        }

    ds = ds.map(with_seed)
    return pipeline._finish(pipeline._apply_pp(ds, pp).batch(local, drop_remainder=True))
