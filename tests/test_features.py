"""Feature cache, black-box .npz import and its validation errors, input matching."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from nml_jax import config_lib, features, nmtune, tasks

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class CountingEncoder:
    """A fixed random projection of the pixels; counts how many images it has encoded."""

    input_shape = (28, 28, 1)
    feature_dim = 16

    def __init__(self, fingerprint="enc-a"):
        self.fingerprint = fingerprint
        self.calls = 0
        self.w = np.random.default_rng(0).normal(size=(28 * 28, 16)).astype(np.float32)

    def inputs(self, images):
        return images.astype(np.float32) / 255.0

    def embed(self, inputs):
        self.calls += len(inputs)
        return inputs.reshape(len(inputs), -1) @ self.w

    def features(self, images):
        return self.embed(self.inputs(images))


VIEWS = {"recipe": "supervised", "scale": [0.8, 1.0], "flip": True, "seed": 0}


DOMAIN = tasks.Domain("uci_digits", "nml_uci_digits", "test[:100]")


def test_cache_miss_then_hit_and_key_changes(tmp_path):
    encoder = CountingEncoder()
    views, labels = features.domain_features(
        encoder, DOMAIN, cache_dir=str(tmp_path), chunk_size=32
    )
    assert views.shape == (1, 100, 16) and labels.shape == (100,)
    assert encoder.calls == 100
    again, labels2 = features.domain_features(
        encoder, DOMAIN, cache_dir=str(tmp_path), chunk_size=32
    )
    assert encoder.calls == 100  # Read from the cache.
    np.testing.assert_array_equal(again, views)
    np.testing.assert_array_equal(labels2, labels)
    other = CountingEncoder("enc-b")
    features.domain_features(other, DOMAIN, cache_dir=str(tmp_path), chunk_size=32)
    assert other.calls == 100  # A new checkpoint is a cache miss.


def test_view_bank_reuses_view_zero_and_views_differ(tmp_path):
    encoder = CountingEncoder()
    features.domain_features(encoder, DOMAIN, cache_dir=str(tmp_path), chunk_size=50)
    views, _ = features.domain_features(
        encoder, DOMAIN, cache_dir=str(tmp_path), chunk_size=50, views=2, view_spec=VIEWS
    )
    assert views.shape == (3, 100, 16)
    assert encoder.calls == 300  # View 0 came from the cache.
    assert not np.allclose(views[1], views[2]) and not np.allclose(views[0], views[1])
    # The views depend on their seed and recipe, never on the chunking.
    other_chunks, _ = features.domain_features(
        encoder, DOMAIN, cache_dir=str(tmp_path / "b"), chunk_size=7, views=2, view_spec=VIEWS
    )
    np.testing.assert_allclose(other_chunks, views, rtol=1e-5, atol=1e-5)
    reseeded, _ = features.domain_features(
        encoder,
        DOMAIN,
        cache_dir=str(tmp_path),
        chunk_size=50,
        views=1,
        view_spec={**VIEWS, "seed": 1},
    )
    assert encoder.calls == 600 + 100  # A new seed is a new view 1 (view 0 cached).
    assert not np.allclose(reseeded[1], views[1])


def test_chunking_does_not_change_features(tmp_path):
    encoder = CountingEncoder()
    a, _ = features.domain_features(encoder, DOMAIN, cache_dir=str(tmp_path / "a"), chunk_size=7)
    b, _ = features.domain_features(encoder, DOMAIN, cache_dir=str(tmp_path / "b"), chunk_size=100)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_match_input_grey_rgb_and_resize():
    rgb = np.zeros((2, 28, 28, 3), np.uint8)
    rgb[..., 0] = 100
    grey = features.match_input(rgb, (28, 28, 1))
    assert grey.shape == (2, 28, 28, 1) and grey[0, 0, 0, 0] == round(0.299 * 100)
    assert features.match_input(grey, (32, 32, 3)).shape == (2, 32, 32, 3)


def _write(path, **arrays):
    base = {
        "train_features": np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32),
        "train_labels": np.arange(20) % 3,
        "test_features": np.ones((6, 4), np.float32),
        "test_labels": np.arange(6) % 3,
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


def test_npz_round_trip_with_ood_sets(tmp_path):
    path = _write(
        tmp_path / "api.npz", ood_shift_features=np.zeros((5, 4)), ood_shift_labels=np.arange(5) % 3
    )
    id_task, ood_task = features.load_npz(path)
    assert (id_task.kind, ood_task.kind) == ("id", "ood")
    assert id_task.num_classes == 3 and id_task.train_views.shape == (1, 20, 4)
    assert list(ood_task.tests) == ["shift"] and ood_task.tests["shift"][0].dtype == np.float32
    features.save_npz(str(tmp_path / "copy.npz"), [id_task, ood_task])
    id_again, ood_again = features.load_npz(str(tmp_path / "copy.npz"), name="api")
    np.testing.assert_array_equal(id_again.train_features, id_task.train_features)
    np.testing.assert_array_equal(ood_again.tests["shift"][1], ood_task.tests["shift"][1])


def _npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _good_arrays():
    return {
        "train_features": np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32),
        "train_labels": np.arange(20) % 3,
        "test_features": np.ones((6, 4), np.float32),
        "test_labels": np.arange(6) % 3,
    }


def _zip_with(member, content):
    """A valid file plus one extra zip member `member` holding raw `content`."""

    def make(path):
        _write(path)
        with zipfile.ZipFile(path, "a") as z:
            z.writestr(member, content)

    return make


def _replace_member(key, content):
    """A file whose `<key>.npy` member holds `content` instead of an array."""

    def make(path):
        with zipfile.ZipFile(path, "w") as z:
            for name, array in _good_arrays().items():
                z.writestr(f"{name}.npy", content if name == key else _npy_bytes(array))

    return make


def _flip_byte_in_member(path):
    """A stored (uncompressed) member with one data byte changed: the zip's CRC check fails."""
    _write(path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\x93NUMPY") + 200  # Inside train_features' data, past the .npy header.
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _raw(content):
    def make(path):
        path.write_bytes(content)

    return make


def _arrays(**changes):
    return lambda path: _write(path, **changes)


# (case, how to make the file at `path`, what the message must say besides the path).
MALFORMED = [
    ("directory", lambda path: path.mkdir(), "is a directory"),
    ("empty file", _raw(b""), r"is empty \(0 bytes\)"),
    ("text file", _raw(b"train_features,train_labels\n0.1,3\n"), "is a text file"),
    ("single .npy", _raw(_npy_bytes(np.ones(3))), "single .npy array"),
    ("pickle", _raw(pickle.dumps({"a": 1})), "pickled Python data"),
    ("binary garbage", _raw(bytes(range(256))), "not an .npz archive"),
    (
        "truncated zip",
        lambda path: path.write_bytes(_npz_bytes(**_good_arrays())[:300]),
        "truncated or damaged zip",
    ),
    ("damaged member (CRC)", _flip_byte_in_member, "damaged .npz archive.*CRC"),
    (
        "member not .npy",
        _replace_member("train_features", b"garbage"),
        "'train_features' .*not a .npy",
    ),
    (
        "member with a broken .npy header",
        _replace_member("test_labels", b"\x93NUMPY\x01\x00garbage"),
        "test_labels is not a valid .npy array",
    ),
    ("renamed .npy member", _zip_with("notes.txt", b"hello"), "'notes.txt' .*not a .npy array"),
    (
        "object array",
        _arrays(test_labels=np.array([0, 1, "x"], dtype=object)),
        "test_labels holds Python objects",
    ),
    (
        "missing key",
        _arrays(test_labels=None),
        r"missing \['test_labels'\]; found \['test_features'",
    ),
    ("unknown key", _arrays(extra=np.ones(3)), r"unknown keys \['extra'\]"),
    (
        "int features",
        _arrays(train_features=np.ones((20, 4), np.int64)),
        "train_features has dtype int64",
    ),
    (
        "1-d features",
        _arrays(test_features=np.ones(6, np.float32)),
        r"test_features .*shape \(6,\); expected a float",
    ),
    (
        "no train rows",
        _arrays(train_features=np.ones((0, 4), np.float32), train_labels=np.zeros(0, np.int64)),
        r"train_features has shape \(0, 4\); expected at least one row",
    ),
    (
        "no test rows",
        _arrays(test_features=np.ones((0, 4), np.float32), test_labels=np.zeros(0, np.int64)),
        r"test_features has shape \(0, 4\)",
    ),
    (
        "no feature columns",
        _arrays(train_features=np.ones((20, 0), np.float32)),
        r"shape \(20, 0\)",
    ),
    (
        "test dim",
        _arrays(test_features=np.ones((6, 5), np.float32)),
        "test_features has dimension 5; train_features has 4",
    ),
    (
        "ood dim",
        _arrays(ood_x_features=np.ones((3, 2), np.float32), ood_x_labels=np.zeros(3, np.int64)),
        "ood_x_features has dimension 2",
    ),
    (
        "row count",
        _arrays(train_labels=np.arange(19) % 3),
        "train_labels has 19 labels for 20 feature rows",
    ),
    (
        "nan",
        _arrays(test_features=np.where(np.eye(6, 4) > 0, np.nan, 1.0).astype(np.float32)),
        "test_features holds non-finite values .*nan in row 0, column 0",
    ),
    (
        "inf",
        _arrays(train_features=np.pad(np.full((1, 4), np.inf, np.float32), ((3, 16), (0, 0)))),
        "train_features holds non-finite values .*inf in row 3",
    ),
    (
        "fractional labels",
        _arrays(train_labels=np.arange(20) * 0.5),
        r"train_labels has dtype float64 .*row 1 is 0.5",
    ),
    (
        "whole float labels",
        _arrays(test_labels=np.arange(6.0) % 3),
        r"test_labels .*whole numbers.*astype",
    ),
    ("string labels", _arrays(test_labels=np.array(list("abcabc"))), "test_labels has dtype <U1"),
    (
        "2-d labels",
        _arrays(train_labels=np.zeros((20, 1), np.int64)),
        r"train_labels .*shape \(20, 1\)",
    ),
    (
        "negative label",
        _arrays(train_labels=np.arange(20) % 3 - 1),
        r"train_labels holds a negative label \(-1 in row 0\)",
    ),
    (
        "test label outside",
        _arrays(test_labels=np.array([0, 1, 2, 3, 0, 1])),
        r"test_labels holds label 3 \(row 3\), outside the training set's 3 classes",
    ),
    (
        "num_classes 4.7",
        _arrays(num_classes=np.float64(4.7)),
        r"num_classes=4.7 .*expected a whole number",
    ),
    ("num_classes vector", _arrays(num_classes=np.array([3, 3])), r"num_classes=\[3, 3\]"),
    (
        "num_classes 1",
        _arrays(train_labels=np.zeros(20, np.int64), num_classes=np.int64(1)),
        "num_classes=1; expected at least 2",
    ),
    (
        "num_classes too small",
        _arrays(num_classes=np.int64(2)),
        "num_classes=2, but train_labels holds label 2",
    ),
    (
        "single class",
        _arrays(train_labels=np.full(20, 2), num_classes=np.int64(3)),
        "train_labels hold only class 2",
    ),
    (
        "ood half",
        _arrays(ood_x_features=np.ones((3, 4), np.float32)),
        "needs both ood_x_features and ood_x_labels",
    ),
    (
        "ood label outside",
        _arrays(ood_x_features=np.ones((3, 4)), ood_x_labels=np.array([0, 1, 7])),
        "ood_x_labels holds label 7",
    ),
    (
        "views shape",
        _arrays(train_views=np.ones((2, 19, 4), np.float32)),
        r"train_views has shape .*expected \[V, 20, 4\]",
    ),
    (
        "views nan",
        _arrays(train_views=np.stack([np.zeros((20, 4)), np.full((20, 4), np.nan)])),
        r"train_views\[1\] holds non-finite",
    ),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_npz_is_one_precise_user_error(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(features.FeatureFileError, match=message) as raised:
        features.load_npz(str(path))
    text = str(raised.value)
    assert str(path) in text and "\n" not in text
    assert isinstance(raised.value, config_lib.UserError)


def test_missing_npz_file(tmp_path):
    path = str(tmp_path / "nope.npz")
    with pytest.raises(features.FeatureFileError, match=f"Features file {path} does not exist"):
        features.load_npz(path)


def test_whole_float_num_classes_and_extra_classes_are_kept(tmp_path):
    path = _write(tmp_path / "ok.npz", num_classes=np.float32(5.0))
    (task,) = features.load_npz(path)
    assert task.num_classes == 5 and task.train_labels.dtype == np.int64


def test_stage_validation_reads_the_features_file(tmp_path):
    """A bad features_npz fails in nmtune.validate, before any work, with the file named."""
    config = config_lib.load_config(os.path.join(CONFIGS, "nmtune.py") + ":smoke")
    path = tmp_path / "labels.npz"
    _write(path, train_labels=np.full(20, 1))
    config.features_npz = str(path)
    with pytest.raises(features.FeatureFileError, match=f"{path}: train_labels hold only class 1"):
        nmtune.validate(config)
    config.features_npz = _write(tmp_path / "good.npz")
    nmtune.validate(config)
