"""tf.data input pipelines: in-memory train/eval batches and streaming TFDS train/eval batches.

Determinism contract (what makes resume and multi-host runs exact):
- `train_batches`: epoch e visits the examples in the permutation drawn from (seed, e); the global batch at step s
  is rows [s' * B, (s' + 1) * B) of that permutation with s' = s mod steps_per_epoch (remainder dropped), so it
  depends only on (seed, s). Process p of P yields rows [p * B/P, (p + 1) * B/P) of each global batch. Random
  augmentation of an example is seeded from (seed, step, position in the global batch).
- `eval_batches` / `stream_eval`: one pass; every process yields the same number of batches, the tail padded
  with copies marked `mask == 0`, so summing over `mask` counts every example exactly once over all processes.
- `stream_train`: each process reads its own `tfds.even_splits` part, shuffled by blocks of shard files
  (`shards.stream`: resuming opens no file before the resume block); every example carries its `index` in the
  whole split (the row of `load(name, split)`), which also picks its label from `label_table`.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from nml_jax import data as data_lib
from nml_jax.data import preprocess, shards

_MAX_STEPS = 2**62
_AUG_SALT = 0x5EED  # Separates the augmentation seeds from the permutation seeds.


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Full batches per epoch (the remainder is dropped): n // global_batch."""
    if global_batch <= 0:
        raise ValueError(f"global_batch={global_batch} must be a positive integer.")
    return n // global_batch


def _processes(
    process_index: int | None, process_count: int | None, global_batch: int
) -> tuple[int, int, int]:
    """(process_index, process_count, per-process batch), defaulting to JAX's process set-up."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} must be in [0, process_count={count}).")
    if global_batch <= 0 or global_batch % count:
        raise ValueError(
            f"global_batch={global_batch} must be a positive multiple of process_count={count}."
        )
    return index, count, global_batch // count


def _num_examples(data: dict[str, np.ndarray]) -> int:
    if not data:
        raise ValueError(
            "The data dict is empty; expected arrays such as {'image': ..., 'label': ...}."
        )
    sizes = {key: len(value) for key, value in data.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"All arrays need the same leading size; got {sizes}.")
    return next(iter(sizes.values()))


def _aug_seeds(seed: int, keys: tf.Tensor) -> tf.Tensor:
    """Stateless seeds [..., 2] of examples with unique integer `keys`: [seed XOR salt, key]."""
    keys = tf.cast(keys, tf.int64)
    return tf.stack(
        [tf.fill(tf.shape(keys), tf.constant(seed ^ _AUG_SALT, tf.int64)), keys], axis=-1
    )


def _finish(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.deterministic = True
    return iter(tfds.as_numpy(ds.with_options(options).prefetch(tf.data.AUTOTUNE)))


def _apply_pp(ds: tf.data.Dataset, pp: str) -> tf.data.Dataset:
    """Maps the parsed `pp` over per-example dicts (in parallel, order kept) and drops the seed."""
    op = preprocess.parse(pp)

    # The ops branch on static shapes and dtypes only: AutoGraph would only add seconds of conversion per pipeline.
    @tf.autograph.experimental.do_not_convert
    def apply(example):
        example = op(example)
        example.pop(preprocess.SEED_KEY, None)
        return example

    return ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_batches(
    data: dict[str, np.ndarray],
    *,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    pp: str = "",
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite training batches of this process from in-memory arrays (see the module docstring).

    Args:
      data: equal-length arrays, e.g. {'image', 'label', 'is_noisy', 'index'}; every field is batched.
      global_batch: examples per step over all processes.
      seed: permutation and augmentation seed.
      start_step: first step to yield; a run resumed at step s yields what an uninterrupted run yields there.
      pp: preprocessing spec for `preprocess.parse`, applied per example ('' = none).
      process_index, process_count: default to `jax.process_index()` / `jax.process_count()`.

    Yields:
      dicts of numpy arrays with global_batch // process_count rows.
    """
    n = _num_examples(data)
    index, _, local = _processes(process_index, process_count, global_batch)
    per_epoch = steps_per_epoch(n, global_batch)
    if per_epoch == 0:
        raise ValueError(
            f"global_batch={global_batch} is larger than the {n} examples; no full batch exists."
        )
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0.")
    tensors = {key: tf.constant(value) for key, value in data.items()}
    offsets = tf.range(local, dtype=tf.int64) + index * local

    def rows(step):
        epoch, within = step // per_epoch, step % per_epoch
        positions = within * global_batch + offsets
        seed_e = tf.stack([tf.constant(seed, tf.int64), epoch])
        return tf.random.experimental.index_shuffle(positions, seed_e, tf.constant(n - 1, tf.int64))

    steps = tf.data.Dataset.range(start_step, _MAX_STEPS)
    if not pp:
        return _finish(steps.map(lambda s: {k: tf.gather(v, rows(s)) for k, v in tensors.items()}))

    def per_example(step):
        # Key step * B + position is unique per (step, position in the global batch).
        return rows(step), _aug_seeds(seed, step * global_batch + offsets)

    def gather(row, example_seed):
        example = {k: tf.gather(v, row) for k, v in tensors.items()}
        example[preprocess.SEED_KEY] = example_seed
        return example

    ds = steps.map(per_example).unbatch().map(gather)
    return _finish(_apply_pp(ds, pp).batch(local, drop_remainder=True))


