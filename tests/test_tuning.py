"""Heads and the scan-based transfer trainer: references, sharding invariance, determinism, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nml_jax import config_lib, defaults, parallel, tuning
from nml_jax.models import heads


def _blobs(num_examples=200, dim=16, num_classes=4, num_views=2, seed=0, spread=1.0):
    """Gaussian clusters with `num_views` noisy views of every example."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, num_examples)
    clean = centres[labels] + spread * rng.normal(size=(num_examples, dim))
    views = [clean + 0.1 * rng.normal(size=clean.shape) for _ in range(num_views - 1)]
    return np.stack([clean, *views]).astype(np.float32), labels


def _small_config(method, epochs=3):
    config = defaults.head(method)
    config.epochs = epochs
    return config


def test_linear_head_init_is_kaiming_uniform_with_zero_bias():
    params = tuning.init_variables(heads.LinearHead(10), dim=96, seed=0)["params"]["classifier"]
    bound = np.sqrt(6.0 / 96)
    assert params["kernel"].shape == (96, 10)
    assert np.abs(params["kernel"]).max() <= bound
    assert (
        np.abs(params["kernel"]).max() > 0.9 * bound
    )  # Uniform over the full range, not narrower.
    np.testing.assert_array_equal(params["bias"], 0.0)


def test_nmtune_head_shapes_depth_and_residual():
    model = heads.NMTuneHead(num_classes=3, depth=2)
    variables = tuning.init_variables(model, dim=8, seed=0)
    params = variables["params"]
    assert params["hidden_0"]["kernel"].shape == (8, 32)
    assert params["hidden_1"]["kernel"].shape == (32, 32)
    assert params["out"]["kernel"].shape == (32, 8)
    np.testing.assert_array_equal(params["scale"], np.ones(8))
    assert set(variables["batch_stats"]) == {"bn_0", "bn_1"}
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 8)), jnp.float32)
    _, z = model.apply(variables, x, train=False)
    # z = s * MLP(F) + F: with s = 0 the head passes F through.
    zero_scale = {**variables, "params": {**params, "scale": jnp.zeros(8)}}
    np.testing.assert_allclose(model.apply(zero_scale, x, train=False)[1], x, atol=1e-6)
    assert not np.allclose(z, x)
    plain = heads.NMTuneHead(num_classes=3, residual=False)
    assert "scale" not in tuning.init_variables(plain, dim=8, seed=0)["params"]


def test_masked_batchnorm_train_and_eval_modes():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(2.0, 3.0, size=(6, 4)), jnp.float32)
    mask = jnp.array([1, 1, 1, 1, 0, 0])
    bn = heads.MaskedBatchNorm()
    variables = bn.init(jax.random.key(0), x, train=False)
    y, updates = bn.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])
    valid = np.asarray(x[:4])
    np.testing.assert_allclose(y[:4].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y[:4].var(axis=0), 1.0, rtol=1e-3)  # Biased variance normalises.
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * valid.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * valid.var(axis=0, ddof=1), rtol=1e-5)
    # Padding rows do not change the real rows' outputs.
    garbage = x.at[4:].set(1e3)
    y_garbage, _ = bn.apply(variables, garbage, train=True, mask=mask, mutable=["batch_stats"])
    np.testing.assert_allclose(y_garbage[:4], y[:4], rtol=1e-5)
    # Eval mode uses the running statistics, row by row.
    trained = {**variables, "batch_stats": stats}
    y_eval = bn.apply(trained, x, train=False)
    expected = (np.asarray(x) - stats["mean"]) / np.sqrt(stats["var"] + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5)
    np.testing.assert_allclose(bn.apply(trained, x[:1], train=False), y_eval[:1], rtol=1e-6)


