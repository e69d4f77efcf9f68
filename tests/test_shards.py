"""Block-shuffled streaming over shard pieces: every epoch a permutation, exact resume, no earlier file opened."""

import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from nml_jax.data import shards


def _write(tmp_path, counts):
    """TFRecord files whose records are their global numbers (int64 features)."""
    paths, first = [], 0
    for i, n in enumerate(counts):
        path = str(tmp_path / f"piece-{i:02d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for value in range(first, first + n):
                feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
                example = tf.train.Example(features=tf.train.Features(feature={"v": feature}))
                writer.write(example.SerializeToString())
        paths.append(path)
        first += n
    return paths


def _read_piece(piece):
    spec = {"v": tf.io.FixedLenFeature([], tf.int64)}
    records = tf.data.TFRecordDataset(piece["path"]).skip(piece["skip"]).take(piece["count"])
    return records.batch(piece["count"]).map(lambda r: tf.io.parse_example(r, spec))


def _values(ds, n):
    return [(int(x["v"]), int(x[shards.POSITION])) for x in itertools.islice(ds, n)]


COUNTS = [10, 7, 10, 3, 10, 10, 6, 10]


@pytest.fixture
def pieces(tmp_path):
    paths = _write(tmp_path, COUNTS)
    # The last piece is the second half of file 7 only: what a TFDS file instruction with skip > 0 selects.
    return {
        "path": np.array(paths),
        "skip": np.array([0] * 7 + [4]),
        "count": np.array([*COUNTS[:7], 6]),
    }


def test_every_epoch_is_a_permutation_and_blocks_stay_whole(pieces):
    size = int(pieces["count"].sum())
    kwargs = dict(block_size=16, seed=4, process=1)
    values = _values(shards.stream(pieces, _read_piece, **kwargs), 3 * size)
    assert [p for _, p in values] == list(range(3 * size))
    expected = sorted(
        v for i, n in enumerate(COUNTS) for v in range(sum(COUNTS[:i]), sum(COUNTS[: i + 1]))
    )
    expected = [v for v in expected if not (v >= sum(COUNTS[:7]) and v < sum(COUNTS[:7]) + 4)]
    epochs = [[v for v, _ in values[e * size : (e + 1) * size]] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == expected
    assert epochs[0] != epochs[1]  # A new order every epoch.
    # Block b of an epoch holds exactly the records of its pieces, in some order.
    per_block = shards.pieces_per_block(pieces["count"], 16)
    assert per_block == 2
    start = 0
    for ids in shards.epoch_blocks(len(COUNTS), per_block, 4, 1, epoch=1):
        n = int(pieces["count"][ids].sum())
        got = epochs[1][start : start + n]
        first = [sum(COUNTS[:i]) + int(pieces["skip"][i]) for i in ids]
        want = [f + j for f, i in zip(first, ids) for j in range(int(pieces["count"][i]))]
        assert sorted(got) == sorted(want)
        start += n


def test_resume_equals_uninterrupted_and_opens_no_earlier_file(pieces):
    size = int(pieces["count"].sum())
    kwargs = dict(block_size=16, seed=4, process=0)
    full = _values(shards.stream(pieces, _read_piece, **kwargs), 2 * size + 20)
    start = size + 37  # Epoch 1, inside its third block (records of 2 pieces each).
    epoch, block, offset = shards.locate(pieces["count"], 2, 4, 0, start)
    assert epoch == 1 and block >= 1 and 0 <= offset < 20
    blocks = shards.epoch_blocks(len(COUNTS), 2, 4, 0, epoch)
    earlier = {int(i) for ids in blocks[:block] for i in ids}
    current = {int(i) for i in blocks[block]}
    files = [p for i, p in enumerate(pieces["path"]) if i in earlier and i not in current]
    assert files
    for path in files:  # Opening any of them now raises NotFoundError.
        os.remove(path)
    remaining = int(pieces["count"][blocks[block]].sum()) - offset
    resumed = _values(shards.stream(pieces, _read_piece, start=start, **kwargs), remaining)
    assert resumed == full[start : start + remaining]


def test_locate_and_bad_input():
    counts = np.array([4, 4, 4])
    assert shards.locate(counts, 1, 0, 0, 12 * 5 + 4) == (5, 1, 0)
    with pytest.raises(ValueError, match="block_size=0"):
        shards.pieces_per_block(counts, 0)
    with pytest.raises(ValueError, match="position=-1"):
        shards.locate(counts, 1, 0, 0, -1)
    with pytest.raises(ValueError, match="no records"):
        shards.locate(np.array([0, 0]), 1, 0, 0, 0)


def test_empty_pieces_are_skipped(tmp_path):
    paths = _write(tmp_path, [3, 0, 2])
    pieces = {"path": np.array(paths), "skip": np.zeros(3, np.int64), "count": np.array([3, 0, 2])}
    values = _values(shards.stream(pieces, _read_piece, block_size=2, seed=0, process=0), 10)
    assert sorted(v for v, _ in values[:5]) == sorted(v for v, _ in values[5:]) == [0, 1, 2, 3, 4]
