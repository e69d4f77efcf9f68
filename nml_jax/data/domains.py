"""Pure image transforms that make the shifted (out-of-domain) test sets.

These are local re-creations in the spirit of CIFAR-10-C / MNIST-C (Hendrycks & Dietterich 2019; Mu & Gilmer
2019), MNIST-M (Ganin & Lempitsky 2015) and edge-map sketches, not the published files. Every function takes
uint8 images and an explicit `np.random.Generator` (when it is random), and returns uint8 images of the same
shape, so a fixed seed gives byte-identical sets. Grey images are [N, H, W]; one fixed severity per corruption
(stated in each docstring, with x in [0, 1]).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 -> float64 in [0, 1]: x / 255."""
    return np.asarray(images, dtype=np.float64) / 255.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8: round(clip(x, 0, 1) * 255)."""
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_grey(images: np.ndarray) -> None:
    if images.ndim != 3:
        raise ValueError(f"Expected grey images [N, H, W]; got shape {images.shape}.")


def gaussian_noise(images: np.ndarray, rng: np.random.Generator, sigma: float = 0.18) -> np.ndarray:
    """x' = clip(x + n), n ~ N(0, sigma^2) per pixel (ImageNet-C severity 3: sigma = 0.18)."""
    x = to_unit(images)
    return to_uint8(x + rng.normal(0.0, sigma, size=x.shape))


def shot_noise(images: np.ndarray, rng: np.random.Generator, photons: float = 12.0) -> np.ndarray:
    """x' = Poisson(x * c) / c (ImageNet-C severity 3: c = 12 photons at full intensity)."""
    x = to_unit(images)
    return to_uint8(rng.poisson(x * photons) / photons)


def impulse_noise(images: np.ndarray, rng: np.random.Generator, amount: float = 0.09) -> np.ndarray:
    """Salt-and-pepper: a fraction `amount` of pixels set to 0 or 1 with equal odds (ImageNet-C severity 3)."""
    x = to_unit(images).copy()
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x[hit & salt] = 1.0
    x[hit & ~salt] = 0.0
    return to_uint8(x)


