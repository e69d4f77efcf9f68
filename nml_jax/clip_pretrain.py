"""Stage `clip_pretrain`: contrastive image-text (CLIP) pre-training on pairs with swapped (noisy) captions.

`run(config, workdir)` builds the pairs (embedded: Fashion-MNIST images with synthetic captions; paper scale:
TFRecord shards of a web dataset, see nml_jax/data/captions.py), swaps the captions of round(r * N) pairs with
`noise.load_or_make` (noise.npz records `caption_index` and `is_noisy`; for shards the swaps stay within each
shard), trains (or reloads) the byte-level BPE tokenizer in `<workdir>/tokenizer.json`, and calls `train`.
Shards are never read whole into memory: process 0 counts their records once (shards.json), and the input
pipeline tokenizes captions shard by shard.

This module holds only what is contrastive: the CLIP model, its InfoNCE step, the pairs and zero-shot
evaluation; the shared loop (state, optimizer, resume, checkpoints, metrics) is `trainer.train`, and the data
position is the step. The loss is the symmetric InfoNCE over the GLOBAL batch: the step is jitted with the batch
sharded over `data`, so `image @ text.T` on the global arrays makes XLA gather the embeddings of every device.
At the end, zero-shot accuracy on `config.zero_shot` (prompt ensembles per class) is logged and returned.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from nml_jax import checkpoint, config_lib, encoders, losses, noise, parallel, trainer
from nml_jax import tokenizer as tokenizer_lib
from nml_jax.models import clip

SUMMARY_FILE = "clip_summary.json"
SHARDS_FILE = "shards.json"  # captions.SHARDS_FILE: record counts of the TFRecord shards.
TFRECORD = "tfrecord"  # config.dataset for web-scale TFRecord shards (config.shards).


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid key of a clip_pretrain config."""
    config_lib.check_choice("noise.kind", config.noise.kind, ["caption_swap"])
    noise.check_ratio(config.noise.ratio)
    config_lib.check_choice("model.dtype", config.model.dtype, ["float32", "bfloat16"])
    for key in ("embed_dim", "text.vocab_size", "text.context_length", "text.width", "text.depth"):
        node = config.model
        for part in key.split("."):
            node = node[part]
        config_lib.check_positive_int(f"model.{key}", node)
    if config.dataset == TFRECORD and not config.get("shards"):
        raise config_lib.ConfigError(
            "config.dataset='tfrecord' needs config.shards, a glob such as 'gs://b/yfcc15m/*.tfrecord'."
        )
    from nml_jax import data

    if config.dataset != TFRECORD:
        data.check_name(config.dataset, "dataset")
    data.check_name(config.zero_shot.dataset, "zero_shot.dataset")
    trainer.validate(config)


def retrieval_counts(
    image: jax.Array, text: jax.Array, is_noisy: jax.Array
) -> dict[str, jax.Array]:
    """In-batch image -> text top-1 hits (argmax_j I_i . T_j == i) on clean and on caption-swapped pairs.

    A hit on a swapped pair means the model retrieves the wrong caption it was given (memorisation).
    """
    hit = (jnp.argmax(image @ text.T, axis=-1) == jnp.arange(image.shape[0])).astype(jnp.float32)
    noisy = is_noisy.astype(jnp.float32)
    return {
        "hit_clean": jnp.sum(hit * (1.0 - noisy)),
        "hit_noisy": jnp.sum(hit * noisy),
        "n_clean": jnp.sum(1.0 - noisy),
        "n_noisy": jnp.sum(noisy),
    }


def make_train_step(model, tx, schedule):
    """(state, batch{'image', 'tokens', 'is_noisy'}) -> (state, metrics) for one contrastive step."""

    def train_step(state, batch):
        def loss_fn(params):
            (image, text, scale), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                batch["tokens"],
                train=True,
                mutable=["batch_stats"],
            )
            return losses.info_nce(image, text, scale), (image, text, scale, updates)

        (loss, (image, text, scale, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        new_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, new_updates),
            batch_stats=updates.get("batch_stats", {}),
            opt_state=opt_state,
        )
        counts = retrieval_counts(image, text, batch["is_noisy"])
        return new_state, {"loss": loss, "lr": schedule(state.step), "scale": scale, **counts}

    return train_step


