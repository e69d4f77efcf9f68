"""Stage `pretrain`: supervised pre-training on noisy labels, evaluated on the clean test split.

`run(config, workdir)` loads the train split, corrupts its labels with `noise.load_or_make` and calls `train`.
This module holds only what is supervised: the classifier, its cross-entropy step, the input pipeline and the
test evaluation; the shared loop (state, optimizer, resume, checkpoints, metrics) is `trainer.train`. Training
accuracy is reported separately on clean and corrupted examples (against the label trained on, and for corrupted
ones also against the true label).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from nml_jax import checkpoint, config_lib, encoders, losses, models, noise, parallel, trainer

SUMMARY_FILE = "pretrain_summary.json"


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid key of a pretrain config (or a pretrain block)."""
    config_lib.check_choice("model.name", config.model.name, models.NAMES)
    config_lib.check_choice("model.dtype", config.model.dtype, ["float32", "bfloat16"])
    if config.get("train_examples") is not None:
        config_lib.check_positive_int("train_examples", config.train_examples)
    config_lib.check_range("label_smoothing", config.label_smoothing, 0.0, 1.0, high_open=True)
    config_lib.check_choice(
        "noise.kind", config.noise.kind, ["none", "symmetric", "asymmetric", "matrix"]
    )
    noise.check_ratio(config.noise.ratio)
    from nml_jax import data

    data.check_name(config.dataset, "dataset")
    trainer.validate(config)


def train_accuracy_counts(
    logits: jax.Array, label: jax.Array, clean_label: jax.Array, is_noisy: jax.Array
) -> dict[str, jax.Array]:
    """Counts of correct predictions on clean and corrupted training examples.

    `fit_clean` = #{clean, argmax = label}; `fit_noisy` = #{corrupted, argmax = noisy label}
    (memorisation); `true_noisy` = #{corrupted, argmax = true label}; `n_clean`, `n_noisy` the counts.
    """
    pred = jnp.argmax(logits, axis=-1)
    noisy = is_noisy.astype(jnp.float32)
    clean = 1.0 - noisy
    return {
        "fit_clean": jnp.sum((pred == label) * clean),
        "fit_noisy": jnp.sum((pred == label) * noisy),
        "true_noisy": jnp.sum((pred == clean_label) * noisy),
        "n_clean": jnp.sum(clean),
        "n_noisy": jnp.sum(noisy),
    }


def train_summaries(sums: dict[str, float]) -> dict[str, float]:
    """Accuracies from summed counts: clean-fit, noisy-fit (memorisation) and noisy-true rates."""
    out = {}
    if sums["n_clean"]:
        out["train_acc_clean"] = sums["fit_clean"] / sums["n_clean"]
    if sums["n_noisy"]:
        out["train_acc_noisy"] = sums["fit_noisy"] / sums["n_noisy"]
        out["train_acc_noisy_true_label"] = sums["true_noisy"] / sums["n_noisy"]
    return out


