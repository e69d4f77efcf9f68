"""Many heads in one program (many_heads.fit_many) against tuning.fit one by one, and its use in transfer.

What "the same head" means here, measured on these tests: the batched program runs the same float32 operations
per head, but XLA fuses the vmapped program differently, so values differ by round-off (at most 6e-8 on any
parameter, 5e-7 on a loss curve). One parameter amplifies round-off: the bias before BatchNorm, which BatchNorm
cancels (true gradient 0), so Adam turns its round-off gradient into steps of up to lr (and the running mean
follows it); tests/test_tuning.py's 8-vs-1-device comparison meets the same effect. Logits of MLP/NMTune heads
therefore agree to 1e-3 (measured up to 6.5e-4), LP logits to 1e-5, and every prediction (argmax) is equal
on these data; on real features a near-tie can still fall the other way (README "Performance").
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nml_jax import config_lib, defaults, features, many_heads, parallel, transfer, tuning


def _data(num_examples, num_classes, num_views=3, dim=16, seed=0):
    """Gaussian clusters in `num_views` noisy views."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, num_examples)
    clean = centres[labels] + rng.normal(size=(num_examples, dim))
    views = [clean + 0.1 * rng.normal(size=clean.shape) for _ in range(num_views - 1)]
    return np.stack([clean, *views]).astype(np.float32), labels


def _config(method):
    config = defaults.head(method)
    config.epochs, config.batch_size = 2, 32
    return config


def _one_by_one(method, head, config, mesh):
    config = config.copy_and_resolve_references()
    config.seed = head.seed
    return tuning.fit(
        method,
        head.train_views,
        head.train_labels,
        config,
        num_classes=head.num_classes,
        mesh=mesh,
    )


def _assert_same(many, one, views, lr):
    """Parameters to 1e-6 but the BatchNorm-cancelled bias (and the running mean it shifts), loss curves to
    1e-6, predictions equal (see the module docstring)."""
    assert many.num_steps == one.num_steps
    flat_one = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(one.variables)))
    flat_many = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(many.variables)))
    assert flat_many.keys() == flat_one.keys()
    for path, value in flat_many.items():
        name = jax.tree_util.keystr(path)
        assert value.shape == flat_one[path].shape, name
        cancelled = "hidden_0']['bias" in name or "bn_0']['mean" in name
        atol = lr * many.num_steps if cancelled else 1e-6
        np.testing.assert_allclose(value, flat_one[path], rtol=1e-5, atol=atol, err_msg=name)
    for name, curve in one.curves.items():
        np.testing.assert_allclose(many.curves[name], curve, rtol=1e-5, atol=1e-6, err_msg=name)
    logits_many, logits_one = tuning.predict(many, views[0]), tuning.predict(one, views[0])
    np.testing.assert_array_equal(logits_many.argmax(-1), logits_one.argmax(-1))
    np.testing.assert_allclose(logits_many, logits_one, atol=1e-5 if many.method == "lp" else 1e-3)


def test_cosine_schedule_matches_optax_bitwise_with_static_and_traced_length():
    for total in (1, 7, 300):
        counts = jnp.arange(total + 3, dtype=jnp.int32)
        expected = jax.jit(jax.vmap(optax.cosine_decay_schedule(1e-2, total)))(counts)
        static = jax.jit(jax.vmap(tuning.cosine_schedule(1e-2, total)))(counts)
        traced = jax.jit(jax.vmap(lambda c, t: tuning.cosine_schedule(1e-2, t)(c)))(
            counts, jnp.full(counts.shape, total, jnp.int32)
        )
        np.testing.assert_array_equal(static, expected)
        np.testing.assert_array_equal(traced, expected)