def class_prompts(dataset: str, data_dir: str | None = None) -> list[list[str]]:
    """Zero-shot prompts per class: the caption vocabulary's names for the embedded sets; for the ImageNet label
    space, ImageNet's human-readable names in CLIP's 80 templates; else the dataset's class names."""
    from nml_jax import data
    from nml_jax.data import captions, classes

    if dataset in captions.DESCRIPTIONS:
        return captions.zero_shot_prompts(captions.descriptions(dataset))
    names = classes.zero_shot_names(dataset, data.class_names(dataset, data_dir))
    if classes.base_name(dataset) in classes.IMAGENET_LABEL_SPACE:
        return [[t.format(name) for t in classes.clip_imagenet_templates()] for name in names]
    return [[t.format(name=name) for t in captions.ZERO_SHOT_TEMPLATES] for name in names]


def class_embeddings(model, variables, tokens: np.ndarray, num_classes: int) -> jax.Array:
    """Zero-shot classifier [C, E]: per class, the normalised mean of its normalised prompt embeddings.

    `tokens` holds C * T prompt rows, class-major.
    """
    text = losses.l2_normalize(model.apply(variables, tokens, method=clip.CLIP.encode_text))
    text = text.reshape(num_classes, -1, text.shape[-1])
    return losses.l2_normalize(jnp.mean(text, axis=1))


def make_zero_shot_step(model):
    """(variables, classes [C, E], batch) -> masked count of argmax_c <image, class_c> == label."""

    def step(variables, classes, batch):
        image = losses.l2_normalize(
            model.apply(variables, batch["image"], method=clip.CLIP.encode_image)
        )
        pred = jnp.argmax(image @ classes.T, axis=-1)
        mask = batch["mask"].astype(jnp.float32)
        return {"correct": jnp.sum((pred == batch["label"]) * mask), "count": jnp.sum(mask)}

    return step


def _zero_shot_batches(config, global_batch: int):
    """This process's padded evaluation batches of the zero-shot set (in memory, or streamed if not embedded)."""
    from nml_jax import data
    from nml_jax.data import pipeline

    zs = config.zero_shot
    if zs.dataset in data.EMBEDDED:
        test = data.load(zs.dataset, zs.split, data_dir=zs.get("data_dir"))
        return pipeline.eval_batches(test, global_batch=global_batch, pp=config.input.pp_eval)
    return pipeline.stream_eval(
        zs.dataset,
        zs.split,
        data_dir=zs.get("data_dir"),
        global_batch=global_batch,
        pp=config.input.pp_eval,
    )


_PROMPTS_PER_CHUNK = 2048