def _eval_rows(n: int, global_batch: int, index: int, local: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of this process for a padded single pass, and their mask (row < n); padding repeats row n - 1."""
    num_batches = -(-n // global_batch)
    starts = np.arange(num_batches)[:, None] * global_batch + index * local
    rows = (starts + np.arange(local)[None, :]).reshape(-1)
    return np.minimum(rows, n - 1), rows < n


def eval_batches(
    data: dict[str, np.ndarray],
    *,
    global_batch: int,
    pp: str = "",
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One padded pass over in-memory arrays; each batch has a float32 `mask` (1 = real example, 0 = padding).

    Every process yields ceil(N / global_batch) batches of global_batch // process_count rows.
    """
    n = _num_examples(data)
    if n == 0:
        raise ValueError("Cannot evaluate on an empty split.")
    index, _, local = _processes(process_index, process_count, global_batch)
    rows, mask = _eval_rows(n, global_batch, index, local)
    tensors = {key: tf.constant(value) for key, value in data.items()}
    pieces = tf.data.Dataset.from_tensor_slices((rows, mask.astype(np.float32)))
    if not pp:
        ds = pieces.batch(local).map(
            lambda r, m: {**{k: tf.gather(v, r) for k, v in tensors.items()}, "mask": m}
        )
        return _finish(ds)

    def gather(row, m):
        example = {k: tf.gather(v, row) for k, v in tensors.items()}
        example[preprocess.SEED_KEY] = _aug_seeds(0, row)
        return {**example, "mask": m}

    return _finish(_apply_pp(pieces.map(gather), pp).batch(local))


def _even_sizes(n: int, count: int) -> list[int]:
    """Sizes of `tfds.even_splits(split, count)` parts: the first n % count parts get one extra example."""
    return [n // count + (i < n % count) for i in range(count)]


def _stream_part(name, split, data_dir, index, count):
    """(this process's examples with their `index` in the whole split, sizes of all parts), in file order."""
    builder = data_lib.builder(name, data_dir)
    n = builder.info.splits[split].num_examples
    sizes = _even_sizes(n, count)
    offset = sum(sizes[:index])
    decoders = None
    if isinstance(builder.info.features["image"], tfds.features.Image):
        # Undecoded JPEG/PNG bytes: a pp `decode...` op decodes them.
        decoders = {"image": tfds.decode.SkipDecoding()}
    part = tfds.even_splits(split, n=count)[index]
    ds = builder.as_dataset(
        split=part, shuffle_files=False, read_config=data_lib.READ_CONFIG, decoders=decoders
    )

    def with_index(i, example):
        example = dict(example)
        example["index"] = i + offset
        example["label"] = tf.cast(example["label"], tf.int32)
        return example

    return ds.enumerate().map(with_index), sizes


def _part_pieces(name, split, data_dir, index, count):
    """(this process's `tfds.even_splits` part as pieces (shards.stream), sizes of all parts, the builder).

    A piece is one TFDS file instruction: `take` records of `path` after the first `skip`, the first of them
    example `first_index` of the whole split.
    """
    builder = data_lib.builder(name, data_dir)
    if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
        raise ValueError(
            f"{name}: stream_train reads TFRecord shards; this dataset is stored as "
            f"{builder.info.file_format}. Prepare it with file_format='tfrecord'."
        )
    sizes = _even_sizes(builder.info.splits[split].num_examples, count)
    part = builder.info.splits[tfds.even_splits(split, n=count)[index]]
    instructions = [i for i in part.file_instructions if i.take > 0]
    takes = np.array([i.take for i in instructions], np.int64)
    pieces = {
        "path": np.array([i.filename for i in instructions]),
        "skip": np.array([i.skip for i in instructions], np.int64),
        "count": takes,
        "first_index": sum(sizes[:index]) + np.cumsum(takes) - takes,
    }
    return pieces, sizes, builder


def stream_train(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    pp: str = "",
    label_table: np.ndarray | None = None,
    shuffle_buffer: int = 10_000,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite training batches streamed from a TFDS split too big for memory (e.g. imagenet2012).

    Each process reads its `tfds.even_splits` part, cut into pieces by the split's shard files, as
    `shards.stream` orders it: per epoch the pieces in a (seed, process, epoch) order, permuted fully within
    blocks of about `shuffle_buffer` records. The global batch at step s is made of positions s * B / P ... of
    this process's sequence, so a run resumed at `start_step` sees the same batches as an uninterrupted one,
    and opens only the shard files of the block it resumes in and of later blocks.
    `label_table` (e.g. noisy labels, one per example of the whole split) replaces `label` by `index`.
    Image features arrive undecoded, so `pp` should start with a decode op (`decode`, or
    `decode_jpeg_and_inception_crop(224)`), which passes already-decoded images through.
    """
    index, count, local = _processes(process_index, process_count, global_batch)
    pieces, sizes, builder = _part_pieces(name, split, data_dir, index, count)
    if sizes[index] == 0:
        raise ValueError(f"{name}/{split}: process {index} of {count} has no examples to train on.")
    n = sum(sizes)
    if label_table is not None and len(label_table) != n:
        raise ValueError(
            f"label_table has {len(label_table)} entries; {name}/{split} has {n} examples."
        )
    table = None if label_table is None else tf.constant(np.asarray(label_table))
    decoders = None
    if isinstance(builder.info.features["image"], tfds.features.Image):
        # Undecoded JPEG/PNG bytes: a pp `decode...` op decodes them after the shuffle.
        decoders = {"image": tfds.decode.SkipDecoding()}

    def read_piece(piece):
        def parse(i, record):
            example = dict(builder.info.features.deserialize_example(record, decoders=decoders))
            example["index"] = piece["first_index"] + i
            label = example["label"] if table is None else tf.gather(table, example["index"])
            example["label"] = tf.cast(label, tf.int32)
            return example

        records = tf.data.TFRecordDataset(piece["path"]).skip(piece["skip"]).take(piece["count"])
        parsed = records.enumerate().map(
            parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        return parsed.batch(piece["count"])

    process_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    ds = shards.stream(
        pieces,
        read_piece,
        block_size=shuffle_buffer,
        seed=seed,
        process=index,
        start=start_step * local,
    )
    # The example's position in this process's sequence seeds its augmentation.
    ds = ds.map(
        lambda ex: {
            **{k: v for k, v in ex.items() if k != shards.POSITION},
            preprocess.SEED_KEY: _aug_seeds(process_seed, ex[shards.POSITION]),
        }
    )
    return _finish(_apply_pp(ds, pp).batch(local, drop_remainder=True))


def stream_eval(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    global_batch: int,
    pp: str = "",
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a TFDS split, padded with zero examples (`mask` 0.0, `index` -1) to equal batch counts.

    The preprocessed examples need fully defined shapes (the padding is built from them).
    """
    index, count, local = _processes(process_index, process_count, global_batch)
    ds, sizes = _stream_part(name, split, data_dir, index, count)
    num_batches = -(-max(sizes) // local)
    ds = _apply_pp(ds.map(lambda ex: {**ex, preprocess.SEED_KEY: _aug_seeds(0, ex["index"])}), pp)
    ds = ds.map(lambda ex: {**ex, "mask": tf.constant(1.0)})
    spec = ds.element_spec
    undefined = {k: s.shape for k, s in spec.items() if not s.shape.is_fully_defined()}
    if undefined:
        raise ValueError(
            f"stream_eval needs fixed shapes after pp={pp!r}; these vary: {undefined}. Add a resize/crop."
        )
    padding = {k: tf.zeros(s.shape, s.dtype) for k, s in spec.items()}
    padding["index"] = tf.constant(-1, spec["index"].dtype)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat()).take(num_batches * local)
    return _finish(ds.batch(local))