def gaussian_blur(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """x' = G_sigma * x, a 2-D Gaussian blur over each image (sigma = 1 pixel on 28x28)."""
    _check_grey(images)
    return to_uint8(ndimage.gaussian_filter(to_unit(images), sigma=(0, sigma, sigma)))


def contrast(images: np.ndarray, factor: float = 0.3) -> np.ndarray:
    """x' = (x - mean(x)) * c + mean(x) per image (ImageNet-C severity 2: c = 0.3)."""
    _check_grey(images)
    x = to_unit(images)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return to_uint8((x - mean) * factor + mean)


def rotate(
    images: np.ndarray, rng: np.random.Generator, min_angle: float = 25.0, max_angle: float = 50.0
) -> np.ndarray:
    """Rotation about the centre by a random angle, |angle| ~ U[min_angle, max_angle] degrees, random sign."""
    _check_grey(images)
    angles = rng.uniform(min_angle, max_angle, size=len(images)) * rng.choice(
        [-1.0, 1.0], size=len(images)
    )
    x = to_unit(images)
    out = np.stack(
        [
            ndimage.rotate(img, a, reshape=False, order=1, mode="constant")
            for img, a in zip(x, angles)
        ]
    )
    return to_uint8(out)


def translate(
    images: np.ndarray, rng: np.random.Generator, min_shift: int = 3, max_shift: int = 6
) -> np.ndarray:
    """Shift by (dy, dx) pixels, each |d| ~ U{min_shift..max_shift} with a random sign; zeros enter the frame."""
    _check_grey(images)
    n = len(images)
    shifts = rng.integers(min_shift, max_shift + 1, size=(n, 2)) * rng.choice([-1, 1], size=(n, 2))
    out = np.stack(
        [ndimage.shift(img, s, order=0, mode="constant") for img, s in zip(images, shifts)]
    )
    return out.astype(np.uint8)


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised line kernel of `length` pixels at `angle` degrees: k = line / sum(line)."""
    size = length if length % 2 else length + 1
    kernel = np.zeros((size, size))
    kernel[size // 2, (size - length) // 2 : (size - length) // 2 + length] = 1.0
    kernel = ndimage.rotate(kernel, angle, reshape=False, order=1)
    return kernel / kernel.sum()


def motion_blur(images: np.ndarray, rng: np.random.Generator, length: int = 7) -> np.ndarray:
    """x' = k_theta * x with a `length`-pixel line kernel at a random angle theta ~ U[0, 180)."""
    _check_grey(images)
    x = to_unit(images)
    angles = rng.uniform(0.0, 180.0, size=len(images))
    out = np.stack(
        [
            ndimage.convolve(img, motion_kernel(length, a), mode="constant")
            for img, a in zip(x, angles)
        ]
    )
    return to_uint8(out)


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """Fractal noise in [0, 1]: sum_o 2^-o * upsample(U[0,1] grid of size 2^(o+1)), min-max scaled."""
    height, width = shape
    total = np.zeros(shape)
    for octave in range(octaves):
        cells = 2 ** (octave + 1)
        grid = rng.random((cells + 1, cells + 1))
        total += (
            ndimage.zoom(grid, (height / (cells + 1), width / (cells + 1)), order=1)[
                :height, :width
            ]
            * 0.5**octave
        )
    return (total - total.min()) / max(total.max() - total.min(), 1e-12)


def fog(images: np.ndarray, rng: np.random.Generator, strength: float = 0.6) -> np.ndarray:
    """x' = x * (1 - s/2) + s * f with fractal noise f (a fog layer; s = 0.6)."""
    _check_grey(images)
    x = to_unit(images)
    layers = np.stack([fractal_noise(x.shape[1:], rng) for _ in range(len(x))])
    return to_uint8(x * (1.0 - strength / 2) + strength * layers)


def sketch(images: np.ndarray) -> np.ndarray:
    """Edge map: Sobel magnitude sqrt(Gx^2 + Gy^2) of each image, scaled to its own maximum (bright edges on black)."""
    _check_grey(images)
    x = to_unit(images)
    magnitude = np.hypot(ndimage.sobel(x, axis=1), ndimage.sobel(x, axis=2))
    peak = magnitude.max(axis=(1, 2), keepdims=True)
    return to_uint8(magnitude / np.maximum(peak, 1e-12))


def random_crops(
    photos: list[np.ndarray], count: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """`count` random size x size crops (uint8 [count, size, size, 3]), each from a random photo."""
    which = rng.integers(0, len(photos), size=count)
    crops = np.empty((count, size, size, 3), dtype=np.uint8)
    for i, p in enumerate(which):
        photo = photos[p]
        top = rng.integers(0, photo.shape[0] - size + 1)
        left = rng.integers(0, photo.shape[1] - size + 1)
        crops[i] = photo[top : top + size, left : left + size]
    return crops


def mnist_m_blend(
    images: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """MNIST-M: out = |p - d| per channel, with d the digit in [0, 1] and p a random photo crop; RGB uint8."""
    _check_grey(images)
    crops = random_crops(photos, len(images), images.shape[1], rng)
    return to_uint8(np.abs(to_unit(crops) - to_unit(images)[..., None]))


def uci_to_mnist(images: np.ndarray, box: int = 20, size: int = 28) -> np.ndarray:
    """UCI 8x8 digits (values 0-16) -> MNIST geometry: bilinear upsample to box x box, x * 255 / 16, centred in size."""
    if images.ndim != 3:
        raise ValueError(f"Expected [N, 8, 8] digits; got shape {images.shape}.")
    scaled = np.stack(
        [
            np.asarray(
                Image.fromarray(img.astype(np.float32), mode="F").resize((box, box), Image.BILINEAR)
            )
            for img in images
        ]
    )
    out = np.zeros((len(images), size, size), dtype=np.float64)
    start = (size - box) // 2
    out[:, start : start + box, start : start + box] = scaled / 16.0
    return to_uint8(out)


def render_digits(
    font_paths: list[str],
    per_class: int,
    rng: np.random.Generator,
    size: int = 28,
    font_sizes: tuple[int, int] = (16, 24),
    max_offset: int = 2,
    max_angle: float = 12.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Printed digits 0-9: each drawn white on black in a random font and size, offset and small rotation.

    Returns (uint8 [10 * per_class, size, size], int64 labels), `per_class` of each digit in a random order.
    """
    fonts: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    images = np.empty((10 * per_class, size, size), dtype=np.uint8)
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.int64), per_class))
    for i, digit in enumerate(labels):
        key = (
            int(rng.integers(len(font_paths))),
            int(rng.integers(font_sizes[0], font_sizes[1] + 1)),
        )
        if key not in fonts:
            fonts[key] = ImageFont.truetype(font_paths[key[0]], key[1])
        canvas = Image.new("L", (size, size), 0)
        dx, dy = rng.integers(-max_offset, max_offset + 1, size=2)
        ImageDraw.Draw(canvas).text(
            (size / 2 + dx, size / 2 + dy), str(digit), fill=255, font=fonts[key], anchor="mm"
        )
        angle = float(rng.uniform(-max_angle, max_angle))
        images[i] = np.asarray(canvas.rotate(angle, resample=Image.BILINEAR))
    return images, labels


def stratified_split(labels: np.ndarray, num_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: class c gives n_c * num_test / N random test rows (largest remainder).

    Returns (train_indices, test_indices), each in the permuted order, so that neither is sorted by class.
    """
    labels = np.asarray(labels)
    if not 0 < num_test < len(labels):
        raise ValueError(f"num_test={num_test} must be in (0, {len(labels)}).")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # Test rows are picked with a second draw: picking them along `order` would front-load train with
    # the classes whose quota fills first.
    pick = rng.permutation(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * num_test / len(labels)
    take = np.floor(quota).astype(int)
    remainder_order = np.argsort(-(quota - take), kind="stable")
    take[remainder_order[: num_test - take.sum()]] += 1
    is_test = np.zeros(len(labels), dtype=bool)
    for c, k in zip(classes, take):
        is_test[pick[labels[pick] == c][:k]] = True
    return order[~is_test[order]], order[is_test[order]]
