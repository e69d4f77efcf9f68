"""Label and caption noise for pre-training data (stage `noise`).

Exactly round(r * N) examples are corrupted, chosen from a seed, except for asymmetric noise:
- symmetric: each chosen label moves uniformly to a *different* class;
- asymmetric: class c -> pairs[c] (a fixed pairing, e.g. T-shirt -> Shirt); every class with a pair flips at
  rate r, exactly round(r * n_c) of its n_c examples (the usual convention), and classes without a pair never
  flip, so the overall corrupted share is below r;
- matrix: a user-given row-stochastic C x C matrix T; a chosen example of class c takes class j != c with
  probability T[c, j] / (1 - T[c, c]) (so T sets *where* labels go, `ratio` how many move);
- caption_swap: captions are exchanged among the chosen pairs by a derangement, so exactly the chosen image-text
  pairs are mismatched; for sharded web data (TFRecord) the swaps stay within each shard, so that the input
  pipeline can tokenize one shard at a time (`caption_swap_within_shards`).
The realised C x C transition matrix (row-normalised confusion of clean -> noisy labels) is saved with the result.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
from absl import logging

from nml_jax import config_lib, defaults, files

NOISE_FILE = "noise.npz"

# Default class pairings for asymmetric noise: visually similar classes, as in the noisy-label literature.
# T-shirt <-> Shirt, Pullover <-> Coat, Sandal <-> Sneaker.
_FASHION_MNIST_PAIRS = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 5}
# 7 -> 1, 2 -> 7, 5 <-> 6, 3 -> 8 (Patrini et al. 2017).
_MNIST_PAIRS = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}
# truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog (Patrini et al. 2017).
_CIFAR10_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
# Keyed by the exact dataset name (TFDS or embedded), never a substring: `cifar100` must not get CIFAR-10's.
DEFAULT_PAIRS = {
    "fashion_mnist": _FASHION_MNIST_PAIRS,
    "nml_fashion_mnist": _FASHION_MNIST_PAIRS,
    "mnist": _MNIST_PAIRS,
    "nml_mnist5k": _MNIST_PAIRS,
    "cifar10": _CIFAR10_PAIRS,
}


def num_corrupted(ratio: float, n: int) -> int:
    """round(ratio * n), the exact number of corrupted examples."""
    return round(ratio * n)


def check_ratio(ratio: Any, name: str = "noise.ratio") -> float:
    config_lib.check_range(name, ratio, 0.0, 1.0, high_open=True)
    return float(ratio)


def check_transition_matrix(matrix: Any, num_classes: int) -> np.ndarray:
    """Validates a C x C row-stochastic matrix and returns it as float64."""
    t = np.asarray(matrix, dtype=np.float64)
    if t.shape != (num_classes, num_classes):
        raise config_lib.ConfigError(
            f"config.noise.matrix has shape {t.shape}; expected ({num_classes}, {num_classes})."
        )
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise config_lib.ConfigError("config.noise.matrix must hold finite, non-negative entries.")
    sums = t.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise config_lib.ConfigError(
            f"config.noise.matrix is not row-stochastic: row {bad} sums to {sums[bad]:.6g}, expected 1."
        )
    return t


def check_pairs(pairs: Any, num_classes: int) -> dict[int, int]:
    """Validates a class -> class map; every class must be in [0, num_classes)."""
    try:
        items = {int(k): int(v) for k, v in dict(pairs).items()}
    except (TypeError, ValueError) as e:
        raise config_lib.ConfigError(
            f"config.noise.pairs={pairs!r} is not a map of class ids, e.g. {{0: 6, 6: 0}}."
        ) from e
    for src, dst in items.items():
        for c in (src, dst):
            if not 0 <= c < num_classes:
                raise config_lib.ConfigError(
                    f"config.noise.pairs names class {c}, but classes are 0..{num_classes - 1}."
                )
    return items


def _choose(eligible: np.ndarray, count: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if count > eligible.size:
        raise config_lib.ConfigError(
            f"Cannot corrupt {count} examples: only {eligible.size} are eligible for {what} noise."
        )
    return np.sort(rng.choice(eligible, size=count, replace=False))


def symmetric_noise(
    labels: np.ndarray, num_classes: int, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Returns noisy labels: round(ratio*N) chosen labels move to (y + U{1..C-1}) mod C, never to y."""
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    chosen = _choose(np.arange(labels.size), num_corrupted(ratio, labels.size), rng, "symmetric")
    noisy[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=chosen.size)) % num_classes
    return noisy