def make_train_step(model: nn.Module, tx, smoothing: float, schedule: optax.Schedule):
    """(state, batch) -> (state, metrics): one SGD step on the labels in `batch['label']`."""

    def train_step(state: trainer.TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            (logits, _), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            loss = jnp.mean(losses.smoothed_cross_entropy(logits, batch["label"], smoothing))
            return loss, (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        counts = train_accuracy_counts(
            logits, batch["label"], batch["clean_label"], batch["is_noisy"]
        )
        return new_state, {"loss": loss, "lr": schedule(state.step), **counts}

    return train_step


def make_eval_step(model: nn.Module):
    """(state, batch) -> masked sums of correct predictions, cross-entropy and example count."""

    def eval_step(state: trainer.TrainState, batch: dict[str, jax.Array]):
        logits, _ = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
        )
        mask = batch["mask"].astype(jnp.float32)
        return {
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            "loss": jnp.sum(losses.smoothed_cross_entropy(logits, batch["label"]) * mask),
            "count": jnp.sum(mask),
        }

    return eval_step


def _with_noise_fields(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds `clean_label` (= label) and `is_noisy` (all False) when the data has no noise record."""
    data = dict(data)
    data.setdefault("clean_label", data["label"])
    data.setdefault("is_noisy", np.zeros(len(data["label"]), bool))
    return data


def test_metrics(eval_step, state, test_data, config, mesh) -> dict[str, float]:
    """Exact accuracy and mean cross-entropy on `test_data` (padded batches, masked)."""
    totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
    for batch in _eval_iterator(config, test_data, config.input.eval_batch_size):
        batch = parallel.to_global({k: batch[k] for k in ("image", "label", "mask")}, mesh)
        for key, value in jax.device_get(eval_step(state, batch)).items():
            totals[key] += float(value)
    count = max(totals["count"], 1.0)
    logging.info("test accuracy %.4f", totals["correct"] / count)
    return {
        "test_accuracy": totals["correct"] / count,
        "test_loss": totals["loss"] / count,
        "test_examples": totals["count"],
    }


def _eval_iterator(config, test_data, global_batch: int):
    """This process's padded evaluation batches: in memory, or streamed when `test_data` is None."""
    from nml_jax.data import pipeline

    if test_data is None:
        return pipeline.stream_eval(
            config.dataset,
            config.test_split,
            data_dir=config.data_dir,
            global_batch=global_batch,
            pp=config.input.pp_eval,
        )
    return pipeline.eval_batches(test_data, global_batch=global_batch, pp=config.input.pp_eval)


def _train_iterator(config, train_data, start_step: int):
    """This process's training batches from `start_step`, with `clean_label` and `is_noisy`.

    Streamed sets (`train_data` without 'image') read images from TFDS; their labels come from the
    noise tables in `train_data`, looked up by each example's `index` in the split.
    """
    from nml_jax.data import pipeline

    common = dict(
        global_batch=config.input.batch_size,
        seed=config.seed,
        start_step=start_step,
        pp=config.input.pp_train,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if "image" in train_data:
        yield from pipeline.train_batches(train_data, **common)
        return
    batches = pipeline.stream_train(
        config.dataset,
        config.train_split,
        data_dir=config.data_dir,
        label_table=train_data["label"],
        **common,
    )
    for batch in batches:
        index = np.asarray(batch["index"])
        yield {
            **batch,
            "clean_label": train_data["clean_label"][index],
            "is_noisy": train_data["is_noisy"][index],
        }


def _image_shape(test_data, config) -> tuple[int, ...]:
    """The preprocessed image shape, read from the first evaluation batch."""
    first = next(iter(_eval_iterator(config, test_data, jax.process_count())))
    return tuple(first["image"].shape[1:])


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    train_data: dict[str, np.ndarray],
    test_data: dict[str, np.ndarray] | None,
    num_classes: int,
) -> dict[str, Any]:
    """Trains on `train_data['label']` and evaluates on `test_data`.

    Args:
      config: a pretrain config (configs/pretrain.py).
      workdir: where checkpoints, metrics.jsonl, TensorBoard files, model.json and the summary go.
      train_data: {'image', 'label'} numpy arrays, optionally 'clean_label' and 'is_noisy';
        without 'image', the label tables of a set streamed from TFDS (`config.input.stream`).
      test_data: {'image', 'label'} numpy arrays; None to stream `config.test_split`.
      num_classes: classifier outputs.

    Returns:
      What `trainer.train` returns: the final state, the summary, the logged history.
    """
    validate(config)
    train_data = _with_noise_fields(train_data)
    mesh = parallel.make_mesh(config.get("num_devices"))
    parallel.check_global_batch(config.input.batch_size, mesh)
    parallel.check_global_batch(config.input.eval_batch_size, mesh, "input.eval_batch_size")
    _, total_steps, warmup_steps = trainer.schedule_steps(config, len(train_data["label"]))
    model = models.from_config(config.model, num_classes)
    schedule = trainer.learning_rate_schedule(config.optimizer.lr, total_steps, warmup_steps)
    tx = trainer.make_optimizer(config.optimizer, schedule)
    image_shape = _image_shape(test_data, config)
    encoders.write_card(workdir, "classifier", config, image_shape, num_classes=num_classes)
    # Every supervised model here is a conv net.
    eval_step = jax.jit(make_eval_step(model), compiler_options=parallel.conv_net_options())
    fields = ("image", "label", "clean_label", "is_noisy")
    recipe = trainer.Recipe(
        name=config.model.name,
        create_state=lambda rng: trainer.create_state(
            model, tx, (jnp.zeros((1, *image_shape), jnp.float32),), rng, train=False
        ),
        train_step=make_train_step(model, tx, config.label_smoothing, schedule),
        batches=lambda start: (
            {k: b[k] for k in fields} for b in _train_iterator(config, train_data, start)
        ),
        rates=lambda sums, last: train_summaries(sums),
        evaluate=lambda state: test_metrics(eval_step, state, test_data, config, mesh),
        summary_file=SUMMARY_FILE,
        compiler_options=parallel.conv_net_options(train=True),
    )
    return trainer.train(config, workdir, mesh, recipe, total_steps)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Stage `pretrain`: noisy labels from `noise.load_or_make`, then `train`; refused in a workdir holding a
    model made under another config (`encoders.check_workdir`)."""
    from nml_jax import data

    checkpoint.check_location(workdir)
    encoders.check_workdir(config, workdir, (*trainer.OUTPUTS, SUMMARY_FILE, noise.NOISE_FILE))
    if config.input.stream:
        record = noise.load_or_make(config, workdir)
        train_data, test_data = {}, None
    else:
        loaded = data.load(config.dataset, config.train_split, data_dir=config.data_dir)
        record = noise.load_or_make(config, workdir, labels=loaded["label"])
        train_data = {"image": loaded["image"]}
        test_data = data.load(config.dataset, config.test_split, data_dir=config.data_dir)
    train_data.update(
        label=record["noisy_labels"].astype(np.int32),
        clean_label=record["clean_labels"].astype(np.int32),
        is_noisy=record["is_noisy"].astype(bool),
    )
    if config.get("train_examples") is not None:
        train_data = {k: v[: config.train_examples] for k, v in train_data.items()}
    logging.info(
        "Noise %s r=%.3f: %d of %d training labels corrupted.",
        config.noise.kind,
        float(record["ratio"]),
        int(train_data["is_noisy"].sum()),
        len(train_data["label"]),
    )
    return train(
        config, workdir, train_data, test_data, data.num_classes(config.dataset, config.data_dir)
    )
