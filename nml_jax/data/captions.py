"""Image-text pairs for contrastive (CLIP) pre-training: synthetic captions offline, TFRecord shards at scale.

Embedded default (offline): Fashion-MNIST train images paired with SYNTHETIC captions. Each caption is composed
from one of several templates ("a photo of a {}.", "a black and white picture of a {}, a kind of {category}.")
and one of a few synonyms of the image's class, drawn from a seed; they are not human captions, and the README
says so. Zero-shot classification uses its own prompt templates and the first synonym of each class.

Paper scale (YFCC15M, CC3M, CC12M): TFRecord shards found by a glob; every record is a `tf.train.Example` with
  - `jpg`: bytes, the encoded image (JPEG or PNG),
  - `txt`: bytes, the UTF-8 caption.
Shards are read in sorted file order; process p of P reads shards p, p + P, ... . Example i of the dataset is
record i in that order (`scan_captions` counts the records of each shard), so caption-swap noise and the token
table are indexed the same way on every process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from nml_jax.data import pipeline

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


def scan_captions(files: Sequence[str]) -> tuple[list[str], list[int]]:
    """Every caption in file order and the number of records of each shard (images are not decoded)."""
    texts, counts = [], []
    spec = {"txt": TFRECORD_FEATURES["txt"]}
    for path in files:
        ds = tf.data.TFRecordDataset(path).map(
            lambda r: tf.io.parse_single_example(r, spec)["txt"],
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        before = len(texts)
        texts.extend(
            t.decode("utf-8") for batch in ds.batch(4096).as_numpy_iterator() for t in batch
        )
        counts.append(len(texts) - before)
    return texts, counts


def stream_pairs(
    files: Sequence[str],
    counts: Sequence[int],
    *,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    pp: str = "decode",
    shuffle_buffer: int = 10_000,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite batches {'image', 'index'} of this process's shards (p, p + P, ...), shuffled and repeated.

    `index` is the example's position in the whole dataset (see the module docstring); the caller looks its
    caption up by index, which is how caption-swap noise applies without rewriting the shards. The first
    `start_step` batches are skipped, so a resumed run sees the same batches. `pp` must start with a decode op.
    """
    index, count, local = pipeline._processes(process_index, process_count, global_batch)
    if len(files) != len(counts):
        raise ValueError(f"{len(files)} shards but {len(counts)} record counts.")
    if len(files) < count:
        raise ValueError(f"{len(files)} shards cannot be split over {count} processes.")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    mine = list(range(index, len(files), count))
    spec = {"jpg": TFRECORD_FEATURES["jpg"]}

    def read(path, offset):
        def parse(position, record):
            return {
                "image": tf.io.parse_single_example(record, spec)["jpg"],
                "index": offset + position,
            }

        return tf.data.TFRecordDataset(path).enumerate().map(parse)

    shards = tf.data.Dataset.from_tensor_slices(
        ([files[i] for i in mine], offsets[mine].astype(np.int64))
    )
    ds = shards.flat_map(read)
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    process_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])

    def with_seed(position, example):
        seeds = pipeline._aug_seeds(process_seed, position)
        return {**example, pipeline.preprocess.SEED_KEY: seeds}

    ds = ds.enumerate().skip(start_step * local).map(with_seed)
    return pipeline._finish(pipeline._apply_pp(ds, pp).batch(local, drop_remainder=True))
