"""Models: every registry entry returns (logits, features); fast max-pool; bfloat16 compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nml_jax import models
from nml_jax.models import layers

# Tiny versions of every family: (name, kwargs, input shape, feature dim).
CASES = [
    ("cnn", {}, (2, 28, 28, 1), 128),
    ("resnet18", {"width": 4, "stem": "small", "stage_sizes": (1, 1)}, (2, 16, 16, 3), 8),
    ("resnet34", {"width": 4, "stem": "small", "stage_sizes": (1, 1)}, (2, 16, 16, 3), 8),
    ("resnet50", {"width": 4, "stage_sizes": (1, 1)}, (2, 64, 64, 3), 32),
    ("vit_tiny", {}, (2, 16, 16, 3), 32),
]


@pytest.mark.parametrize("name,kwargs,shape,dim", CASES)
def test_model_returns_logits_and_features(name, kwargs, shape, dim):
    model = models.get(name, 7, **kwargs)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    logits, features = model.apply(variables, x, train=False)
    assert logits.shape == (shape[0], 7) and logits.dtype == jnp.float32
    assert features.shape == (shape[0], dim) and features.dtype == jnp.float32
    # `head` maps features to logits: the feature stage relies on that name and shape.
    assert variables["params"]["head"]["kernel"].shape == (dim, 7)


def test_resnet_depths_have_the_standard_block_counts():
    x = jnp.zeros((1, 32, 32, 3))
    for depth, blocks in [(18, 8), (50, 16)]:
        model = models.get(f"resnet{depth}", 10, width=2, stem="small")
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
        names = [k for k in params if "Block" in k]
        assert len(names) == blocks, (depth, names)


def test_resnet50_imagenet_has_25m_parameters():
    model = models.get("resnet50", 1000)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    count = sum(np.prod(p.shape) for p in jax.tree.leaves(params["params"]))
    assert 25.4e6 < count < 25.7e6, count  # The published 25.6M.


@pytest.mark.parametrize("size", [(4, 8), (6, 6), (7, 9)])
def test_reshape_max_pool_matches_reduce_window(size):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, *size, 3)), jnp.float32)
    expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(layers.max_pool(x, 2), expected)


def test_bfloat16_compute_keeps_float32_params():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)), jnp.float32)
    kwargs = {"width": 4, "stem": "small", "stage_sizes": (1,)}
    f32 = models.get("resnet18", 5, **kwargs)
    bf16 = models.get("resnet18", 5, dtype="bfloat16", **kwargs)
    variables = f32.init(jax.random.PRNGKey(0), x)
    abstract = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract))
    (_, feat32), (_, feat16) = f32.apply(variables, x), bf16.apply(variables, x)
    assert feat16.dtype == jnp.float32
    np.testing.assert_allclose(feat16, feat32, rtol=0.1, atol=0.05)
    assert not np.array_equal(feat16, feat32)  # The compute really ran in bfloat16.


def test_bad_names_raise_clear_errors():
    with pytest.raises(ValueError, match="Unknown model 'resnet7'"):
        models.get("resnet7", 10)
    with pytest.raises(ValueError, match="stem='tiny'"):
        model = models.get("resnet18", 10, stem="tiny")
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="dtype='int8'"):
        layers.get_dtype("int8")


def test_symmetric_conv_pads_both_sides_like_pytorch():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    ones = {"params": {"kernel": jnp.ones((3, 3, 1, 1))}}
    symmetric = layers.symmetric_conv(1, (3, 3), (2, 2), use_bias=False).apply(ones, x)
    same = nn.Conv(1, (3, 3), (2, 2), use_bias=False, padding="SAME").apply(ones, x)
    # Output (0, 0) sums rows/cols -1..1 when padded on both sides; 0..2 under XLA SAME.
    assert float(symmetric[0, 0, 0, 0]) == float(x[0, :2, :2].sum())
    assert float(same[0, 0, 0, 0]) == float(x[0, :3, :3].sum())
    with pytest.raises(ValueError, match="padding='torch' is not valid"):
        models.get("resnet18", 2, padding="torch").init(jax.random.PRNGKey(0), x.repeat(3, -1))


@pytest.mark.parametrize("kernel,strides,size", [(3, 1, 7), (5, 2, 8), (3, 2, 7)])
def test_depthwise_conv_matches_grouped_convolution(kernel, strides, size):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 6)), jnp.float32)
    layer = layers.DepthwiseConv(kernel, strides)
    variables = layer.init(jax.random.PRNGKey(0), x)
    grouped = nn.Conv(
        6, (kernel, kernel), strides, padding="SAME", feature_group_count=6, use_bias=False
    )
    np.testing.assert_allclose(
        layer.apply(variables, x), grouped.apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_conv_net_options_keep_convolutions_on_eigen():
    """jaxlib's CPU default sends a 1x1 convolution (rewritten into a dot) to YNNPACK, slow for conv nets here;
    programs compiled with `parallel.conv_net_options()` keep it on Eigen, with the same values to round-off."""
    from jax import lax

    from nml_jax import parallel

    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
    k = jax.random.normal(jax.random.key(1), (1, 1, 16, 32))

    def conv(x, k):
        return lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    default = jax.jit(conv).lower(x, k).compile()
    assert "__ynn_fusion" in default.as_text()
    for train in (False, True):
        options = parallel.conv_net_options(train=train)
        ours = jax.jit(conv, compiler_options=options).lower(x, k).compile()
        assert "__ynn_fusion" not in ours.as_text()
        np.testing.assert_allclose(ours(x, k), default(x, k), rtol=1e-5, atol=1e-5)
