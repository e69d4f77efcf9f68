"""Noise injection: exact counts, never the same class, realised matrices, determinism, validation."""

import math

import ml_collections
import numpy as np
import pytest

from nml_jax import config_lib, data, defaults, noise, workdir


@pytest.fixture(scope="module")
def labels():
    """Real Fashion-MNIST train labels (a slice)."""
    return data.load_labels("nml_fashion_mnist", "train[:3000]")


def _config(kind="symmetric", ratio=0.2, seed=0, overwrite=False, **extra):
    config = ml_collections.ConfigDict()
    config.overwrite = overwrite
    config.dataset = "nml_fashion_mnist"
    config.train_split = "train[:3000]"
    config.data_dir = None
    config.noise = defaults.noise_block(kind, ratio, seed)
    config.noise.update(extra)
    return config


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.1, 0.3333, 0.9])
def test_symmetric_exact_count_and_never_same_class(labels, ratio):
    out = noise.make_label_noise(labels, 10, _config(ratio=ratio).noise)
    assert out["is_noisy"].sum() == round(ratio * labels.size)
    np.testing.assert_array_equal(out["is_noisy"], out["noisy_labels"] != labels)
    np.testing.assert_array_equal(out["clean_labels"], labels)


def test_symmetric_targets_spread_over_all_other_classes(labels):
    out = noise.make_label_noise(labels, 10, _config(ratio=0.9).noise)
    flipped = out["is_noisy"]
    offsets = (out["noisy_labels"][flipped] - labels[flipped]) % 10
    counts = np.bincount(offsets, minlength=10)
    assert counts[0] == 0
    expected = flipped.sum() / 9
    assert np.all(np.abs(counts[1:] - expected) < 5 * math.sqrt(expected))


def test_same_seed_same_noise_other_seed_differs(labels):
    a = noise.make_label_noise(labels, 10, _config(seed=3).noise)
    b = noise.make_label_noise(labels, 10, _config(seed=3).noise)
    c = noise.make_label_noise(labels, 10, _config(seed=4).noise)
    np.testing.assert_array_equal(a["noisy_labels"], b["noisy_labels"])
    assert not np.array_equal(a["noisy_labels"], c["noisy_labels"])


