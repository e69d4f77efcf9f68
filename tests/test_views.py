"""NMTune's augmented views: the official crop-and-flip recipe, and the online mode against the bank."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nml_jax import augment, config_lib, defaults, features, tuning


def _images(n=6, size=28, channels=1, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, channels)).astype(np.float32)


def test_crop_boxes_follow_the_recipe():
    keys = jax.random.split(jax.random.key(0), 2000)
    for height, width, (lo, hi) in [
        (28, 28, (0.8, 1.0)),
        (32, 32, (0.9, 1.0)),
        (224, 160, (0.8, 1.0)),
    ]:
        draw = functools.partial(augment.crop_box, height=height, width=width, scale=(lo, hi))
        boxes = np.asarray(jax.vmap(draw)(keys))
        top, left, h, w = boxes.T
        assert np.all(top >= 0) and np.all(left >= 0)
        assert np.all(top + h <= height) and np.all(left + w <= width)
        # round() of each side moves the area by at most about one pixel row and column.
        area = h * w / (height * width)
        slack = (h + w + 1) / (height * width)
        assert np.all(area >= lo - slack) and np.all(area <= hi + slack)
        ratio = w / h
        assert np.all(ratio > 0.75 * (1 - 2 / min(h.min(), w.min())))
        assert len({tuple(b) for b in boxes}) > 50  # Boxes really vary.


def test_identity_recipe_is_exact_and_constant_images_stay_constant():
    x = _images()
    keys = jax.random.split(jax.random.key(1), len(x))
    same = augment.augment(keys, jnp.asarray(x), (1.0, 1.0), False)
    np.testing.assert_allclose(same, x, atol=1e-5)
    constant = np.full((4, 32, 32, 3), -0.7, np.float32)
    out = augment.augment(keys[:4], jnp.asarray(constant), (0.8, 1.0), True)
    np.testing.assert_allclose(out, constant, atol=1e-5)  # No zero padding enters a crop.


def test_views_are_cropped_flipped_per_recipe_and_independent_of_the_batch():
    x = jnp.asarray(_images(n=64, seed=2))
    keys = augment.example_keys(3, 1, jnp.arange(64))
    views = np.asarray(augment.augment(keys, x, (0.8, 1.0), True))
    changed = np.abs(views - np.asarray(x)).max(axis=(1, 2, 3)) > 1e-3
    assert changed.mean() > 0.9
    # One example's view is a function of its own key only (to float round-off of the batched matmuls).
    np.testing.assert_allclose(
        views[5], augment.augment_one(keys[5], x[5], (0.8, 1.0), True), atol=2e-5
    )
    half = np.asarray(augment.augment(keys[32:], x[32:], (0.8, 1.0), True))
    np.testing.assert_allclose(half, views[32:], atol=2e-5)
    # Full-image crops isolate the flip: supervised flips about half the images, CLIP never.
    flipped = np.asarray(augment.augment(keys, x, (1.0, 1.0), True))
    is_flipped = np.all(np.abs(flipped - np.asarray(x)[:, :, ::-1]) < 1e-5, axis=(1, 2, 3))
    assert 16 < is_flipped.sum() < 48
    clip = augment.recipe("auto", "clip")
    assert clip == {"name": "clip", "scale": (0.9, 1.0), "flip": False}
    assert augment.recipe("auto", "supervised")["flip"]


def _linear_encoder(channels=1, size=28, dim=24):
    w = jax.random.normal(jax.random.key(7), (size * size * channels, dim)) / size

    def apply_fn(variables, inputs):
        return jnp.tanh(inputs.reshape(len(inputs), -1) @ variables["w"])

    return apply_fn, {"w": w}


def _head_config(method="nmtune", epochs=2):
    config = defaults.head(method)
    config.epochs = epochs
    config.batch_size = 16
    config.lr = 1e-2
    return config


def test_online_mode_runs_the_encoder_on_two_fresh_views_of_each_batch():
    apply_fn, variables = _linear_encoder()
    seen = []

    def recording(variables, inputs):
        seen.append(inputs.shape)  # At trace time: the static shape of the encoder's batch.
        return apply_fn(variables, inputs)

    x = _images(n=40, seed=3)
    labels = np.arange(40) % 4
    online = features.OnlineViews(x, recording, variables, (0.8, 1.0), True)
    bank = np.asarray(apply_fn(variables, jnp.asarray(x)))[None]
    head = tuning.fit("nmtune", bank, labels, _head_config(), num_classes=4, online=online)
    assert seen and all(shape == (32, 28, 28, 1) for shape in seen)  # 2B rows, B = 16.
    assert np.all(np.isfinite(head.loss_curve))

    # What a step draws: the encoder on augment() of the batch, two different draws, new ones every step.
    indices = jnp.arange(8)
    data = (jnp.asarray(x), variables)
    spec = (apply_fn, (0.8, 1.0), True)
    f1, f2 = tuning.online_views(spec, data, 0, 5, indices)
    assert f1.shape == f2.shape == (8, 24)
    assert not np.allclose(f1, f2)
    g1, _ = tuning.online_views(spec, data, 0, 6, indices)
    assert not np.allclose(f1, g1)
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), tuning._VIEW_STREAM), 5)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), 0))(indices)
    expected = apply_fn(variables, augment.augment(keys, jnp.asarray(x[:8]), (0.8, 1.0), True))
    np.testing.assert_allclose(f1, expected, rtol=1e-5, atol=1e-6)
    # Example i's view does not depend on which batch row it sits in.
    h1, _ = tuning.online_views(spec, data, 0, 5, indices[::-1])
    np.testing.assert_allclose(h1[::-1], f1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["mlp", "nmtune"])
def test_bank_and_online_agree_with_one_fixed_augmentation(method):
    """A deterministic encoder and the identity augmentation (scale 1, no flip): a bank of K = 1 view and the
    online mode feed the same two features per example and step, so every loss term matches."""
    apply_fn, variables = _linear_encoder()
    x = _images(n=50, seed=4)
    labels = np.arange(50) % 5
    plain = np.asarray(apply_fn(variables, jnp.asarray(x)))
    keys = augment.example_keys(0, 1, jnp.arange(50))
    view = np.asarray(apply_fn(variables, augment.augment(keys, jnp.asarray(x), (1.0, 1.0), False)))
    bank = np.stack([plain, view])  # V = 2: NMTune draws views 0 and 1.
    config = _head_config(method)
    from_bank = tuning.fit(method, bank, labels, config, num_classes=5)
    online = features.OnlineViews(x, apply_fn, variables, (1.0, 1.0), False)
    from_online = tuning.fit(method, bank[:1], labels, config, num_classes=5, online=online)
    for name, curve in from_bank.curves.items():
        np.testing.assert_allclose(from_online.curves[name], curve, rtol=2e-4, atol=1e-6)
    # With the real recipe the online mode trains on other inputs, so the curves part.
    moving = features.OnlineViews(x, apply_fn, variables, (0.8, 1.0), True)
    other = tuning.fit(method, bank[:1], labels, config, num_classes=5, online=moving)
    assert not np.allclose(other.curves["loss"], from_bank.curves["loss"], rtol=1e-3)


def test_views_config_is_checked_at_start():
    config = defaults.nmtune(smoke=True)
    assert config.views.mode == "bank" and config.views.count == defaults.DEFAULT_VIEWS
    assert defaults.downstream(("lp",)).views.mode == "none"
    config.views.count = 0
    with pytest.raises(config_lib.ConfigError, match=r"views\.count"):
        features.validate(config)
    config.views.update(mode="online", recipe="simclr")
    with pytest.raises(config_lib.ConfigError, match=r"views\.recipe"):
        features.validate(config)