def asymmetric_noise(
    labels: np.ndarray, pairs: dict[int, int], ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Returns noisy labels: in every class c with pairs[c] != c, round(ratio * n_c) of its n_c examples become
    pairs[c]; other classes keep their labels. Classes are drawn in increasing order from one generator."""
    labels = np.asarray(labels, dtype=np.int64)
    table = np.arange(max([*pairs.keys(), *pairs.values(), int(labels.max())]) + 1)
    for src, dst in pairs.items():
        table[src] = dst
    noisy = labels.copy()
    for c in np.flatnonzero(table != np.arange(table.size)):
        members = np.flatnonzero(labels == c)
        chosen = _choose(members, num_corrupted(ratio, members.size), rng, "asymmetric")
        noisy[chosen] = table[c]
    return noisy


def matrix_noise(
    labels: np.ndarray, matrix: np.ndarray, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Returns noisy labels: round(ratio*N) chosen examples of class c move to j != c w.p. T[c,j]/(1-T[c,c])."""
    labels = np.asarray(labels, dtype=np.int64)
    off = matrix * (1.0 - np.eye(len(matrix)))
    flippable = off.sum(axis=1) > 0
    eligible = np.flatnonzero(flippable[labels])
    noisy = labels.copy()
    chosen = _choose(eligible, num_corrupted(ratio, labels.size), rng, "matrix")
    cdf = np.cumsum(off[labels[chosen]], axis=1)
    cdf /= cdf[:, -1:]
    draws = rng.random(chosen.size)[:, None]
    noisy[chosen] = np.minimum((draws >= cdf).sum(axis=1), len(matrix) - 1)
    return noisy


def caption_swap(num_pairs: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Returns `caption_index`: image i is paired with caption caption_index[i].

    round(ratio*N) chosen pairs receive each other's captions through a random cyclic derangement, so exactly
    those pairs are mismatched and every caption is still used once. One chosen pair cannot be deranged alone,
    so a count of 1 is rejected.
    """
    count = num_corrupted(ratio, num_pairs)
    _check_swap_count(count, ratio, num_pairs)
    chosen = rng.permutation(num_pairs)[:count]
    index = np.arange(num_pairs)
    index[chosen] = np.roll(chosen, 1)
    return index


def _check_swap_count(count: int, ratio: float, num_pairs: int) -> None:
    if count == 1:
        raise config_lib.ConfigError(
            f"noise.ratio={ratio} swaps 1 of {num_pairs} captions; a swap needs at least 2 pairs."
        )


def shard_allocation(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """How many of `total` swapped pairs each shard of counts[s] pairs gets (they sum to `total`).

    Proportional by largest remainders (floor(total * n_s / N), then one more for the largest fractions, ties
    broken at random), so every shard's share is within one pair of the ratio. A shard given exactly one pair
    cannot derange it, so that pair moves to another shard that already has some and still has room.
    """
    counts = np.asarray(counts, np.int64)
    n = int(counts.sum())
    if not 0 <= total <= n:
        raise ValueError(f"Cannot swap {total} of {n} pairs.")
    quota = total * counts / max(n, 1)
    alloc = np.floor(quota).astype(np.int64)
    order = np.lexsort((rng.random(len(counts)), -(quota - alloc)))
    alloc[order[: total - int(alloc.sum())]] += 1
    while np.any(alloc == 1):
        single = int(np.flatnonzero(alloc == 1)[0])
        room = np.where((alloc >= 1) & (alloc < counts), counts - alloc, 0)
        room[single] = 0
        if not room.any():
            raise config_lib.ConfigError(
                f"Cannot swap {total} captions within shards of {counts.tolist()} pairs: one shard would "
                "hold a single swapped pair. Use another noise.ratio."
            )
        target = int(np.argmax(room))
        alloc[single] -= 1
        alloc[target] += 1
    return alloc


def caption_swap_within_shards(
    counts: np.ndarray, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """`caption_index` of a sharded dataset whose swaps never leave a shard (pairs numbered shard after shard).

    Exactly round(ratio * N) pairs are mismatched, as in `caption_swap`, spread over the shards by
    `shard_allocation`; within each shard the chosen pairs exchange captions by a random cyclic derangement.
    The noise ratio and the statistics of a swapped pair (a caption of another, random image) stay those of a
    global swap, but a shard's training captions are a permutation of its own: the input pipeline can read and
    tokenize one shard at a time.
    """
    counts = np.asarray(counts, np.int64)
    total = num_corrupted(ratio, int(counts.sum()))
    _check_swap_count(total, ratio, int(counts.sum()))
    index = np.arange(int(counts.sum()))
    offset = 0
    for n, k in zip(counts.tolist(), shard_allocation(counts, total, rng).tolist()):
        chosen = offset + rng.permutation(n)[:k]
        index[chosen] = np.roll(chosen, 1)
        offset += n
    return index


def realised_transition(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalised confusion T[c, j] = #(clean=c, noisy=j) / #(clean=c); a class never seen keeps T[c,c]=1."""
    counts = np.zeros((num_classes, num_classes), np.float64)
    np.add.at(counts, (clean, noisy), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.where(totals > 0, counts / np.maximum(totals, 1.0), np.eye(num_classes))


def default_pairs(dataset: str) -> dict[int, int]:
    """The pairing of `dataset` by its exact name; a TFDS version suffix (`cifar10:3.0.2`) is ignored."""
    name = dataset.split(":", 1)[0]
    if name in DEFAULT_PAIRS:
        return DEFAULT_PAIRS[name]
    raise config_lib.ConfigError(
        f"No default asymmetric pairing for dataset {dataset!r} (known: {sorted(DEFAULT_PAIRS)}); "
        "set config.noise.pairs, e.g. {0: 6, 6: 0}."
    )


def make_label_noise(
    labels: np.ndarray, num_classes: int, noise_config: Any, dataset: str = ""
) -> dict[str, np.ndarray]:
    """Corrupts `labels` as `noise_config` asks; returns the arrays saved in noise.npz."""
    kind = noise_config.kind
    config_lib.check_choice(
        "noise.kind", kind, [k for k in defaults.NOISE_KINDS if k != "caption_swap"]
    )
    ratio = 0.0 if kind == "none" else check_ratio(noise_config.ratio)
    rng = np.random.default_rng(noise_config.seed)
    labels = np.asarray(labels, dtype=np.int64)
    if kind in ("none",) or ratio == 0.0:
        noisy = labels.copy()
    elif kind == "symmetric":
        noisy = symmetric_noise(labels, num_classes, ratio, rng)
    elif kind == "asymmetric":
        pairs = noise_config.get("pairs") or default_pairs(dataset)
        noisy = asymmetric_noise(labels, check_pairs(pairs, num_classes), ratio, rng)
    else:
        if noise_config.get("matrix") is None:
            raise config_lib.ConfigError(
                "config.noise.kind='matrix' needs config.noise.matrix (C x C)."
            )
        matrix = check_transition_matrix(noise_config.matrix, num_classes)
        noisy = matrix_noise(labels, matrix, ratio, rng)
    return {
        "clean_labels": labels,
        "noisy_labels": noisy,
        "is_noisy": noisy != labels,
        "transition": realised_transition(labels, noisy, num_classes),
        "ratio": np.float64(ratio),
        "seed": np.int64(noise_config.seed),
    }


def make_caption_noise(
    num_pairs: int, noise_config: Any, shard_counts: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Caption swap (within shards when `shard_counts` is given); `transition` is the 2 x 2 matched/mismatched
    matrix of the pairs."""
    ratio = check_ratio(noise_config.ratio)
    rng = np.random.default_rng(noise_config.seed)
    if shard_counts is None:
        index = caption_swap(num_pairs, ratio, rng)
    else:
        if int(np.sum(shard_counts)) != num_pairs:
            raise ValueError(f"The shards hold {int(np.sum(shard_counts))} pairs, not {num_pairs}.")
        index = caption_swap_within_shards(shard_counts, ratio, rng)
    is_noisy = index != np.arange(num_pairs)
    fraction = is_noisy.mean() if num_pairs else 0.0
    result = {
        "caption_index": index,
        "is_noisy": is_noisy,
        "transition": np.array([[1.0 - fraction, fraction], [0.0, 1.0]]),
        "ratio": np.float64(ratio),
        "seed": np.int64(noise_config.seed),
    }
    if shard_counts is not None:
        result["shard_counts"] = np.asarray(shard_counts, np.int64)
    return result


def settings(config: Any) -> dict[str, Any]:
    """Everything that decides the noise: dataset, split, kind, ratio, seed, pairs, matrix (as JSON values)."""
    noise = config.noise.to_dict() if hasattr(config.noise, "to_dict") else dict(config.noise)
    as_dict = {"dataset": config.dataset, "split": config.get("train_split", "train"), **noise}
    if (
        config.dataset == "tfrecord"
    ):  # Sharded web data: the shards, and swaps kept within each shard.
        as_dict.update(shards=config.get("shards"), swap="within_shard")
    return json.loads(json.dumps(as_dict, sort_keys=True, default=repr))


def settings_key(config: Any) -> str:
    """A short hash of `settings(config)`."""
    blob = json.dumps(settings(config), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save(result: dict[str, np.ndarray], path: str, config: Any) -> None:
    files.write_npz(
        path,
        {
            "settings_key": np.array(settings_key(config)),
            "settings": np.array(json.dumps(settings(config), sort_keys=True)),
            **result,
        },
    )


def _changes(saved: dict[str, np.ndarray], config: Any) -> str:
    """The settings that differ between a saved noise.npz and `config` (old -> new)."""
    from nml_jax import workdir as workdir_lib

    if "settings" not in saved:  # Written before the settings were stored: what the arrays say.
        return f"ratio {float(saved['ratio'])!r}, seed {int(saved['seed'])} -> {config.noise.ratio!r}, {config.noise.seed}"
    return "; ".join(
        workdir_lib.differing_keys(json.loads(str(saved["settings"])), settings(config))
    )


def load(path: str) -> dict[str, np.ndarray]:
    """Reads a noise.npz (no pickle)."""
    with files.load_npz(path) as f:
        return {k: f[k] for k in f.files}


def load_or_make(
    config: Any,
    workdir: str,
    labels: np.ndarray | None = None,
    shard_counts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Returns the noise for `config`, reusing `<workdir>/noise.npz` when it was made with the same settings.

    `labels` (the clean train labels) may be passed to avoid loading the dataset again; `shard_counts` (pairs
    per shard) makes caption swaps stay within shards (`caption_swap_within_shards`). With several processes,
    only process 0 reads the labels and makes (or reuses) the file, once for all hosts (ImageNet: 1.28M labels
    read once, not once per host); after a barrier every other process reads it from the shared workdir.
    """
    import jax

    if jax.process_count() == 1:
        return _load_or_make_here(config, workdir, labels, shard_counts)
    from jax.experimental import multihost_utils

    from nml_jax import parallel

    result = (
        _load_or_make_here(config, workdir, labels, shard_counts)
        if parallel.is_main_process()
        else None
    )
    multihost_utils.sync_global_devices("nml_jax_noise")
    return result if result is not None else load(os.path.join(workdir, NOISE_FILE))


def _load_or_make_here(
    config: Any, workdir: str, labels: np.ndarray | None, shard_counts: np.ndarray | None
) -> dict[str, np.ndarray]:
    """`load_or_make` in one process: reuse the file, refuse one made otherwise, or make and write it."""
    path = os.path.join(workdir, NOISE_FILE)
    key = settings_key(config)
    if files.exists(path):
        saved = load(path)
        changes = _changes(saved, config) if str(saved.get("settings_key")) != key else ""
        recounted = shard_counts is not None and not np.array_equal(
            saved.get("shard_counts"), shard_counts
        )
        if not changes and recounted:
            changes = "the shards now hold other numbers of records"
        if not changes:
            return saved
        if not config.get("overwrite", False):
            from nml_jax import workdir as workdir_lib

            raise workdir_lib.WorkdirError(
                f"{path} holds noise made with other settings ({changes}). "
                "Use another --workdir, or pass --config.overwrite=True to make it again."
            )
        logging.warning(
            "--config.overwrite=True: %s was made with other settings; making it again.", path
        )
    result = _make(config, labels, shard_counts)
    save(result, path, config)
    result["settings_key"] = np.array(key)
    return result


def _make(
    config: Any, labels: np.ndarray | None, shard_counts: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The noise of `config` over the train split's labels (`labels`, else read from the dataset)."""
    from nml_jax import data

    split = config.get("train_split", "train")
    if config.noise.kind == "caption_swap":
        if shard_counts is not None:
            count = int(np.sum(shard_counts))
        elif labels is not None:
            count = len(labels)
        else:
            count = data.num_examples(config.dataset, split, config.get("data_dir"))
        result = make_caption_noise(count, config.noise, shard_counts)
    else:
        if labels is None:
            labels = data.load_labels(config.dataset, split, data_dir=config.get("data_dir"))
        num_classes = data.num_classes(config.dataset, data_dir=config.get("data_dir"))
        result = make_label_noise(labels, num_classes, config.noise, config.dataset)
    return result


def validate(config: Any) -> None:
    """Raises ConfigError naming the first invalid key of a noise config (DatasetError for an unknown dataset)."""
    config_lib.check_choice("noise.kind", config.noise.kind, defaults.NOISE_KINDS)
    check_ratio(config.noise.ratio)
    if not isinstance(config.dataset, str) or not config.dataset:
        raise config_lib.ConfigError(
            f"config.dataset={config.dataset!r} is not valid; expected a dataset name."
        )
    from nml_jax import data

    data.check_name(config.dataset, "dataset")


def run(config: Any, workdir: str) -> dict[str, Any]:
    """Stage `noise`: writes `<workdir>/noise.npz` for the train split of `config.dataset`."""
    result = load_or_make(config, workdir)
    corrupted = int(result["is_noisy"].sum())
    total = int(result["is_noisy"].size)
    logging.info(
        "noise: %s r=%.3f on %s: %d of %d examples corrupted -> %s",
        config.noise.kind,
        float(result["ratio"]),
        config.dataset,
        corrupted,
        total,
        os.path.join(workdir, NOISE_FILE),
    )
    print(
        f"noise.npz: {corrupted}/{total} corrupted ({config.noise.kind}, ratio {float(result['ratio'])})"
    )
    return {"noise": result, "corrupted": corrupted, "total": total}