def test_realised_transition_hand_computed():
    clean = np.array([0, 0, 0, 0, 1, 1, 2])
    noisy = np.array([0, 1, 1, 2, 1, 0, 2])
    t = noise.realised_transition(clean, noisy, 4)
    expected = np.array(
        [[0.25, 0.5, 0.25, 0], [0.5, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64
    )
    np.testing.assert_allclose(t, expected)


def test_transition_matches_flip_fraction(labels):
    out = noise.make_label_noise(labels, 10, _config(ratio=0.3).noise)
    t = out["transition"]
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    for c in range(10):
        in_class = labels == c
        np.testing.assert_allclose(1 - t[c, c], out["is_noisy"][in_class].mean())


def test_asymmetric_flips_each_paired_class_at_rate_r(labels):
    pairs = noise.DEFAULT_PAIRS["fashion_mnist"]
    out = noise.make_label_noise(labels, 10, _config("asymmetric", 0.2).noise, "nml_fashion_mnist")
    flipped = out["is_noisy"]
    for c in range(10):
        in_class = labels == c
        expected = round(0.2 * in_class.sum()) if c in pairs else 0
        assert flipped[in_class].sum() == expected, f"class {c}"
    assert flipped.sum() < round(0.2 * labels.size)  # Classes 1, 3, 8, 9 have no pair.
    for clean, noisy in zip(labels[flipped], out["noisy_labels"][flipped]):
        assert pairs[int(clean)] == noisy


def test_asymmetric_one_pair_and_high_ratio(labels):
    out = noise.make_label_noise(labels, 10, _config("asymmetric", 0.9, pairs={0: 6}).noise)
    class0 = labels == 0
    assert out["is_noisy"].sum() == out["is_noisy"][class0].sum() == round(0.9 * class0.sum())
    np.testing.assert_allclose(out["transition"][0, [0, 6]], [0.1, 0.9], atol=0.5 / class0.sum())


@pytest.mark.parametrize(
    "dataset, key",
    [
        ("nml_fashion_mnist", "fashion_mnist"),
        ("fashion_mnist", "fashion_mnist"),
        ("nml_mnist5k", "mnist"),
        ("cifar10", "cifar10"),
        ("cifar10:3.0.2", "cifar10"),
    ],
)
def test_default_pairs_by_exact_dataset_name(dataset, key):
    assert noise.default_pairs(dataset) == noise.DEFAULT_PAIRS[key]


@pytest.mark.parametrize("dataset", ["cifar100", "emnist", "nml_fashion_mnist_sketch"])
def test_default_pairs_never_match_a_substring(dataset):
    with pytest.raises(
        config_lib.ConfigError, match=f"No default asymmetric pairing for dataset '{dataset}'"
    ):
        noise.default_pairs(dataset)


def test_asymmetric_unknown_class_rejected(labels):
    config = _config("asymmetric", 0.1, pairs={0: 12})
    with pytest.raises(config_lib.ConfigError, match="class 12"):
        noise.make_label_noise(labels, 10, config.noise)


def test_matrix_noise_only_allowed_destinations(labels):
    matrix = np.eye(10)
    matrix[3] = 0.0
    matrix[3, [3, 5, 8]] = [0.5, 0.25, 0.25]
    matrix[1] = 0.0
    matrix[1, [1, 2]] = [0.4, 0.6]
    eligible = np.isin(labels, [1, 3]).sum()
    ratio = 0.5 * eligible / labels.size
    out = noise.make_label_noise(labels, 10, _config("matrix", ratio, matrix=matrix.tolist()).noise)
    flipped = out["is_noisy"]
    assert flipped.sum() == round(ratio * labels.size)
    pairs = set(zip(labels[flipped].tolist(), out["noisy_labels"][flipped].tolist()))
    assert pairs <= {(3, 5), (3, 8), (1, 2)}


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.full((10, 10), 0.2), "row 0 sums to 2"),
        (np.eye(3), r"shape \(3, 3\)"),
        (-np.eye(10), "non-negative"),
    ],
)
def test_bad_matrix_rejected(labels, matrix, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        noise.make_label_noise(labels, 10, _config("matrix", 0.1, matrix=matrix.tolist()).noise)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_ratio_rejected(labels, ratio):
    with pytest.raises(
        config_lib.ConfigError, match=r"noise.ratio=.*expected a number in \[0.0, 1.0\)"
    ):
        noise.make_label_noise(labels, 10, _config(ratio=ratio).noise)


def test_unknown_kind_rejected(labels):
    with pytest.raises(config_lib.ConfigError, match=r"noise\.kind='symetric'"):
        noise.make_label_noise(labels, 10, _config(kind="symetric").noise)


@pytest.mark.parametrize("n, ratio", [(1000, 0.1), (1000, 0.25), (37, 0.5), (50, 0.0)])
def test_caption_swap_exact_mismatch(n, ratio):
    out = noise.make_caption_noise(n, _config("caption_swap", ratio).noise)
    index = out["caption_index"]
    assert sorted(index.tolist()) == list(range(n))  # Every caption is used exactly once.
    assert (index != np.arange(n)).sum() == round(ratio * n)
    np.testing.assert_array_equal(out["is_noisy"], index != np.arange(n))


def test_caption_swap_of_one_pair_rejected():
    with pytest.raises(config_lib.ConfigError, match="at least 2"):
        noise.make_caption_noise(10, _config("caption_swap", 0.1).noise)


@pytest.mark.parametrize(
    "counts, ratio",
    [([100, 100, 100], 0.1), ([7, 13, 40, 1, 9], 0.25), ([8, 8], 0.2), ([5, 5, 5, 5], 0.1)],
)
def test_caption_swap_within_shards(counts, ratio):
    """Exactly round(r * N) pairs swapped, every caption used once, no caption leaves its shard, and every
    shard's share is within one pair of r (or 0 / 2 where a lone pair had to move)."""
    n = sum(counts)
    out = noise.make_caption_noise(n, _config("caption_swap", ratio).noise, np.array(counts))
    index = out["caption_index"]
    assert sorted(index.tolist()) == list(range(n))
    assert (index != np.arange(n)).sum() == round(ratio * n)
    shard = np.repeat(np.arange(len(counts)), counts)
    np.testing.assert_array_equal(shard[index], shard)
    per_shard = np.bincount(shard, weights=out["is_noisy"], minlength=len(counts))
    assert not np.any(per_shard == 1)
    ok = (np.abs(per_shard - ratio * np.array(counts)) < 1) | np.isin(per_shard, (0, 2))
    assert ok.sum() >= len(counts) - 1, per_shard  # At most one shard takes the moved pairs.
    np.testing.assert_array_equal(out["shard_counts"], counts)


def test_shard_allocation_moves_lone_pairs():
    rng = np.random.default_rng(0)
    # 4 swaps over 4 equal shards: one each would leave every shard with a pair it cannot derange.
    alloc = noise.shard_allocation(np.array([5, 5, 5, 5]), 4, rng)
    assert alloc.sum() == 4 and set(alloc.tolist()) <= {0, 2, 4}
    with pytest.raises(config_lib.ConfigError, match="single swapped pair"):
        noise.shard_allocation(np.array([2, 1]), 3, rng)


def test_load_or_make_reuses_refuses_and_remakes(tmp_path, labels):
    first = noise.load_or_make(_config(ratio=0.1), str(tmp_path), labels=labels)
    saved = noise.load(str(tmp_path / "noise.npz"))
    assert set(saved) >= {"clean_labels", "noisy_labels", "is_noisy", "transition", "ratio", "seed"}
    assert saved["is_noisy"].dtype == bool
    np.testing.assert_array_equal(saved["noisy_labels"], first["noisy_labels"])
    reused = noise.load_or_make(_config(ratio=0.1), str(tmp_path), labels=labels)
    np.testing.assert_array_equal(reused["noisy_labels"], first["noisy_labels"])
    with pytest.raises(workdir.WorkdirError, match=r"ratio: 0\.1 -> 0\.2"):
        noise.load_or_make(_config(ratio=0.2), str(tmp_path), labels=labels)
    assert noise.load(str(tmp_path / "noise.npz"))["ratio"] == 0.1
    again = noise.load_or_make(_config(ratio=0.2, overwrite=True), str(tmp_path), labels=labels)
    assert again["is_noisy"].sum() == round(0.2 * labels.size)
    assert noise.load(str(tmp_path / "noise.npz"))["ratio"] == 0.2
