"""Stage `nmtune_text`: NMTune on frozen MiniLM sentence features of the text domains.

The text sets are embedded once by encoders.TextEncoder and cached under `<workdir>/features`, keyed by the
model fingerprint, dataset, split, max_len and subsample (a digest of the texts catches changed source data);
only process 0 writes. `build_text_task_npz` writes them as the project's black-box features file (see
features.py): airline tweets as the ID task, and Apple tweets, other-topic tweets and drug reviews as OOD test
sets in the same label space. The transfer stage then runs on that file exactly as on any black-box features.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from jax.sharding import Mesh

from nml_jax import config_lib, encoders, files, parallel, report, transfer
from nml_jax.data import text as text_data
from nml_jax.models import minilm

DEFAULT_TARGETS = ("apple", "other_topics", "drug_reviews")


def validate(config) -> None:
    """Raises ConfigError naming the first invalid key of an nmtune_text config."""
    transfer.validate(config)
    text = config.text
    config_lib.check_choice("text.source", text.source, ["airline"])
    for target in text.targets:
        config_lib.check_choice(
            "text.targets", target, sorted(set(text_data.DATASETS) - {"airline"})
        )
    config_lib.check_positive_int("text.max_len", text.max_len)
    config_lib.check_positive_int("text.batch_size", text.batch_size)
    if text.get("limit") is not None:
        config_lib.check_positive_int("text.limit", text.limit)


def subsample(num_rows: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random subset of `limit` rows (all if limit is None or larger)."""
    if limit is None or limit >= num_rows:
        return np.arange(num_rows)
    if limit <= 0:
        raise ValueError(f"limit={limit!r} is not valid; expected a positive int or None.")
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:limit])


def cache_path(
    cache_dir: str, fingerprint: str, dataset: str, split: str, max_len: int, limit: int | None
) -> str:
    """`<cache_dir>/minilm-<fingerprint>/<dataset>-<split>-len<max_len>[-n<limit>].npz`."""
    suffix = f"-n{limit}" if limit is not None else ""
    return os.path.join(
        cache_dir, f"minilm-{fingerprint}", f"{dataset}-{split}-len{max_len}{suffix}.npz"
    )


def texts_digest(texts: Sequence[str], labels: np.ndarray) -> str:
    """SHA-256 of the texts and labels, stored with cached features to catch changed source data."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    digest.update(np.asarray(labels, np.int64).tobytes())
    return digest.hexdigest()


def _read_cache(path: str, digest: str) -> np.ndarray | None:
    if not files.exists(path):
        return None
    with files.load_npz(path) as f:
        if str(f["texts_sha256"]) != digest:
            logging.warning("%s was made from other texts; embedding again.", path)
            return None
        return f["features"]


def dataset_features(
    dataset: str,
    split: str,
    *,
    cache_dir: str,
    encoder: encoders.TextEncoder | None = None,
    max_len: int = minilm.MAX_LEN,
    limit: int | None = None,
    batch_size: int = 128,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, 384], labels int64 [N]) of a text set, from the cache or embedded once.

    `encoder` defaults to the installed MiniLM with `max_len` (loaded only on a cache miss); a given
    encoder must truncate at `max_len`. `limit` takes a seeded random subset of the split (for smoke
    runs).
    """
    texts, labels = text_data.load(dataset, split)
    rows = subsample(len(texts), limit)
    texts, labels = [texts[i] for i in rows], labels[rows].astype(np.int64)
    if encoder is not None and encoder.tokenizer.max_len != max_len:
        raise ValueError(
            f"max_len={max_len} but the given encoder truncates at {encoder.tokenizer.max_len}."
        )
    fingerprint = encoder.fingerprint if encoder is not None else minilm.fingerprint()
    path = cache_path(cache_dir, fingerprint, dataset, split, max_len, limit)
    digest = texts_digest(texts, labels)
    cached = _read_cache(path, digest)
    if cached is not None:
        logging.info("text features from cache %s", path)
        return cached, labels
    encoder = encoder or encoders.text_encoder(max_len)
    features = encoder.features(texts, batch_size=batch_size, mesh=mesh, name=f"{dataset}/{split}")
    if parallel.is_main_process():
        files.write_npz(
            path, {"features": features, "labels": labels, "texts_sha256": np.asarray(digest)}
        )
    return features, labels


def build_text_task_npz(
    path: str,
    source: str = "airline",
    targets: Sequence[str] = DEFAULT_TARGETS,
    *,
    cache_dir: str,
    encoder: encoders.TextEncoder | None = None,
    max_len: int = minilm.MAX_LEN,
    limit: int | None = None,
    batch_size: int = 128,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Writes (process 0) and returns the black-box features file of a text transfer task.

    Keys: `train_features`, `train_labels`, `test_features`, `test_labels` from the source's
    train/test splits, `num_classes` (3), and for each target `name`: `ood_<name>_features`,
    `ood_<name>_labels`, from the target's `all` split when it has one (it never trains), else its
    `test` split. Features float32, labels int64. `limit` caps every set by a seeded subsample.
    """
    if tuple(text_data.DATASETS.get(source, ())[:2]) != ("train", "test"):
        sources = [n for n, s in text_data.DATASETS.items() if s[:2] == ("train", "test")]
        raise ValueError(f"source={source!r} is not valid; expected one of {sources}.")
    for target in targets:
        if target not in text_data.DATASETS or target == source:
            allowed = sorted(set(text_data.DATASETS) - {source})
            raise ValueError(
                f"target {target!r} is not valid for source {source!r}; expected one of {allowed}."
            )
    common = dict(
        cache_dir=cache_dir,
        max_len=max_len,
        limit=limit,
        batch_size=batch_size,
        mesh=mesh,
    )
    arrays = {"num_classes": np.int64(len(text_data.CLASS_NAMES))}
    for split in ("train", "test"):
        features, labels = dataset_features(source, split, encoder=encoder, **common)
        arrays[f"{split}_features"], arrays[f"{split}_labels"] = features, labels
    for target in targets:
        split = "all" if "all" in text_data.DATASETS[target] else "test"
        features, labels = dataset_features(target, split, encoder=encoder, **common)
        arrays[f"ood_{target}_features"], arrays[f"ood_{target}_labels"] = features, labels
    if parallel.is_main_process():
        files.write_npz(path, arrays)
    return arrays


def run(config, workdir: str) -> dict[str, Any]:
    """Stage `nmtune_text`: MiniLM sentence features of the text domains (embedded once, cached), then LP, MLP
    and NMTune on them exactly as on any black-box features."""
    text = config.text
    path = os.path.join(workdir, f"{text.source}.npz")
    build_text_task_npz(
        path,
        source=text.source,
        targets=tuple(text.targets),
        cache_dir=os.path.join(workdir, "features"),
        max_len=text.max_len,
        limit=text.get("limit"),
        batch_size=text.batch_size,
    )
    cell = config.copy_and_resolve_references()
    with cell.unlocked():
        cell.features_npz = path
    out = transfer.evaluate(cell, workdir)
    print(report.domain_table(out["rows"]))
    return out
