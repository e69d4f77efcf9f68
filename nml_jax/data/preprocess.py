"""Preprocessing as small registered ops composed by a string, e.g. `"to_float|resize(32)|flip_lr"`.

As in big_vision's `pp` package: each op name maps to a factory; `parse(spec)` reads `name(args, key=value)`
with `ast.literal_eval` (never `eval`) and returns one function acting on a dict of per-example tf tensors.
Random ops are stateless: they read the example's seed from `SEED_KEY` (an int64 [2] tensor the pipeline puts
there), split it, and write one half back, so each random op sees fresh randomness and a given (seed, step,
position) always gives the same result.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

Example = dict[str, tf.Tensor]
Op = Callable[[Example], Example]

SEED_KEY = "_seed"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
    """Registers an op factory under `name`."""

    def wrap(factory: Callable[..., Op]) -> Callable[..., Op]:
        if name in _REGISTRY:
            raise ValueError(f"Preprocessing op {name!r} is already registered.")
        _REGISTRY[name] = factory
        return factory

    return wrap


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)


def _parse_one(spec: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(
            f"Cannot parse preprocessing op {spec!r}; expected `name` or `name(args)`."
        ) from e
    if isinstance(node, ast.Name):
        return node.id, (), {}
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(
            f"Cannot parse preprocessing op {spec!r}; expected `name` or `name(args)`."
        )
    try:
        args = tuple(ast.literal_eval(arg) for arg in node.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except ValueError as e:
        raise ValueError(f"Arguments of preprocessing op {spec!r} must be Python literals.") from e
    return node.func.id, args, kwargs


def parse(spec: str) -> Op:
    """Composes the ops of `spec` ("op1|op2(arg)|..."; empty = identity) into one function."""
    ops = []
    for part in (p for p in spec.split("|") if p.strip()):
        name, args, kwargs = _parse_one(part)
        if name not in _REGISTRY:
            raise ValueError(
                f"Unknown preprocessing op {name!r} in {spec!r}; registered ops: {registered_ops()}."
            )
        try:
            ops.append(_REGISTRY[name](*args, **kwargs))
        except TypeError as e:
            raise ValueError(f"Bad arguments for preprocessing op {part.strip()!r}: {e}") from e

    def apply(example: Example) -> Example:
        for op in ops:
            example = op(dict(example))
        return example

    return apply


def _next_seed(example: Example) -> tf.Tensor:
    """Splits the example's seed: one half is used now, the other is stored for the next random op."""
    if SEED_KEY not in example:
        raise ValueError(
            f"A random preprocessing op needs a per-example seed in {SEED_KEY!r}; none was given."
        )
    seeds = tf.random.experimental.stateless_split(example[SEED_KEY], num=2)
    example[SEED_KEY] = seeds[0]
    return seeds[1]


@register("to_float")
def get_to_float(key: str = "image") -> Op:
    """x -> x / 255 as float32."""

    def op(example):
        example[key] = tf.cast(example[key], tf.float32) / 255.0
        return example

    return op


@register("value_range")
def get_value_range(
    vmin: float = -1.0, vmax: float = 1.0, in_min: float = 0.0, in_max: float = 255.0, key="image"
) -> Op:
    """x -> vmin + (x - in_min) / (in_max - in_min) * (vmax - vmin), float32."""

    def op(example):
        x = tf.cast(example[key], tf.float32)
        example[key] = vmin + (x - in_min) / (in_max - in_min) * (vmax - vmin)
        return example

    return op


@register("normalize")
def get_normalize(
    mean: float | Sequence[float] = IMAGENET_MEAN,
    std: float | Sequence[float] = IMAGENET_STD,
    key="image",
) -> Op:
    """x -> (x - mean) / std per channel (defaults: ImageNet statistics on [0, 1] images)."""
    mean_t = tf.constant(mean, tf.float32)
    std_t = tf.constant(std, tf.float32)

    def op(example):
        example[key] = (tf.cast(example[key], tf.float32) - mean_t) / std_t
        return example

    return op


@register("rgb_to_grey")
def get_rgb_to_grey(key: str = "image") -> Op:
    """ITU-R 601 luma: y = 0.299 R + 0.587 G + 0.114 B (grey input passes through); keeps the dtype."""

    def op(example):
        image = example[key]
        if image.shape[-1] == 3:
            dtype = image.dtype
            grey = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))
            image = tf.cast(tf.round(grey), dtype) if dtype.is_integer else grey
        example[key] = image
        return example

    return op


@register("grey_to_rgb")
def get_grey_to_rgb(key: str = "image") -> Op:
    """Repeats a single channel three times (RGB input passes through)."""

    def op(example):
        image = example[key]
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        example[key] = image
        return example

    return op


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@register("resize")
def get_resize(size: int | Sequence[int], method: str = "bilinear", key: str = "image") -> Op:
    """Resizes to exactly `size` (int or (h, w)); keeps the dtype."""

    def op(example):
        image = example[key]
        resized = tf.image.resize(image, _hw(size), method=method)
        example[key] = (
            tf.cast(tf.round(resized), image.dtype) if image.dtype.is_integer else resized
        )
        return example

    return op