def zero_shot_accuracy(model, state, tok, config, mesh) -> dict[str, float]:
    """Exact zero-shot accuracy on `config.zero_shot` with the prompt ensembles of `class_prompts`."""
    prompts = class_prompts(config.zero_shot.dataset, config.zero_shot.get("data_dir"))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    embed = jax.jit(class_embeddings, static_argnums=(0, 3))
    # The text tower sees at most ~2,048 prompts at a time (ImageNet: 1,000 classes x 80 templates = 80,000).
    per_chunk = max(1, _PROMPTS_PER_CHUNK // len(prompts[0]))
    parts = []
    for start in range(0, len(prompts), per_chunk):
        chunk = prompts[start : start + per_chunk]
        tokens = tok.encode(
            [p for per_class in chunk for p in per_class], config.model.text.context_length
        )
        parts.append(embed(model, variables, tokens, len(chunk)))
    classes = jnp.concatenate(parts)
    step = jax.jit(make_zero_shot_step(model))
    totals = {"correct": 0.0, "count": 0.0}
    for batch in _zero_shot_batches(config, config.input.eval_batch_size):
        batch = parallel.to_global({k: batch[k] for k in ("image", "label", "mask")}, mesh)
        for key, value in jax.device_get(step(variables, classes, batch)).items():
            totals[key] += float(value)
    accuracy = totals["correct"] / max(totals["count"], 1.0)
    logging.info("Zero-shot accuracy on %s: %.4f", config.zero_shot.dataset, accuracy)
    return {
        "zero_shot_accuracy": accuracy,
        "zero_shot_examples": totals["count"],
    }


def _train_iterator(config, pairs: dict[str, Any], tok: tokenizer_lib.Tokenizer, start_step: int):
    """This process's batches {'image', 'tokens', 'is_noisy'} from `start_step` (in memory or streamed)."""
    from nml_jax.data import captions, pipeline

    common = dict(
        global_batch=config.input.batch_size,
        seed=config.seed,
        start_step=start_step,
        pp=config.input.pp_train,
    )
    if "image" in pairs:
        fields = {k: pairs[k] for k in ("image", "tokens", "is_noisy")}
        yield from pipeline.train_batches(fields, **common)
        return
    batches = captions.stream_pairs(
        pairs["files"],
        pairs["counts"],
        caption_index=pairs["caption_index"],
        is_noisy=pairs["is_noisy"],
        tokenize=lambda texts: tok.encode(texts, config.model.text.context_length),
        shuffle_buffer=config.input.shuffle_buffer,
        **common,
    )
    for batch in batches:
        yield {k: batch[k] for k in ("image", "tokens", "is_noisy")}


def _image_shape(config) -> tuple[int, ...]:
    """The preprocessed image shape, from the first zero-shot evaluation batch."""
    first = next(iter(_zero_shot_batches(config, jax.process_count())))
    return tuple(int(d) for d in first["image"].shape[1:])


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    pairs: dict[str, Any],
    tok: tokenizer_lib.Tokenizer,
) -> dict[str, Any]:
    """Contrastive training on `pairs`, then zero-shot evaluation.

    Args:
      config: a clip_pretrain config (configs/clip_pretrain.py).
      workdir: checkpoints, metrics.jsonl, TensorBoard files, model.json and the summary go here.
      pairs: in memory {'image' uint8 [N,H,W,C], 'tokens' int32 [N,L] (captions as trained on, i.e. after the
        swap), 'is_noisy' bool [N]}; or streamed {'files', 'counts', 'caption_index', 'is_noisy'}: the
        shards, their record counts and the within-shard swap (captions.stream_pairs tokenizes per shard).
      tok: the tokenizer of the captions (for the zero-shot prompts).

    Returns:
      {'state', 'step', 'summary' (final numbers, incl. zero_shot_accuracy), 'history' (logged records),
       'resumed_from', 'trained_steps'}.
    """
    validate(config)
    if tok.vocab_size > config.model.text.vocab_size:
        raise config_lib.ConfigError(
            f"The tokenizer has {tok.vocab_size} ids; config.model.text.vocab_size="
            f"{config.model.text.vocab_size} is too small."
        )
    mesh = parallel.make_mesh(config.get("num_devices"))
    parallel.check_global_batch(config.input.batch_size, mesh)
    parallel.check_global_batch(config.input.eval_batch_size, mesh, "input.eval_batch_size")
    num_pairs = len(pairs["is_noisy"])
    _, total_steps, warmup_steps = trainer.schedule_steps(config, num_pairs)
    model = clip.build(config.model, tok.pad_id)
    schedule = trainer.learning_rate_schedule(config.optimizer.lr, total_steps, warmup_steps)
    tx = trainer.make_optimizer(config.optimizer, schedule)
    image_shape = _image_shape(config)
    encoders.write_card(workdir, "clip", config, image_shape, pad_id=tok.pad_id)
    logging.info("CLIP pairs: %d (%d swapped).", num_pairs, int(np.sum(pairs["is_noisy"])))
    example = (
        jnp.zeros((1, *image_shape), jnp.float32),
        jnp.ones((1, config.model.text.context_length), jnp.int32),
    )
    recipe = trainer.Recipe(
        name="CLIP",
        create_state=lambda rng: trainer.create_state(model, tx, example, rng),
        train_step=make_train_step(model, tx, schedule),
        batches=lambda start: _train_iterator(config, pairs, tok, start),
        rates=retrieval_rates,
        finish=lambda state: zero_shot_accuracy(model, state, tok, config, mesh),
        summary_file=SUMMARY_FILE,
    )
    return trainer.train(config, workdir, mesh, recipe, total_steps)


