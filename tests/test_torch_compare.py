"""benchmarks.torch_compare's PyTorch side does the same work as ours: the same encoder architectures, crop
boxes drawn as torchvision draws them, the same resize; and common.compile_seconds counts compilation.
(No timings are checked here.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import common  # noqa: E402
from benchmarks import torch_compare as tc  # noqa: E402
from nml_jax import augment, models  # noqa: E402


@pytest.mark.parametrize("name", sorted(tc.ENCODERS))
def test_torch_encoders_have_our_architecture(name):
    model_block, shape, dim = tc.ENCODERS[name]
    kwargs = {k: v for k, v in model_block.items() if k != "name"}
    model = models.get(model_block["name"], tc.NUM_CLASSES, **kwargs)
    x = jnp.zeros((2, *shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    ours = jax.eval_shape(lambda v: model.apply(v, x, train=False)[1], variables)
    theirs = tc.TORCH_ENCODERS[name]().eval()
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    assert sum(p.numel() for p in theirs.parameters()) == num_params
    with torch.no_grad():
        features = theirs.features(torch.zeros(2, shape[2], shape[0], shape[1]))
    assert ours.shape == tuple(features.shape) == (2, dim)


def test_torch_crop_boxes_follow_the_recipe():
    torch.manual_seed(0)
    height, width, area = 32, 28, 32 * 28
    for _ in range(300):
        top, left, h, w = tc.torch_crop_box(height, width, (0.8, 1.0))
        assert 0 <= top <= height - h and 0 <= left <= width - w
        # w and h are rounded from sqrt(s A r) and sqrt(s A / r): the unrounded ones lie within 0.5.
        assert (w + 0.5) * (h + 0.5) >= 0.8 * area and (w - 0.5) * (h - 0.5) <= area
        assert (w + 0.5) / (h - 0.5) >= 3 / 4 and (w - 0.5) / (h + 0.5) <= 4 / 3
    # No try fits: torchvision's fallback, the central crop cut to the ratio range, as augment.crop_box.
    for shape in ((10, 40), (40, 10), (32, 28)):
        fallback = tc.torch_crop_box(*shape, (2.0, 3.0))
        ours = augment.crop_box(jax.random.key(0), *shape, (2.0, 3.0))
        assert fallback == tuple(int(v) for v in ours)


def test_torch_crop_resizes_like_ours():
    image = np.random.default_rng(0).standard_normal((32, 32, 3)).astype(np.float32)
    for box in ((1, 2, 29, 27), (3, 0, 28, 32), (0, 0, 32, 32)):
        ours = np.asarray(augment.resized_crop(jnp.asarray(image), jnp.asarray(box, jnp.int32)))
        theirs = tc.torch_resized_crop(torch.from_numpy(image).permute(2, 0, 1), box)
        theirs = theirs.permute(1, 2, 0).numpy()
        np.testing.assert_allclose(
            theirs, ours, atol=1e-5
        )  # Border included: nothing outside the box.
    np.testing.assert_allclose(theirs, image, atol=1e-6)  # The whole image: unchanged.


def test_torch_augment_flips_half_the_views():
    # Scale (1, 1) on a square image: every box is the whole image, so each view is the image or its mirror.
    torch.manual_seed(0)
    images = torch.randn(64, 3, 8, 8)
    views = tc.torch_augment(images, (1.0, 1.0), flip=True)
    same = torch.isclose(views, images, atol=1e-6).flatten(1).all(1)
    mirrored = torch.isclose(views, images.flip(-1), atol=1e-6).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64
    assert torch.equal(tc.torch_augment(images, (1.0, 1.0), flip=False), images)


def test_compile_seconds_counts_compilation_only():
    fn = jax.jit(lambda x: jnp.sin(x) * 3.0 + x.sum())
    with common.compile_seconds() as first:
        fn(jnp.ones(7)).block_until_ready()
    with common.compile_seconds() as again:
        fn(jnp.ones(7)).block_until_ready()
    assert first["seconds"] > 0 and again["seconds"] == 0
