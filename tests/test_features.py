"""Feature cache, black-box .npz import and its validation errors, input matching."""

import numpy as np
import pytest

from nml_jax import features, tasks


class CountingEncoder:
    """A fixed random projection of the pixels; counts how many images it has encoded."""

    input_shape = (28, 28, 1)
    feature_dim = 16

    def __init__(self, fingerprint="enc-a"):
        self.fingerprint = fingerprint
        self.calls = 0
        self.w = np.random.default_rng(0).normal(size=(28 * 28, 16)).astype(np.float32)

    def features(self, images):
        self.calls += len(images)
        return images.reshape(len(images), -1).astype(np.float32) @ self.w / 255.0


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
        encoder, DOMAIN, cache_dir=str(tmp_path), chunk_size=50, views=2
    )
    assert views.shape == (3, 100, 16)
    assert encoder.calls == 300  # View 0 came from the cache.
    assert not np.allclose(views[1], views[2]) and not np.allclose(views[0], views[1])


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


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"test_labels": None}, r"missing \['test_labels'\]"),
        ({"train_features": np.ones((20, 4), np.int64)}, "expected a float array"),
        ({"test_features": np.ones((6, 5), np.float32)}, "dimension 5; train_features has 4"),
        ({"train_labels": np.arange(19)}, "19 labels for 20 feature rows"),
        ({"test_labels": np.array([0, 1, 2, 3, 0, 1])}, "label 3, outside the source's 3 classes"),
        ({"train_labels": np.arange(20) - 1}, "negative label"),
        ({"test_features": np.full((6, 4), np.nan, np.float32)}, "non-finite values"),
        ({"train_labels": np.arange(20) * 0.5}, "expected integer labels"),
        (
            {"ood_x_features": np.ones((3, 4), np.float32)},
            "needs both ood_x_features and ood_x_labels",
        ),
        (
            {"ood_x_features": np.ones((3, 4)), "ood_x_labels": np.array([0, 1, 7])},
            "label 7, outside",
        ),
        ({"extra": np.ones(3)}, r"unknown keys \['extra'\]"),
        ({"train_views": np.ones((2, 19, 4), np.float32)}, r"expected \[V, 20, 4\]"),
    ],
)
def test_npz_validation_errors(tmp_path, arrays, message):
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(features.FeatureFileError, match=message):
        features.load_npz(path)


def test_npz_with_pickled_objects_rejected(tmp_path):
    path = _write(tmp_path / "obj.npz", test_labels=np.array([0, 1, "x"], dtype=object))
    with pytest.raises(features.FeatureFileError, match="without pickle"):
        features.load_npz(path)


def test_missing_npz_file():
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        features.load_npz("nope.npz")
