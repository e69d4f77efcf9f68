"""Resumable, block-shuffled streaming over pieces of record files (TFRecord shards or TFDS file instructions).

A process streams its own pieces; a piece is a run of consecutive records of one file (a whole TFRecord shard,
or the records a TFDS file instruction selects). Epoch e of process p is, deterministically:
  1. its pieces in the order of a permutation drawn from (seed, p, e);
  2. cut into blocks of `pieces_per_block` consecutive pieces (about `block_size` records, at least one piece);
  3. every block read sequentially into one element and permuted fully by a stateless shuffle seeded by
     (seed, p, e, block), so the permutation depends on nothing read before the block.
The orders are TensorFlow's stateless ops, run by the same code inside tf.data and (for `locate`) in Python.
The process's sequence is epoch 0, epoch 1, ...; position q lies in epoch q // size at offset q % size, which
`locate` maps to (block, records of the block before q) from the record counts alone. A stream started at q
therefore opens only that block's pieces and those after it (the pieces of earlier blocks are never opened) and
drops fewer records than one block holds, where a sliding shuffle buffer would have to replay every record since
the start. Every record gets its `position` in the process's sequence, which seeds its random augmentation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

POSITION = "position"
_MAX_BLOCKS = 2**62


def pieces_per_block(counts: np.ndarray, block_size: int) -> int:
    """Pieces per block: about `block_size` records at the mean piece length, at least one piece."""
    if block_size <= 0:
        raise ValueError(f"block_size={block_size} must be a positive number of records.")
    mean = float(np.mean(counts)) if len(counts) else 1.0
    return max(1, round(block_size / max(mean, 1.0)))


def _base_seeds(seed: int, process: int) -> tuple[np.ndarray, np.ndarray]:
    """(piece-order seed, block-shuffle seed), int64 [2] each, of one process's stream."""
    state = np.random.SeedSequence([seed, process]).generate_state(4).astype(np.int64)
    return state[:2], state[2:]


def _fold(base: np.ndarray, *data: tf.Tensor) -> tf.Tensor:
    """A stateless seed [2] from `base` and int64 scalars (the same op in Python and inside tf.data)."""
    out = tf.constant(base, tf.int64)
    for value in data:
        out = tf.random.experimental.stateless_fold_in(out, tf.cast(value, tf.int64))
    return out


def _epoch_order(num_pieces: int, order_seed: np.ndarray, epoch: tf.Tensor) -> tf.Tensor:
    """The piece order of `epoch`: a stateless permutation of range(num_pieces)."""
    pieces = tf.range(num_pieces, dtype=tf.int64)
    return tf.random.experimental.stateless_shuffle(pieces, seed=_fold(order_seed, epoch))


def epoch_blocks(
    num_pieces: int, per_block: int, seed: int, process: int, epoch: int
) -> list[np.ndarray]:
    """The piece ids of each block of `epoch`: the epoch's piece order (seed, process, epoch), cut in order."""
    order = _epoch_order(num_pieces, _base_seeds(seed, process)[0], tf.constant(epoch, tf.int64))
    order = order.numpy()
    return [order[i : i + per_block] for i in range(0, num_pieces, per_block)]


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
      read_piece: maps one piece (a dict of scalar tensors) to a dataset of ONE element: its `count` records
        in file order, batched (a dict of [count, ...] tensors; records of one piece may share work, e.g. one
        tokenizer call per shard).
      block_size: about how many records a block (the unit of shuffling) holds.
      seed, process: the stream's seed and the process index (different processes get different orders).
      start: the first position to yield (a resumed run passes steps done * per-process batch).

    Returns:
      An infinite dataset of the records, each with an int64 `position`.
    """
    nonempty = np.asarray(pieces["count"]) > 0  # An empty shard would make an empty batch.
    pieces = {k: np.asarray(v)[nonempty] for k, v in pieces.items()}
    counts = np.asarray(pieces["count"], np.int64)
    per_block = pieces_per_block(counts, block_size)
    first_epoch, first_block, skip = locate(counts, per_block, seed, process, start)
    table = {k: tf.constant(np.asarray(v)) for k, v in pieces.items()}
    order_seed, shuffle_seed = _base_seeds(seed, process)
    per_epoch = -(-len(counts) // per_block)

    def permute(pieces_of_block, block_seed):
        # [pieces, (records), ...] -> [records of the block, ...], then one stateless permutation of them.
        records = tf.nest.map_structure(lambda v: v.values, pieces_of_block)
        n = tf.shape(tf.nest.flatten(records)[0], out_type=tf.int64)[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=block_seed)
        return tf.nest.map_structure(lambda v: tf.gather(v, order), records)

    def read_block(number):
        # Block `number` of the whole sequence: block number % per_epoch of epoch number // per_epoch.
        epoch, block = number // per_epoch, number % per_epoch
        ids = _epoch_order(len(counts), order_seed, epoch)[block * per_block :][:per_block]
        chosen = tf.data.Dataset.from_tensor_slices(
            {k: tf.gather(v, ids) for k, v in table.items()}
        )
        # A block has at most per_block pieces: one ragged batch holds them all.
        whole = chosen.flat_map(read_piece).ragged_batch(per_block)
        return whole.map(lambda records: permute(records, _fold(shuffle_seed, epoch, block)))

    # prefetch(1): the next block is read (and, for captions, tokenized) while this one is consumed.
    blocks = tf.data.Dataset.range(first_epoch * per_epoch + first_block, _MAX_BLOCKS)
    records = blocks.flat_map(read_block).prefetch(1).unbatch().skip(skip).enumerate(start=start)
    return records.map(lambda position, record: {**record, POSITION: position})
