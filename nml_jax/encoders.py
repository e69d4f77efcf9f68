"""Frozen encoders: what the downstream stages see of a pre-trained model.

An encoder maps a batch of inputs to features and says what it takes and what it gives:
`features(inputs)` -> float32 [B, D], `input_shape`, `feature_dim`, and `fingerprint` (changes whenever the
weights or their config change; the feature cache is keyed by it). Three kinds:
- `ImageEncoder` of a supervised checkpoint (pre-logit features) or of a CLIP checkpoint's image tower
  (unnormalised image embeddings; kind `clip_image` when the tower came alone, from converted weights),
  restored from a pre-training workdir by `restore(workdir)`;
- `TextEncoder`, the frozen all-MiniLM-L6-v2 sentence encoder (mean-pooled, L2-normalised embeddings).

The model card `<workdir>/model.json`, written by every trainer through `write_card` and read by `read_card`,
records the kind of model, its input shape, the pre-training noise ratio (null when unknown, as for PyTorch
weights brought in by nml_jax.convert) and seed, the config and its fingerprint. Feature extraction and the downstream stages depend on this module, never on a trainer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from nml_jax import checkpoint, config_lib, files, models, parallel
from nml_jax import workdir as workdir_lib
from nml_jax.models import clip, minilm

CARD_FILE = "model.json"
KINDS = (
    "classifier",
    "clip",
    "clip_image",
)  # clip_image: a CLIP image tower alone (converted weights).


class ModelCardError(config_lib.UserError, ValueError):
    """A workdir's model card is missing or malformed; the message names the file."""


def write_card(
    workdir: str, kind: str, config: ml_collections.ConfigDict, input_shape, **extra: Any
) -> None:
    """Writes `<workdir>/model.json` (process 0 only): kind, input shape, noise ratio and seed, the config and
    its fingerprint, and `extra` (e.g. `num_classes`, `pad_id`)."""
    config_lib.check_choice("model kind", kind, KINDS)
    if not parallel.is_main_process():
        return
    card = {
        "kind": kind,
        "name": config.model.get("name", kind),
        "input_shape": [int(d) for d in input_shape],
        "noise_ratio": None if config.noise.ratio is None else float(config.noise.ratio),
        "noise_kind": config.noise.kind,
        "seed": int(config.seed),
        "config_fingerprint": config_lib.fingerprint(config),
        "config": json.loads(config_lib.to_json(config)),
        **extra,
    }
    files.write_json(os.path.join(workdir, CARD_FILE), card)


def check_workdir(config: ml_collections.ConfigDict, workdir: str, outputs) -> None:
    """Refuses to train in a `workdir` whose model (its card, checkpoints and `outputs`) was made under another
    config, naming the differing keys; `config.overwrite` moves that output aside instead.

    Raises:
      workdir.WorkdirError: the differing keys and the ways out.
      files.FileFormatError: model.json is not JSON.
    """

    card = files.read_json(os.path.join(workdir, CARD_FILE))
    workdir_lib.check_fingerprint(
        workdir,
        "a model",
        card.get("config") if isinstance(card, dict) else None,
        config,
        (CARD_FILE, *outputs),
        overwrite=bool(config.get("overwrite", False)),
    )


def read_card(workdir: str) -> dict[str, Any]:
    """The model card of a pre-training `workdir`.

    Raises:
      ModelCardError: no model.json, not JSON, not an object, or without the fields every card has (of the
        right types); the message names the file and the field.
    """
    path = os.path.join(workdir, CARD_FILE)
    try:
        card = files.read_json(path)
    except files.FileFormatError as e:
        raise ModelCardError(f"Model card {e}") from None
    if card is None:
        raise ModelCardError(
            f"{path} does not exist; {workdir!r} is not a pre-training workdir (run a pretrain or "
            "clip_pretrain stage there first, or pass --config.pretrained=DIR)."
        )
    if not isinstance(card, dict):
        raise ModelCardError(
            f"{path} is not a model card: it holds a JSON {type(card).__name__}, expected an object."
        )
    missing = [k for k in _CARD_FIELDS if k not in card]
    if card.get("kind") == "clip" and "pad_id" not in card:
        missing.append("pad_id")
    if missing:
        raise ModelCardError(
            f"{path} is not a model card: missing {missing} (it has {sorted(card)}); it is written by the "
            "pretrain and clip_pretrain stages."
        )
    for field, (ok, expected) in _CARD_FIELDS.items():
        if not ok(card[field]):
            raise ModelCardError(
                f"{path}: field {field!r} is {card[field]!r}; expected {expected}."
            )
    if card["kind"] == "clip" and not _is_int(card["pad_id"]):
        raise ModelCardError(f"{path}: field 'pad_id' is {card['pad_id']!r}; expected an integer.")
    if card["kind"] == "clip_image" and not (
        _is_int(card.get("embed_dim")) and card["embed_dim"] > 0
    ):
        raise ModelCardError(
            f"{path}: field 'embed_dim' is {card.get('embed_dim')!r}; expected a positive integer."
        )
    return card


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Field -> (check, what is expected): what every reader of a card relies on.
_CARD_FIELDS = {
    "kind": (lambda v: v in KINDS, f"one of {list(KINDS)}"),
    "input_shape": (
        lambda v: isinstance(v, list) and v and all(_is_int(d) and d > 0 for d in v),
        "a list of positive integers, e.g. [28, 28, 1]",
    ),
    "noise_ratio": (  # None: unknown (an imported model).
        lambda v: (
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1)
        ),
        "a number in [0, 1], or null when unknown",
    ),
    "seed": (_is_int, "an integer"),
    "config": (lambda v: isinstance(v, dict), "a JSON object (the pre-training config)"),
}