@register("resize_small")
def get_resize_small(
    size: int, method: str = "area", key: str = "image", antialias: bool = False
) -> Op:
    """Resizes so the shorter side is `size`, keeping the aspect ratio; keeps the dtype.

    `antialias=True` widens the filter when shrinking, as PIL and torchvision resize (no effect when enlarging).
    """

    def op(example):
        image = example[key]
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        scale = tf.cast(size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
        new_h = tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32)
        new_w = tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32)
        resized = tf.image.resize(image, (new_h, new_w), method=method, antialias=antialias)
        example[key] = (
            tf.cast(tf.round(resized), image.dtype) if image.dtype.is_integer else resized
        )
        return example

    return op


@register("central_crop")
def get_central_crop(size: int | Sequence[int], key: str = "image") -> Op:
    """Crops the central `size` window; the result has the static shape [h, w, C] (batching and the padded eval
    streams need it), and an image smaller than `size` fails instead of giving a smaller crop."""
    crop_h, crop_w = _hw(size)

    def op(example):
        image = example[key]
        top = (tf.shape(image)[0] - crop_h) // 2
        left = (tf.shape(image)[1] - crop_w) // 2
        crop = image[top : top + crop_h, left : left + crop_w]
        example[key] = tf.ensure_shape(crop, [crop_h, crop_w, image.shape[-1]])
        return example

    return op


@register("random_crop")
def get_random_crop(size: int | Sequence[int], pad: int = 0, key: str = "image") -> Op:
    """Zero-pads by `pad` pixels on each side, then crops a random `size` window (stateless)."""
    crop_h, crop_w = _hw(size)

    def op(example):
        image = example[key]
        if pad:
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        channels = tf.shape(image)[-1]
        example[key] = tf.image.stateless_random_crop(
            image, tf.stack([crop_h, crop_w, channels]), seed=_next_seed(example)
        )
        return example

    return op


@register("flip_lr")
def get_flip_lr(key: str = "image") -> Op:
    """Flips left-right with probability 1/2 (stateless)."""

    def op(example):
        example[key] = tf.image.stateless_random_flip_left_right(
            example[key], seed=_next_seed(example)
        )
        return example

    return op


def _inception_box(
    shape: tf.Tensor, seed: tf.Tensor, area_min: float, area_max: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inception-style box: area fraction in [area_min, area_max], aspect ratio in [3/4, 4/3]."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        area_range=(area_min, area_max),
        aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


@register("inception_crop")
def get_inception_crop(
    size: int, area_min: float = 0.05, area_max: float = 1.0, key: str = "image"
) -> Op:
    """Random Inception crop of a decoded image, resized (bilinear) to size x size float32 in [0, 255]."""

    def op(example):
        image = example[key]
        begin, box = _inception_box(tf.shape(image), _next_seed(example), area_min, area_max)
        crop = tf.slice(image, begin, box)
        example[key] = tf.image.resize(crop, (size, size), method="bilinear")
        return example

    return op


@register("decode")
def get_decode(channels: int = 3, key: str = "image") -> Op:
    """Decodes JPEG/PNG bytes to uint8 [H, W, channels]; an already decoded image passes through."""

    def op(example):
        image = example[key]
        if image.dtype == tf.string:
            image = tf.io.decode_image(image, channels=channels, expand_animations=False)
        example[key] = image
        return example

    return op


@register("decode_jpeg_and_inception_crop")
def get_decode_jpeg_and_inception_crop(
    size: int, area_min: float = 0.05, area_max: float = 1.0, key="image"
) -> Op:
    """Decodes only the Inception crop window of a JPEG (fast), resized to size x size float32 in [0, 255]."""

    def op(example):
        data = example[key]
        begin, box = _inception_box(
            tf.io.extract_jpeg_shape(data), _next_seed(example), area_min, area_max
        )
        window = tf.stack([begin[0], begin[1], box[0], box[1]])
        crop = tf.io.decode_and_crop_jpeg(data, window, channels=3)
        example[key] = tf.image.resize(crop, (size, size), method="bilinear")
        return example

    return op


@register("onehot")
def get_onehot(
    depth: int, key: str = "label", key_result: str = "labels", on: float = 1.0, off: float = 0.0
) -> Op:
    """labels = one_hot(label, depth) with `on`/`off` values, float32."""

    def op(example):
        example[key_result] = tf.one_hot(
            example[key], depth, on_value=on, off_value=off, dtype=tf.float32
        )
        return example

    return op


@register("keep")
def get_keep(*keys: str) -> Op:
    """Keeps only `keys` (and the per-example seed, which the pipeline removes itself)."""

    def op(example):
        return {k: v for k, v in example.items() if k in keys or k == SEED_KEY}

    return op