@pytest.mark.parametrize("method", ["lp", "nmtune"])
def test_fit_many_equals_fit_one_by_one(method):
    mesh = parallel.make_mesh(1)
    config = _config(method)
    heads = [many_heads.HeadData(*_data(150, 4, seed=0), 4, seed) for seed in (0, 1, 2)]
    many = many_heads.fit_many(method, heads, config, mesh=mesh)
    for head, trained in zip(heads, many):
        _assert_same(trained, _one_by_one(method, head, config, mesh), head.train_views, config.lr)
    assert not np.allclose(many[0].loss_curve, many[1].loss_curve)  # The seeds act.
    again = many_heads.fit_many(method, heads, config, mesh=mesh)
    np.testing.assert_array_equal(again[2].loss_curve, many[2].loss_curve)
    for a, b in zip(jax.tree.leaves(again[2].variables), jax.tree.leaves(many[2].variables)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method,num_devices", [("lp", 8), ("nmtune", 1)])
def test_fit_many_pads_heads_of_other_sizes_and_classes(method, num_devices):
    # N 150 / 97 / 40 give 5 / 4 / 2 steps per epoch; on 8 devices (conftest) the rows are sharded as fit
    # shards them.
    config = _config(method)
    heads = [
        many_heads.HeadData(*_data(n, c, seed=i), c, i)
        for i, (n, c) in enumerate([(150, 4), (97, 3), (40, 6)])
    ]
    many = many_heads.fit_many(method, heads, config, mesh=parallel.make_mesh(num_devices))
    assert many[0].mesh.devices.size == num_devices
    for head, trained in zip(heads, many):
        assert trained.variables["params"]["classifier"]["kernel"].shape == (16, head.num_classes)
        one = _one_by_one(method, head, config, trained.mesh)
        _assert_same(trained, one, head.train_views, config.lr)


def test_a_new_group_of_the_same_sizes_reuses_the_program():
    mesh = parallel.make_mesh(1)
    config = _config("lp")
    views, labels = _data(64, 4)
    many_heads.fit_many(
        "lp", [many_heads.HeadData(views, labels, 4, s) for s in (0, 1)], config, mesh=mesh
    )
    compiled = many_heads.heads_program.cache_info().misses
    many_heads.fit_many(
        "lp", [many_heads.HeadData(views, labels, 4, s) for s in (5, 6)], config, mesh=mesh
    )
    assert many_heads.heads_program.cache_info().misses == compiled


def test_fit_many_rejects_heads_that_cannot_share_a_program():
    config = _config("nmtune")
    views, labels = _data(40, 4)
    with pytest.raises(ValueError, match="at least one head"):
        many_heads.fit_many("nmtune", [], config)
    other_dim = many_heads.HeadData(*_data(40, 4, dim=8), 4, 0)
    with pytest.raises(ValueError, match=r"heads\[1\] has 3 views of dimension 8.*share"):
        many_heads.fit_many("nmtune", [many_heads.HeadData(views, labels, 4, 0), other_dim], config)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        many_heads.fit_many("nmtune", [many_heads.HeadData(views, labels, 3, 0)], config)
    with pytest.raises(ValueError, match=r"heads\[0\]\.seed=1.5"):
        many_heads.fit_many("nmtune", [many_heads.HeadData(views, labels, 4, 1.5)], config)


def _task(name, n, num_classes, seed, train_domain=None):
    views, labels = _data(n, num_classes, seed=seed)
    test_views, test_labels = _data(60, num_classes, num_views=1, seed=seed + 100)
    return features.TaskFeatures(
        name=name,
        kind="id",
        train_domain=train_domain or name,
        train_views=views,
        train_labels=labels,
        tests={name: (test_views[0], test_labels)},
        num_classes=num_classes,
    )


def test_transfer_rows_grouped_equal_one_by_one():
    # Three training sets of other N and C, and an OOD task sharing the first one's training set (one head).
    first = _task("a", 150, 4, 0)
    shifted_views, shifted_labels = _data(50, 4, num_views=1, seed=7)
    ood = dataclasses.replace(
        first, name="a_ood", kind="ood", tests={"a_shifted": (shifted_views[0], shifted_labels)}
    )
    tasks = [first, _task("b", 97, 3, 1), ood, _task("c", 40, 6, 2)]
    methods = ("lp", "nmtune")  # MLP runs NMTune's code path.
    configs = {m: _config(m) for m in methods}
    meta = {"noise_ratio": 0.1, "seed": 0}
    mesh = parallel.make_mesh(1)
    alone = transfer.transfer_rows(tasks, methods, configs, meta, mesh, {m: 1 for m in methods})
    together = transfer.transfer_rows(tasks, methods, configs, meta, mesh, {m: 16 for m in methods})
    assert len(alone) == 4 * 2
    assert together == alone  # Every field, the accuracies included, in the same order.
    heads = transfer.fit_heads(tasks, ("lp",), configs, mesh, {"lp": 16})
    assert heads[(0, "lp")] is heads[(2, "lp")]  # The OOD task reuses its source's head.
    assert transfer.head_groups("lp", tasks[:2] + tasks[3:], 2) == [[0, 1], [2]]


def test_heads_per_program_is_validated():
    config = defaults.downstream(defaults.METHODS)
    assert dict(config.heads_per_program) == defaults.HEADS_PER_PROGRAM
    config.heads_per_program.lp = 0
    with pytest.raises(config_lib.ConfigError, match=r"heads_per_program\.lp=0"):
        transfer.validate(config)
