"""Resumable, block-shuffled streaming over pieces of record files (TFRecord shards or TFDS file instructions).

A process streams its own pieces; a piece is a run of consecutive records of one file (a whole TFRecord shard,
or the records a TFDS file instruction selects). Epoch e of process p is, deterministically:
  1. its pieces in the order of a permutation drawn from (seed, p, e);
  2. cut into blocks of `pieces_per_block` consecutive pieces (about `block_size` records, at least one piece);
  3. every block read sequentially into one element and permuted fully by a stateless shuffle seeded by
     (seed, p, e, block), so the permutation depends on nothing read before the block (records must have fixed
     shapes to be batched: undecoded images are scalar strings).
The process's sequence is epoch 0, epoch 1, ...; position q lies in epoch q // size at offset q % size, which
`locate` maps to (block, records of the block before q) from the record counts alone. A stream started at q
therefore opens only that block's pieces and those after it (the pieces of earlier blocks are never opened) and
drops fewer records than one block holds, where a sliding shuffle buffer would have to replay every record since
the start. Every record gets its `position` in the process's sequence, which seeds its random augmentation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

POSITION = "position"


def pieces_per_block(counts: np.ndarray, block_size: int) -> int:
    """Pieces per block: about `block_size` records at the mean piece length, at least one piece."""
    if block_size <= 0:
        raise ValueError(f"block_size={block_size} must be a positive number of records.")
    mean = float(np.mean(counts)) if len(counts) else 1.0
    return max(1, round(block_size / max(mean, 1.0)))


def epoch_blocks(
    num_pieces: int, per_block: int, seed: int, process: int, epoch: int
) -> list[np.ndarray]:
    """The piece ids of each block of `epoch`: a permutation seeded by (seed, process, epoch), cut in order."""
    order = np.random.default_rng([seed, process, epoch]).permutation(num_pieces)
    return [order[i : i + per_block] for i in range(0, num_pieces, per_block)]


def block_seed(seed: int, process: int, epoch: int, block: int) -> np.ndarray:
    """The stateless shuffle seed (int64 [2]) of one block."""
    return np.random.SeedSequence([seed, process, epoch, block]).generate_state(2).astype(np.int64)


def locate(
    counts: np.ndarray, per_block: int, seed: int, process: int, position: int
) -> tuple[int, int, int]:
    """(epoch, block, offset in the block) of `position` in the process's sequence of epochs."""
    counts = np.asarray(counts, np.int64)
    size = int(counts.sum())
    if size <= 0:
        raise ValueError("The pieces hold no records; nothing can be streamed.")
    if position < 0:
        raise ValueError(f"position={position} must be >= 0.")
    epoch, offset = divmod(position, size)
    sizes = [
        int(counts[ids].sum()) for ids in epoch_blocks(len(counts), per_block, seed, process, epoch)
    ]
    ends = np.cumsum(sizes)
    block = int(np.searchsorted(ends, offset, side="right"))
    return epoch, block, offset - int(ends[block] - sizes[block])


def _block_ids(
    num_pieces: int, per_block: int, seed: int, process: int, first: tuple[int, int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(piece ids, shuffle seed) of every block from block first[1] of epoch first[0] on, forever."""
    for epoch in itertools.count(first[0]):
        for block, ids in enumerate(epoch_blocks(num_pieces, per_block, seed, process, epoch)):
            if (epoch, block) >= first:
                yield ids.astype(np.int64), block_seed(seed, process, epoch, block)


def stream(
    pieces: dict[str, np.ndarray],
    read_piece: Callable[[dict[str, tf.Tensor]], tf.data.Dataset],
    *,
    block_size: int,
    seed: int,
    process: int,
    start: int = 0,
) -> tf.data.Dataset:
    """The records of this process's sequence of epochs (see the module docstring) from position `start` on.

    Args:
      pieces: equal-length arrays, one entry per piece; `count` (records per piece) is required, the rest
        (paths, offsets, ...) is whatever `read_piece` needs.
      read_piece: maps one piece (a dict of scalar tensors) to the dataset of its records (dicts), in file order.
        It must yield exactly `count` records.
      block_size: about how many records a block (the unit of shuffling) holds.
      seed, process: the stream's seed and the process index (different processes get different orders).
      start: the first position to yield (a resumed run passes steps done * per-process batch).

    Returns:
      An infinite dataset of the records, each with an int64 `position`.
    """
    counts = np.asarray(pieces["count"], np.int64)
    per_block = pieces_per_block(counts, block_size)
    epoch, block, skip = locate(counts, per_block, seed, process, start)
    table = {k: tf.constant(np.asarray(v)) for k, v in pieces.items()}
    # The largest possible block: batched at this size, every block is one element.
    capacity = int(np.sort(counts)[::-1][:per_block].sum())
    blocks = tf.data.Dataset.from_generator(
        lambda: _block_ids(len(counts), per_block, seed, process, (epoch, block)),
        output_signature=(tf.TensorSpec([None], tf.int64), tf.TensorSpec([2], tf.int64)),
    )

    def permute(records, shuffle_seed):
        n = tf.shape(tf.nest.flatten(records)[0], out_type=tf.int64)[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=shuffle_seed)
        return tf.nest.map_structure(lambda v: tf.gather(v, order), records)

    def read_block(ids, shuffle_seed):
        chosen = tf.data.Dataset.from_tensor_slices(
            {k: tf.gather(v, ids) for k, v in table.items()}
        )
        whole = chosen.flat_map(read_piece).batch(capacity)
        return whole.map(lambda records: permute(records, shuffle_seed)).unbatch()

    records = blocks.flat_map(read_block).skip(skip).enumerate(start=start)
    return records.map(lambda position, record: {**record, POSITION: position})
