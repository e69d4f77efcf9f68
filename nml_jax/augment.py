"""The augmented views of the official NMTune recipe, as pure JAX functions of (key, images).

Each view is torchvision's `RandomResizedCrop(size, scale, ratio=(3/4, 4/3))` back to the input size, then (for
supervised encoders) a horizontal flip with probability 1/2:
  supervised: scale (0.8, 1.0), flip;   clip: scale (0.9, 1.0), no flip.
The crop box follows torchvision exactly: up to 10 tries of an area fraction s ~ U(scale) and a log-uniform
aspect ratio r, w = round(sqrt(s A r)), h = round(sqrt(s A / r)), accepted when it fits, at a uniform integer
offset; else the central crop of the whole image clamped to the ratio range. The crop is resized back to the input
size with bilinear interpolation of the crop alone (half-pixel centres, edge pixels repeated; a crop is never
larger than the image, so no antialiasing applies). Images are the encoder's preprocessed float inputs [B, H, W, C];
bilinear resizing commutes with the per-channel affine normalisation, so cropping after it equals cropping before.

Every example's view is a function of its own key, so a view never depends on the batch it was drawn in:
`example_keys(seed, view_or_step, indices)` gives the keys of the bank (view v of example i) and of the online
mode (step t, example i).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

RECIPES = {
    "supervised": {"scale": (0.8, 1.0), "flip": True},
    "clip": {"scale": (0.9, 1.0), "flip": False},
}
RATIO = (3.0 / 4.0, 4.0 / 3.0)
TRIES = 10


def recipe(name: str, encoder_kind: str) -> dict:
    """The augmentation of `name` ('supervised', 'clip' or 'auto': 'clip' for CLIP towers, else supervised)."""
    if name == "auto":
        name = "clip" if encoder_kind in ("clip", "clip_image") else "supervised"
    return {"name": name, **RECIPES[name]}


def crop_box(
    key: jax.Array, height: int, width: int, scale: tuple[float, float], ratio=RATIO
) -> jax.Array:
    """[top, left, h, w] (int32) of one RandomResizedCrop box, as torchvision's `get_params` draws it."""
    area = height * width
    k_scale, k_ratio, k_top, k_left = jax.random.split(key, 4)
    target = area * jax.random.uniform(k_scale, (TRIES,), minval=scale[0], maxval=scale[1])
    log_r = jax.random.uniform(
        k_ratio, (TRIES,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])
    )
    aspect = jnp.exp(log_r)
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = jnp.argmax(fits)  # The first try that fits (torchvision returns at the first success).
    u_top = jax.random.uniform(k_top, (TRIES,))
    u_left = jax.random.uniform(k_left, (TRIES,))
    top = jnp.floor(u_top * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(u_left * (width - w + 1)).astype(jnp.int32)
    drawn = jnp.stack([top[first], left[first], h[first], w[first]])
    # Fallback: the whole image, cut to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    fallback = jnp.array([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.int32)
    return jnp.where(fits.any(), drawn, fallback)


def _interpolation_matrix(start: jax.Array, length: jax.Array, size: int) -> jax.Array:
    """[size, size] bilinear weights resizing rows start..start+length-1 of an axis to `size` samples.

    Half-pixel centres (align_corners=False); a sample outside the crop takes the crop's edge pixel, so nothing
    outside the box enters (torchvision crops, then resizes: PIL's and torch's bilinear agree on this when
    enlarging, and a crop never shrinks an axis).
    """
    last = start + length - 1
    source = start + (jnp.arange(size) + 0.5) * (length / size) - 0.5  # Exact for the identity.
    source = jnp.clip(source, start, last)
    low = jnp.floor(source)
    frac = source - low
    high = jnp.minimum(low + 1, last)
    rows = jnp.arange(size)[None, :]
    return (1 - frac)[:, None] * (rows == low[:, None]) + frac[:, None] * (rows == high[:, None])


def resized_crop(image: jax.Array, box: jax.Array) -> jax.Array:
    """The `box` [top, left, h, w] of a float image [H, W, C], resized bilinearly back to [H, W, C]."""
    height, width = image.shape[:2]
    top, left, h, w = (box[i].astype(jnp.float32) for i in range(4))
    rows = _interpolation_matrix(top, h, height)
    cols = _interpolation_matrix(left, w, width)
    return jnp.einsum("ij,jkc,lk->ilc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)


def augment_one(
    key: jax.Array, image: jax.Array, scale: tuple[float, float], flip: bool
) -> jax.Array:
    """One augmented view of one float image [H, W, C]."""
    k_crop, k_flip = jax.random.split(key)
    out = resized_crop(image, crop_box(k_crop, image.shape[0], image.shape[1], scale))
    if flip:
        out = jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)
    return out


def augment(
    keys: jax.Array, images: jax.Array, scale: tuple[float, float], flip: bool
) -> jax.Array:
    """One augmented view per image: keys [B], float images [B, H, W, C] -> [B, H, W, C]."""
    return jax.vmap(lambda k, x: augment_one(k, x, tuple(scale), flip))(keys, images)


@functools.lru_cache(maxsize=8)
def jitted(scale: tuple[float, float], flip: bool):
    """`augment` compiled for one recipe: (keys [B], images [B, H, W, C]) -> views."""
    return jax.jit(lambda keys, images: augment(keys, images, scale, flip))


def example_keys(seed: int | jax.Array, stream: int | jax.Array, indices: jax.Array) -> jax.Array:
    """Keys [B] of examples `indices` in `stream` (a bank view, or an online step and draw)."""
    base = jax.random.fold_in(jax.random.key(seed), stream)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