def retrieval_rates(sums: dict[str, float], last: dict[str, float]) -> dict[str, float]:
    """The logged scalars of a contrastive run: the temperature's scale and in-batch retrieval rates."""
    out = {"scale": float(last["scale"])}
    if sums["n_clean"]:
        out["train_i2t_clean"] = sums["hit_clean"] / sums["n_clean"]
    if sums["n_noisy"]:
        out["train_i2t_noisy"] = sums["hit_noisy"] / sums["n_noisy"]
    return out


def _main_then_all(tag: str, make: Callable[[], Any], read: Callable[[], Any]) -> Any:
    """Process 0 runs `make` (which writes to the workdir); after a barrier every other process runs `read`."""
    if jax.process_count() == 1:
        return make()
    from jax.experimental import multihost_utils

    result = make() if parallel.is_main_process() else None
    multihost_utils.sync_global_devices(tag)
    return result if parallel.is_main_process() else read()


def _shared_tokenizer(
    config, workdir: str, texts: Callable[[], Iterable[str]]
) -> tokenizer_lib.Tokenizer:
    """Process 0 trains (on `texts()`) or finds `<workdir>/tokenizer.json`; every other process loads it."""
    return _main_then_all(
        "nml_jax_clip_tokenizer",
        lambda: tokenizer_lib.load_or_train(workdir, texts(), config.model.text.vocab_size),
        lambda: tokenizer_lib.Tokenizer.load(os.path.join(workdir, tokenizer_lib.FILE_NAME)),
    )


def _streamed_pairs(config, workdir: str) -> tuple[dict[str, Any], tokenizer_lib.Tokenizer]:
    """TFRecord shards: record counts (shards.json), within-shard swaps (noise.npz) and the tokenizer (trained
    on the first `config.tokenizer_texts` captions), each made once by process 0 and read by every process.
    No caption is tokenized here: `captions.stream_pairs` does that shard by shard."""
    from nml_jax.data import captions

    files = captions.list_shards(config.shards)
    counts = _main_then_all(
        "nml_jax_clip_shards",
        lambda: captions.load_or_count(workdir, files),
        lambda: captions.read_counts(workdir, files),
    )
    record = noise.load_or_make(config, workdir, shard_counts=np.asarray(counts, np.int64))
    tok = _shared_tokenizer(
        config, workdir, lambda: captions.first_captions(files, config.get("tokenizer_texts"))
    )
    pairs = {
        "files": files,
        "counts": counts,
        "caption_index": record["caption_index"],
        "is_noisy": record["is_noisy"].astype(bool),
    }
    return pairs, tok


def build_pairs(config, workdir: str) -> tuple[dict[str, Any], tokenizer_lib.Tokenizer]:
    """The training pairs (captions swapped as noise.npz says) and the tokenizer."""
    from nml_jax import data
    from nml_jax.data import captions

    if config.dataset == TFRECORD:
        pairs, tok = _streamed_pairs(config, workdir)
    else:
        loaded = data.load(config.dataset, config.train_split, data_dir=config.data_dir)
        texts = captions.compose_captions(
            loaded["label"], captions.descriptions(config.dataset), config.caption_seed
        )
        record = noise.load_or_make(config, workdir, labels=np.zeros(len(texts), np.int64))
        limit = config.get("tokenizer_texts")
        tok = _shared_tokenizer(config, workdir, lambda: texts[:limit] if limit else texts)
        tokens = tok.encode(texts, config.model.text.context_length)
        pairs = {
            "image": loaded["image"],
            "tokens": captions.swap_captions(tokens, record["caption_index"]),
            "is_noisy": record["is_noisy"].astype(bool),
        }
    logging.info(
        "Caption swap r=%.3f: %d of %d pairs mismatched.",
        float(config.noise.ratio),
        int(pairs["is_noisy"].sum()),
        len(pairs["is_noisy"]),
    )
    return pairs, tok


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Stage `clip_pretrain`: pairs, caption-swap noise and tokenizer from `build_pairs`, then `train`."""
    validate(config)
    checkpoint.check_location(workdir)
    encoders.check_workdir(
        config,
        workdir,
        (*trainer.OUTPUTS, SUMMARY_FILE, noise.NOISE_FILE, tokenizer_lib.FILE_NAME, SHARDS_FILE),
    )
    pairs, tok = build_pairs(config, workdir)
    return train(config, workdir, pairs, tok)