class ImageEncoder:
    """A frozen image model: uint8 images [B, H, W, C] -> float32 features [B, D], with the eval preprocessing
    the model was trained with.

    Attributes:
      config: the pre-training config of the checkpoint.
      card: its model card.
      step: the checkpoint's step.
      feature_dim: D.
      input_shape: (H, W, C) of the preprocessed images the model takes.
      fingerprint: a short hash of (workdir realpath, step, config) that changes with the checkpoint.
      apply_fn: the pure model function (variables, float inputs [B, H, W, C]) -> features [B, D], for
        programs that run the encoder inside their own jitted step (NMTune's online views).
      variables: its frozen variables.
    """

    def __init__(self, card: dict, apply_fn, variables, feature_dim: int, step: int, workdir: str):
        self.card = card
        self.apply_fn = apply_fn
        self.config = ml_collections.ConfigDict(card["config"])
        self.step = step
        self.input_shape = tuple(card["input_shape"])
        self.feature_dim = int(feature_dim)
        self.variables = jax.device_put(variables)
        self._apply = jax.jit(apply_fn, compiler_options=parallel.conv_net_options())
        blob = json.dumps(
            [os.path.realpath(workdir), step, card["config"]], sort_keys=True, default=repr
        )
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _batches(self, images: np.ndarray, batch_size: int):
        """The eval-preprocessed padded batches of uint8 images [B, H, W, C]."""
        from nml_jax.data import pipeline

        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"ImageEncoder expects uint8 images [B, H, W, C]; got {images.dtype} {images.shape}."
            )
        data = {"image": images, "label": np.zeros(len(images), np.int32)}
        return pipeline.eval_batches(
            data,
            global_batch=batch_size,
            pp=self.config.input.pp_eval,
            process_index=0,  # Every process encodes all the images it is given.
            process_count=1,
        )

    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 [B, D] features of uint8 images [B, H, W, C]."""
        out = [
            np.asarray(self._apply(self.variables, b["image"]), np.float32)[
                np.asarray(b["mask"], bool)
            ]
            for b in self._batches(images, batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

    def inputs(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The float32 inputs [B, H, W, C] the model takes: uint8 images after the eval preprocessing."""
        out = [
            np.asarray(b["image"], np.float32)[np.asarray(b["mask"], bool)]
            for b in self._batches(images, batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, *self.input_shape), np.float32)

    def embed(self, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 [B, D] features of preprocessed inputs (`inputs`), in padded batches of `batch_size`."""
        n = len(inputs)
        padded = np.concatenate(
            [inputs, np.zeros((-n % batch_size, *inputs.shape[1:]), inputs.dtype)]
        )
        out = [
            np.asarray(self._apply(self.variables, padded[i : i + batch_size]), np.float32)
            for i in range(0, len(padded), batch_size)
        ]
        return np.concatenate(out)[:n] if out else np.zeros((0, self.feature_dim), np.float32)


def restore(workdir: str) -> ImageEncoder:
    """The frozen image encoder of the newest checkpoint in a pre-training `workdir`.

    Raises:
      ModelCardError: no usable model card; FileNotFoundError: no checkpoint.
    """
    card = read_card(workdir)
    step, raw = checkpoint.restore_raw(workdir)
    variables = {"params": raw["params"], "batch_stats": raw.get("batch_stats", {})}
    variables = jax.tree.map(np.asarray, variables)
    config = ml_collections.ConfigDict(card["config"])
    if card["kind"] == "clip":
        model = clip.build(config.model, card["pad_id"])
        apply_fn = lambda v, x: model.apply(v, x, method=clip.CLIP.encode_image)
        dim = config.model.embed_dim
    elif card["kind"] == "clip_image":
        model = models.from_config(config.model, card["embed_dim"])
        apply_fn = lambda v, x: model.apply(v, x, train=False)
        dim = card["embed_dim"]
    else:
        head = variables["params"]["head"]["kernel"]
        model = models.from_config(config.model, int(np.shape(head)[-1]))
        apply_fn = lambda v, x: model.apply(v, x, train=False)[1]
        dim = np.shape(head)[0]
    return ImageEncoder(card, apply_fn, variables, dim, step, workdir)


# ---------------------------------------------------------------------------------------------------------------
# The frozen text encoder.

_LOG_EVERY_S = 10.0


def bucket_length(longest: int, multiple: int, cap: int) -> int:
    """Padded batch length: ceil(longest / multiple) * multiple, at most max(cap, longest)."""
    return min(math.ceil(longest / multiple) * multiple, max(cap, longest))


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of `batch_size` (the last may be short), sorted by length (stable)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class TextEncoder:
    """The frozen all-MiniLM-L6-v2: texts -> float32 [N, 384] sentence embeddings.

    Texts are tokenized, sorted by token length and cut into batches whose padded length is rounded up to a
    multiple of `bucket_multiple`, so a whole set compiles at most max_len / bucket_multiple shapes and short
    tweets never pay for long reviews. Each global batch is sharded over the mesh's `data` axis.
    """

    feature_dim = minilm.EMBED_DIM

    def __init__(self, params: dict, tokenizer: minilm.MiniLMTokenizer, fingerprint: str):
        self.params = params
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.input_shape = (tokenizer.max_len,)

    @classmethod
    def load(cls, max_len: int = minilm.MAX_LEN) -> TextEncoder:
        """The installed all-MiniLM-L6-v2 (see nml_jax.models.minilm)."""
        params, tokenizer = minilm.load_minilm(max_len)
        return cls(params, tokenizer, minilm.fingerprint())

    def features(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 128,
        bucket_multiple: int = 16,
        mesh=None,
        name: str = "texts",
    ) -> np.ndarray:
        """Sentence embeddings float32 [N, 384] in the order of `texts` (every process passes the same list;
        `batch_size` must split evenly over the mesh's devices and the processes)."""
        if not texts:
            raise ValueError(f"TextEncoder.features got no texts for {name!r}.")
        config_lib.check_positive_int("bucket_multiple", bucket_multiple)
        mesh = mesh or parallel.make_mesh()
        local_batch = parallel.check_global_batch(batch_size, mesh)
        local = slice(jax.process_index() * local_batch, (jax.process_index() + 1) * local_batch)
        params = jax.device_put(self.params, parallel.replicated(mesh))
        ids = self.tokenizer.tokenize(texts)
        features = np.zeros((len(ids), self.feature_dim), np.float32)
        log = _RateLog(name, len(ids))
        pending = None
        for rows in length_batches(np.asarray([len(x) for x in ids]), batch_size):
            length = bucket_length(
                max(len(ids[i]) for i in rows), bucket_multiple, self.tokenizer.max_len
            )
            # Short last batch: filler rows have an all-zero mask; their outputs are dropped.
            batch = [ids[i] for i in rows] + [ids[rows[0]][:0]] * (batch_size - len(rows))
            input_ids, mask = minilm.pad_batch(batch, length)
            launched = (
                rows,
                minilm.encode(params, *parallel.to_global((input_ids[local], mask[local]), mesh)),
            )
            # Fetch the previous batch only once the next is dispatched, so the device never idles.
            if pending is not None:
                features[pending[0]] = np.asarray(parallel.to_host(pending[1]))[: len(pending[0])]
                log.add(len(pending[0]))
            pending = launched
        features[pending[0]] = np.asarray(parallel.to_host(pending[1]))[: len(pending[0])]
        log.add(len(pending[0]))
        return features


class _RateLog:
    """Logs `done/total texts, texts/s` at most every _LOG_EVERY_S seconds, and at the end."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done = name, total, 0
        self.start, self.last = time.time(), 0.0

    def add(self, count: int) -> None:
        self.done += count
        now = time.time()
        if now - self.last >= _LOG_EVERY_S or self.done == self.total:
            rate = self.done / max(now - self.start, 1e-9)
            logging.info(
                "embedded %s: %d/%d texts, %.1f texts/s", self.name, self.done, self.total, rate
            )
            self.last = now


@functools.lru_cache(maxsize=1)
def text_encoder(max_len: int = minilm.MAX_LEN) -> TextEncoder:
    """The installed MiniLM, loaded once per process."""
    return TextEncoder.load(max_len)