def test_epoch_batches_cover_every_example_once_and_draw_views():
    indices, mask = tuning.epoch_batches(seed=3, epoch=0, num_examples=10, batch_size=4)
    assert indices.shape == mask.shape == (3, 4)
    assert sorted(np.asarray(indices)[np.asarray(mask)].tolist()) == list(range(10))
    assert int(mask.sum()) == 10
    again, _ = tuning.epoch_batches(seed=3, epoch=0, num_examples=10, batch_size=4)
    other, _ = tuning.epoch_batches(seed=3, epoch=1, num_examples=10, batch_size=4)
    np.testing.assert_array_equal(indices, again)
    assert not np.array_equal(indices, other)
    # V >= 3: view 0 is the plain feature; two different augmented views are drawn, never view 0.
    first, second = tuning.draw_views(seed=0, step=5, num_views=5, batch_size=400)
    first, second = np.asarray(first), np.asarray(second)
    assert np.all(first != second)
    assert set(first.tolist()) == set(second.tolist()) == {1, 2, 3, 4}
    later = np.asarray(tuning.draw_views(seed=0, step=6, num_views=5, batch_size=400)[0])
    assert not np.array_equal(first, later)
    first, second = tuning.draw_views(seed=0, step=5, num_views=2, batch_size=4)
    np.testing.assert_array_equal(first, 0)
    np.testing.assert_array_equal(second, 1)
    first, second = tuning.draw_views(seed=0, step=5, num_views=1, batch_size=4)
    np.testing.assert_array_equal(first, 0)
    np.testing.assert_array_equal(second, 0)


def test_scan_lp_equals_python_loop_reference():
    views, labels = _blobs(num_examples=150, num_views=1)
    config = _small_config("lp", epochs=2)
    config.batch_size = 32  # 150 = 4 * 32 + 22: the last batch is padded.
    head = tuning.fit("lp", views, labels, config, num_classes=4)

    params = tuning.init_variables(heads.LinearHead(4), 16, config.seed)["params"]["classifier"]
    total = 2 * 5
    tx = optax.adamw(optax.cosine_decay_schedule(1e-2, total), weight_decay=1e-4)
    state = tx.init(params)

    def loss(p, x, y):
        log_probs = jax.nn.log_softmax(x @ p["kernel"] + p["bias"])
        return -jnp.mean(log_probs[jnp.arange(len(y)), y])

    epoch_losses = []
    for epoch in range(2):
        indices, mask = tuning.epoch_batches(config.seed, epoch, 150, 32)
        step_losses = []
        for step_indices, step_mask in zip(np.asarray(indices), np.asarray(mask)):
            real = step_indices[step_mask]  # A plain shorter last batch.
            value, grads = jax.value_and_grad(loss)(params, views[0, real], labels[real])
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            step_losses.append(value)
        epoch_losses.append(np.mean(step_losses))
    trained = head.variables["params"]["classifier"]
    np.testing.assert_allclose(trained["kernel"], params["kernel"], atol=2e-5)
    np.testing.assert_allclose(trained["bias"], params["bias"], atol=2e-5)
    np.testing.assert_allclose(head.loss_curve, epoch_losses, rtol=1e-5)
    assert head.num_steps == total


def test_lp_reaches_full_accuracy_on_separable_features():
    views, labels = _blobs(num_examples=400, dim=8, num_views=1, spread=0.1, seed=1)
    head = tuning.fit("lp", views, labels, _small_config("lp", epochs=20), num_classes=4)
    assert tuning.accuracy(head, views[0], labels) == 1.0
    assert head.loss_curve[-1] < 0.5 * head.loss_curve[0]


def test_other_seed_reuses_the_compiled_program():
    views, labels = _blobs(num_examples=96, dim=8, num_views=2, seed=2)
    config = _small_config("nmtune", epochs=2)
    mesh = parallel.make_mesh(1)
    first = tuning.fit("nmtune", views, labels, config, num_classes=4, mesh=mesh)
    compiled = tuning.train_program.cache_info().misses
    config.seed = 1
    other = tuning.fit("nmtune", views, labels, config, num_classes=4, mesh=mesh)
    assert tuning.train_program.cache_info().misses == compiled  # No new program for a new seed.
    assert not np.allclose(first.loss_curve, other.loss_curve)
    config.seed = 0
    again = tuning.fit("nmtune", views, labels, config, num_classes=4, mesh=mesh)
    np.testing.assert_array_equal(again.loss_curve, first.loss_curve)


