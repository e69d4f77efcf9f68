"""benchmarks.fast_conv: Conv / conv2d, the matmul kernel-gradient convolution against lax's and nn.Conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks import fast_conv as layers
from nml_jax import parallel

_DIMS = ("NHWC", "HWIO", "NHWC")


def _inputs(batch, size, in_channels, out_channels, kernel, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, size, size + 1, in_channels)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((kernel, kernel, in_channels, out_channels)), jnp.float32)
    return x, k


def _loss_weights(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [
        (1, 1, "SAME"),
        (1, 2, "VALID"),
        (3, 1, "SAME"),
        (3, 2, "SAME"),
        (3, 2, "VALID"),
        (3, 1, ((3, 1), (0, 2))),
        (7, 2, ((3, 3), (3, 3))),
    ],
)
def test_conv2d_value_and_gradients_match_lax(kernel, stride, padding):
    x, k = _inputs(2, 9, 3, 4, kernel)
    strides = (stride, stride)
    pads = layers.explicit_padding(padding, x.shape[1:3], (kernel, kernel), strides)

    def reference(x, k):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_DIMS)

    def fast(x, k):
        return layers.conv2d(x, k, strides, pads)

    want = reference(x, k)
    np.testing.assert_allclose(fast(x, k), want, rtol=1e-6, atol=1e-5)
    weights = _loss_weights(want.shape)
    want_dx, want_dk = jax.grad(lambda x, k: jnp.sum(reference(x, k) * weights), (0, 1))(x, k)
    got_dx, got_dk = jax.grad(lambda x, k: jnp.sum(fast(x, k) * weights), (0, 1))(x, k)
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got_dk, want_dk, rtol=1e-5, atol=1e-4)


def test_kernel_gradient_by_hand():
    # 1x1 input channel, 2x2 kernel, VALID, stride 1 on a 3x3 image: dk[i,j] = sum_{o,p} x[o+i, p+j] g[o,p].
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    grad = jnp.array([[1.0, 0.0], [0.0, 2.0]]).reshape(1, 2, 2, 1)
    dk = layers.kernel_gradient(x, grad, (2, 2), (1, 1), ((0, 0), (0, 0)))
    xs = np.arange(9.0).reshape(3, 3)
    want = np.array([[xs[i, j] + 2 * xs[i + 1, j + 1] for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(dk[..., 0, 0], want)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize(
    ("kernel", "strides", "padding"), [(3, 1, "SAME"), (1, 2, [(0, 1), (1, 0)])]
)
def test_conv_module_is_a_drop_in_for_nn_conv(use_bias, kernel, strides, padding):
    x, _ = _inputs(2, 8, 3, 5, kernel)
    kwargs = dict(
        features=5,
        kernel_size=(kernel, kernel),
        strides=strides,
        padding=padding,
        use_bias=use_bias,
    )
    fast, reference = layers.Conv(**kwargs), nn.Conv(**kwargs)
    key = jax.random.key(0)
    params = fast.init(key, x)
    ref_params = reference.init(key, x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref_params)
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)
    if use_bias:  # A non-zero bias, so its gradient and value are checked too.
        params = {"params": {**params["params"], "bias": jnp.arange(5.0)}}
    y = fast.apply(params, x)
    want = reference.apply(params, x)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-5)
    weights = _loss_weights(want.shape)
    grads = jax.grad(lambda p: jnp.sum(fast.apply(p, x) * weights))(params)
    want_grads = jax.grad(lambda p: jnp.sum(reference.apply(p, x) * weights))(params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), grads, want_grads
    )


def test_conv_module_under_a_sharded_jit():
    mesh = parallel.make_mesh()
    x, _ = _inputs(8, 6, 2, 3, 3)
    model = layers.Conv(3, (3, 3), strides=2)
    params = model.init(jax.random.key(1), x)
    weights = _loss_weights((8, 3, 4, 3))

    def loss(p, x):
        return jnp.sum(model.apply(p, x) * weights)

    sharded = jax.device_put(x, parallel.data_sharding(mesh))
    got = jax.jit(jax.grad(loss))(params, sharded)
    want = jax.grad(lambda p, x: jnp.sum(nn.Conv(3, (3, 3), strides=2).apply(p, x) * weights))(
        params, x
    )
    np.testing.assert_allclose(got["params"]["kernel"], want["params"]["kernel"], rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_gradient_dtypes():
    x, _ = _inputs(2, 6, 3, 4, 3)
    model = layers.Conv(4, (3, 3), dtype=jnp.bfloat16)
    params = model.init(jax.random.key(0), x)
    assert params["params"]["kernel"].dtype == jnp.float32
    y = model.apply(params, x)
    assert y.dtype == jnp.bfloat16
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x).astype(jnp.float32)))(params)
    assert grads["params"]["kernel"].dtype == jnp.float32
    want = jax.grad(
        lambda p: jnp.sum(nn.Conv(4, (3, 3), dtype=jnp.bfloat16).apply(p, x).astype(jnp.float32))
    )(params)
    np.testing.assert_allclose(
        grads["params"]["kernel"], want["params"]["kernel"], rtol=2e-2, atol=0.5
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(padding="CIRCULAR"), "padding='CIRCULAR'"),
        (dict(padding=[(-1, 0), (0, 0)]), "non-negative"),
        (dict(strides=0), "strides=0"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, message):
    x, _ = _inputs(1, 5, 1, 1, 3)
    with pytest.raises(ValueError, match=message):
        layers.Conv(2, (3, 3), **kwargs).init(jax.random.key(0), x)


def test_rank_is_checked():
    with pytest.raises(ValueError, match="rank 4"):
        layers.Conv(2, (3, 3)).init(jax.random.key(0), jnp.zeros((5, 5, 1)))
