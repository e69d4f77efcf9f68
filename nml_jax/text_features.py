"""Frozen MiniLM sentence features of the text sets, cached on disk, and the text task file.

The encoder runs once per (dataset, split): texts are tokenized, sorted by token length and cut into
batches whose padded length is rounded up to a multiple of `bucket_multiple`, so a whole set
compiles at most max_len / bucket_multiple shapes and short tweets never pay for long reviews. Each
global batch is sharded over the mesh's `data` axis (every process feeds its slice). Features are
cached under `cache_dir`, keyed by the model fingerprint, dataset, split, max_len and subsample;
only process 0 writes.

`build_text_task_npz` writes the project's black-box features file (see nml_jax/features.py):
airline tweets as the ID task, and Apple tweets, other-topic tweets and drug reviews as OOD test
sets in the same label space.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from nml_jax import parallel
from nml_jax.data import text as text_data
from nml_jax.models import minilm

DEFAULT_TARGETS = ("apple", "other_topics", "drug_reviews")
_LOG_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True)
class TextEncoder:
    """A sentence encoder: MiniLM params, its tokenizer and a fingerprint of its weights."""

    params: dict
    tokenizer: minilm.MiniLMTokenizer
    fingerprint: str

    @classmethod
    def load(cls, max_len: int = minilm.MAX_LEN) -> TextEncoder:
        """The installed all-MiniLM-L6-v2 (see nml_jax.models.minilm)."""
        params, tokenizer = minilm.load_minilm(max_len)
        return cls(params, tokenizer, minilm.fingerprint())


@functools.lru_cache(maxsize=1)
def default_encoder(max_len: int = minilm.MAX_LEN) -> TextEncoder:
    """The installed MiniLM, loaded once per process."""
    return TextEncoder.load(max_len)


def bucket_length(longest: int, multiple: int, cap: int) -> int:
    """Padded batch length: ceil(longest / multiple) * multiple, at most max(cap, longest)."""
    return min(math.ceil(longest / multiple) * multiple, max(cap, longest))


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of `batch_size` (the last may be short), sorted by length (stable)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def embed_texts(
    texts: Sequence[str],
    encoder: TextEncoder,
    *,
    batch_size: int = 128,
    bucket_multiple: int = 16,
    mesh: Mesh | None = None,
    name: str = "texts",
) -> np.ndarray:
    """Sentence embeddings float32 [N, 384] in the order of `texts`.

    Args:
      texts: the texts; every process passes the same list.
      encoder: the encoder (params, tokenizer, fingerprint).
      batch_size: global batch; must split evenly over the mesh's devices and the processes.
      bucket_multiple: padded lengths are multiples of this (few shapes to compile, little padding).
      mesh: a mesh with a `data` axis; all devices by default.
      name: what the progress log calls this set.
    """
    if not texts:
        raise ValueError(f"embed_texts got no texts for {name!r}.")
    if not isinstance(bucket_multiple, int) or bucket_multiple <= 0:
        raise ValueError(
            f"bucket_multiple={bucket_multiple!r} is not valid; expected a positive int."
        )
    mesh = mesh or parallel.make_mesh()
    local_batch = parallel.check_global_batch(batch_size, mesh)
    start_row = jax.process_index() * local_batch
    params = jax.device_put(encoder.params, parallel.replicated(mesh))
    ids = encoder.tokenizer.tokenize(texts)
    batches = length_batches(np.asarray([len(x) for x in ids]), batch_size)
    features = np.zeros((len(ids), minilm.EMBED_DIM), np.float32)
    local = slice(start_row, start_row + local_batch)
    progress = {"done": 0, "start": time.time(), "last_log": 0.0}

    def collect(rows: np.ndarray, out: jax.Array) -> None:
        features[rows] = np.asarray(parallel.to_host(out))[: len(rows)]
        progress["done"] += len(rows)
        now = time.time()
        if now - progress["last_log"] >= _LOG_EVERY_S or progress["done"] == len(ids):
            rate = progress["done"] / max(now - progress["start"], 1e-9)
            logging.info(
                "embedded %s: %d/%d texts, %.1f texts/s", name, progress["done"], len(ids), rate
            )
            progress["last_log"] = now

    pending = None
    for rows in batches:
        length = bucket_length(
            max(len(ids[i]) for i in rows), bucket_multiple, encoder.tokenizer.max_len
        )
        # Short last batch: filler rows have an all-zero mask; their outputs are dropped.
        batch = [ids[i] for i in rows] + [ids[rows[0]][:0]] * (batch_size - len(rows))
        input_ids, mask = minilm.pad_batch(batch, length)
        global_batch = parallel.to_global((input_ids[local], mask[local]), mesh)
        launched = (rows, minilm.encode(params, *global_batch))
        # Fetch the previous batch only once the next is dispatched, so the device never idles.
        if pending is not None:
            collect(*pending)
        pending = launched
    collect(*pending)
    return features


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
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as f:
        if str(f["texts_sha256"]) != digest:
            logging.warning("%s was made from other texts; embedding again.", path)
            return None
        return f["features"]


def _write_atomic(path: str, **arrays: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)


def dataset_features(
    dataset: str,
    split: str,
    *,
    cache_dir: str,
    encoder: TextEncoder | None = None,
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
    encoder = encoder or default_encoder(max_len)
    features = embed_texts(
        texts, encoder, batch_size=batch_size, mesh=mesh, name=f"{dataset}/{split}"
    )
    if parallel.is_main_process():
        _write_atomic(path, features=features, labels=labels, texts_sha256=np.asarray(digest))
    return features, labels


def build_text_task_npz(
    path: str,
    source: str = "airline",
    targets: Sequence[str] = DEFAULT_TARGETS,
    *,
    cache_dir: str,
    encoder: TextEncoder | None = None,
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
        _write_atomic(path, **arrays)
    return arrays