@pytest.mark.slow
def test_mlp_equals_nmtune_with_zero_weights():
    views, labels = _blobs()
    mlp = tuning.fit("mlp", views, labels, _small_config("mlp"), num_classes=4)
    config = _small_config("nmtune")
    config.consistency_weight = config.covariance_weight = config.svd_weight = 0.0
    nmtune = tuning.fit("nmtune", views, labels, config, num_classes=4)
    np.testing.assert_allclose(mlp.loss_curve, nmtune.loss_curve, rtol=1e-5)
    np.testing.assert_allclose(nmtune.curves["ce"], nmtune.loss_curve, rtol=1e-6)
    # Zero-weighted terms still add round-off to the gradient of the bias that BatchNorm cancels.
    _assert_same_head(nmtune, mlp, config.lr)


def _assert_same_head(eight, one, lr):
    """Parameters agree to 1e-6, except the bias before BatchNorm (and the running mean it shifts).

    BatchNorm cancels that bias, so its true gradient is 0 and its computed gradient is round-off, which
    depends on the cross-device reduction order; Adam scales any such noise to steps of up to lr.
    """
    flat_one = dict(jax.tree_util.tree_leaves_with_path(one.variables))
    for path, value in jax.tree_util.tree_leaves_with_path(eight.variables):
        name = jax.tree_util.keystr(path)
        cancelled = "hidden_0']['bias" in name or "bn_0']['mean" in name
        atol = lr * eight.num_steps if cancelled else 1e-6
        np.testing.assert_allclose(value, flat_one[path], rtol=1e-5, atol=atol, err_msg=name)


@pytest.mark.slow
def test_nmtune_on_eight_devices_matches_one_device_and_is_deterministic():
    # Losses to rtol 1e-4: only the order of the cross-device reductions differs.
    views, labels = _blobs(num_examples=150, num_views=3)
    config = _small_config("nmtune")
    eight = tuning.fit("nmtune", views, labels, config, num_classes=4)
    assert eight.mesh.devices.size == 8
    one = tuning.fit("nmtune", views, labels, config, num_classes=4, mesh=parallel.make_mesh(1))
    np.testing.assert_allclose(eight.loss_curve, one.loss_curve, rtol=1e-4)
    for name in ("consistency", "covariance", "dominant_sv"):
        np.testing.assert_allclose(eight.curves[name], one.curves[name], rtol=1e-4)
        assert np.all(eight.curves[name] > 0)
    _assert_same_head(eight, one, config.lr)
    again = tuning.fit("nmtune", views, labels, config, num_classes=4)
    np.testing.assert_array_equal(eight.loss_curve, again.loss_curve)
    features = views[0]
    np.testing.assert_allclose(
        tuning.predict(eight, features), tuning.predict(one, features), rtol=1e-3, atol=1e-3
    )
    # Batched, padded prediction equals one full-batch eval-mode apply.
    direct = tuning.logits_fn(eight.model, jax.device_get(eight.variables), features)
    np.testing.assert_allclose(
        tuning.predict(eight, features, batch_size=16), direct, rtol=1e-5, atol=1e-5
    )


def test_bad_settings_and_inputs_raise_clear_errors():
    views, labels = _blobs(num_examples=20, num_views=1)
    config = _small_config("lp", epochs=1)
    config.batch_size = 12
    with pytest.raises(ValueError, match="batch_size=12 must be divisible"):
        tuning.fit("lp", views, labels, config, num_classes=4)
    with pytest.raises(config_lib.ConfigError, match="method='svm'"):
        defaults.head("svm")
    config = _small_config("nmtune")
    config.svd_weight = -1.0
    with pytest.raises(config_lib.ConfigError, match=r"svd_weight=-1\.0"):
        tuning.fit("nmtune", views, labels, config, num_classes=4)
    with pytest.raises(ValueError, match="must lie in \\[0, 3\\)"):
        tuning.fit("lp", views, labels, _small_config("lp"), num_classes=3)
    with pytest.raises(ValueError, match="\\[V, N, D\\]"):
        tuning.fit("lp", views[0], labels, _small_config("lp"), num_classes=4)
