"""Singular-value spectrum of features: SVE, LSVR, top-k share, and plots.

Pure float64 numpy on feature arrays; the analyze stage decides which features to pass and where to write.
The official preprocessing (Hhhhhhao/Noisy-Model-Learning `src/models/svd.py`) L2-normalises every row, then
centres every row over its own dimensions; column centring (PCA-style) and no centring are options.
With p_i = sigma_i / sum_j sigma_j: SVE = -sum_i p_i log p_i, LSVR = -log p_1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nml_jax import files

CENTERINGS = ("row", "column", "none")


def preprocess(features: Any, centering: str = "row") -> np.ndarray:
    """L2-normalises each row of [N, D] features, then centres them.

    x_i <- x_i / max(||x_i||, 1e-12); then 'row': x_ij -= mean_j x_ij (each row over its own dimensions, the
    official choice); 'column': x_ij -= mean_i x_ij; 'none': nothing.
    """
    if centering not in CENTERINGS:
        raise ValueError(
            f"centering={centering!r} is not valid; expected one of {list(CENTERINGS)}."
        )
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty [N, D] array, got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf.")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if centering == "row":
        x = x - x.mean(axis=1, keepdims=True)
    elif centering == "column":
        x = x - x.mean(axis=0, keepdims=True)
    return x


def singular_values(features: Any, centering: str = "row") -> np.ndarray:
    """The min(N, D) singular values of `preprocess(features, centering)`, largest first (float64)."""
    return np.linalg.svd(preprocess(features, centering), compute_uv=False)


def _probabilities(s: Any) -> np.ndarray:
    """p_i = s_i / sum_j s_j for non-negative singular values with a positive sum."""
    s = np.asarray(s, np.float64)
    if s.ndim != 1 or s.size == 0 or np.any(s < 0) or not np.sum(s) > 0:
        raise ValueError(
            "singular values must be a non-empty 1-D array, >= 0, with a positive sum."
        )
    return s / np.sum(s)


def sve(s: Any) -> float:
    """Singular value entropy: -sum_i p_i log p_i with p_i = s_i / sum_j s_j (0 log 0 = 0)."""
    p = _probabilities(s)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def lsvr(s: Any) -> float:
    """Largest singular value ratio: -log p_1 with p_1 = max_i s_i / sum_j s_j."""
    return float(-np.log(np.max(_probabilities(s))))


def topk_share(s: Any, k: int) -> float:
    """sum of the k largest s_i / sum_j s_j."""
    p = np.sort(_probabilities(s))[::-1]
    if not 1 <= k <= p.size:
        raise ValueError(f"k={k} must be in [1, {p.size}].")
    return float(np.sum(p[:k]))


def summary(features: Any, centering: str = "row") -> dict[str, Any]:
    """SVE, LSVR, top-1/top-5 shares, the singular values (a list), feature dim and sample count."""
    s = singular_values(features, centering)
    count, dim = np.shape(features)
    return {
        "sve": sve(s),
        "lsvr": lsvr(s),
        "top1_share": topk_share(s, 1),
        "top5_share": topk_share(s, min(5, s.size)),
        "singular_values": s.tolist(),
        "dim": int(dim),
        "count": int(count),
    }


def plot_spectra(
    spectra: Mapping[str, Any],
    path: str,
    *,
    title: str = "Singular value spectrum",
    floor: float = 1e-6,
) -> str:
    """Overlays the normalised spectra p_i = s_i / sum s (log y-axis) of each label; writes a PNG to `path`.

    Values below `floor` x the largest (numerical zeros, e.g. of ReLU units that never fire) are not drawn,
    so they do not stretch the log axis over dozens of decades.
    """
    if not spectra:
        raise ValueError("spectra is empty; expected {label: singular values}.")
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for label, s in spectra.items():
            p = np.sort(_probabilities(s))[::-1]
            visible = p > floor * p[0] if p.size else p > 0
            ax.plot(np.arange(1, p.size + 1), np.where(visible, p, np.nan), label=str(label))
        ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.set_ylabel("sigma_i / sum sigma")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        files.save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path


def plot_metric_vs_accuracy(points: Sequence[Mapping[str, Any]], path: str) -> str:
    """Two panels, SVE and LSVR against accuracy, one labelled point per dict(label, sve, lsvr, accuracy)."""
    if not points:
        raise ValueError("points is empty; expected dicts with label, sve, lsvr, accuracy.")
    missing = [key for key in ("label", "sve", "lsvr", "accuracy") if key not in points[0]]
    if missing:
        raise ValueError(f"points need keys label, sve, lsvr, accuracy; missing {missing}.")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, metric in zip(axes, ("sve", "lsvr")):
            xs = [point[metric] for point in points]
            ys = [point["accuracy"] for point in points]
            ax.scatter(xs, ys)
            for point, x, y in zip(points, xs, ys):
                ax.annotate(str(point["label"]), (x, y), textcoords="offset points", xytext=(4, 4))
            ax.set_xlabel(metric.upper())
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        files.save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path
