"""Stage `pretrain`: supervised pre-training on noisy labels, evaluated on the clean test split.

`run(config, workdir)` loads the train split, corrupts its labels with `noise.load_or_make` and calls
`train`, which returns the final state and the summaries. The state is initialised from `eval_shape`
with explicit shardings (replicated, or FSDP), the step is jitted with donated state, and batches enter
as global arrays. Training accuracy is reported separately on clean and corrupted examples (against the
label trained on, and for corrupted ones also against the true label). Checkpoints resume the run
(own workdir > `config.init_from` > scratch); a finished run started again returns at once.

`restore_encoder(workdir)` gives the features stage a frozen, jitted feature extractor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct

from nml_jax import checkpoint, config_lib, metrics, models, parallel

SUMMARY_FILE = "pretrain_summary.json"
# Model name, classes, input shape and the pretrain config, for restore_encoder. The workdir's config.json is
# the config of the stage that ran there (e.g. nmtune, which pre-trains as its first step).
MODEL_FILE = "model.json"
OPTIMIZERS = ("sgd", "adamw", "lamb")


@struct.dataclass
class TrainState:
    """Everything a resumed run needs; the data position is `step` (the pipeline is (seed, step))."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def optimizer_block(
    name: str, *, lr: float, weight_decay: float, b2: float = 0.999
) -> ml_collections.ConfigDict:
    """Every field `make_optimizer` reads (pretrain and clip_pretrain configs)."""
    return ml_collections.ConfigDict(
        {
            "name": name,
            "lr": lr,
            "momentum": 0.9,
            "nesterov": False,
            "b1": 0.9,
            "b2": b2,
            "weight_decay": weight_decay,
            "clip_norm": None,
        }
    )


def default_config() -> ml_collections.ConfigDict:
    """Every field of a pretrain config, with the embedded default's values (configs/ start here)."""
    config = ml_collections.ConfigDict()
    config.stage = "pretrain"
    config.dataset = "nml_fashion_mnist"
    config.data_dir = None
    config.train_split = "train"
    config.test_split = "test"
    config.train_examples = None  # The first N training examples (None = all).
    config.noise = config_lib.noise_block("symmetric", 0.0, 0)
    config.seed = 0  # Parameters, dropout and the order of the training batches.

    config.model = ml_collections.ConfigDict({"name": "cnn", "dtype": "float32"})
    config.input = ml_collections.ConfigDict()
    config.input.batch_size = 64
    config.input.eval_batch_size = 512
    config.input.stream = False  # Stream from TFDS (sets too big for memory) instead of loading.
    config.input.pp_train = "to_float|normalize(0.2860, 0.3530)"
    config.input.pp_eval = "to_float|normalize(0.2860, 0.3530)"

    config.total_epochs = 2.0
    config.total_steps = None
    config.warmup_epochs = 0.0
    config.warmup_steps = None
    config.optimizer = optimizer_block("sgd", lr=0.05, weight_decay=5e-4)
    config.label_smoothing = 0.0

    config.log_every_steps = 100
    config.eval_every_steps = None  # None = only at the end.
    config.ckpt_every_steps = 500
    config.keep_checkpoints = 2
    config.fsdp = False
    config.num_devices = None  # None = all devices.
    config.init_from = None  # Another pretrain workdir whose params start this run.
    return config


def validate_training(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid key of the settings every trainer shares: batch sizes,
    duration, warmup, periodic work and the optimizer (pretrain and clip_pretrain configs)."""
    config_lib.check_positive_int("input.batch_size", config.input.batch_size)
    config_lib.check_positive_int("input.eval_batch_size", config.input.eval_batch_size)
    if (config.get("total_steps") is None) == (config.get("total_epochs") is None):
        raise config_lib.ConfigError(
            "Set exactly one of config.total_steps and config.total_epochs."
        )
    if config.get("total_steps") is not None:
        config_lib.check_positive_int("total_steps", config.total_steps)
    else:
        config_lib.check_range("total_epochs", config.total_epochs, 0, math.inf, low_open=True)
    if config.get("warmup_steps") is not None:
        config_lib.check_range("warmup_steps", config.warmup_steps, 0, math.inf)
    else:
        config_lib.check_range("warmup_epochs", config.warmup_epochs, 0, math.inf)
    for key in ("log_every_steps", "ckpt_every_steps", "eval_every_steps"):
        if config.get(key) is not None:
            config_lib.check_positive_int(key, config[key])
    config_lib.check_positive_int("keep_checkpoints", config.keep_checkpoints)
    opt = config.optimizer
    config_lib.check_choice("optimizer.name", opt.name, OPTIMIZERS)
    config_lib.check_range("optimizer.lr", opt.lr, 0.0, math.inf, low_open=True)
    config_lib.check_range("optimizer.weight_decay", opt.weight_decay, 0.0, math.inf)
    config_lib.check_range("optimizer.momentum", opt.momentum, 0.0, 1.0, high_open=True)
    if opt.get("clip_norm") is not None:
        config_lib.check_range("optimizer.clip_norm", opt.clip_norm, 0.0, math.inf, low_open=True)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid key of a pretrain config."""
    config_lib.check_choice("stage", config.stage, ["pretrain"])
    config_lib.check_choice("model.name", config.model.name, models.NAMES)
    config_lib.check_choice("model.dtype", config.model.dtype, ["float32", "bfloat16"])
    if config.get("train_examples") is not None:
        config_lib.check_positive_int("train_examples", config.train_examples)
    config_lib.check_range("label_smoothing", config.label_smoothing, 0.0, 1.0, high_open=True)
    config_lib.check_choice(
        "noise.kind", config.noise.kind, ["none", "symmetric", "asymmetric", "matrix"]
    )
    config_lib.check_range("noise.ratio", config.noise.ratio, 0.0, 1.0, high_open=True)
    validate_training(config)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The classifier named by `config.model.name`; the other `config.model` keys are its attributes."""
    kwargs = config.model.to_dict()
    name = kwargs.pop("name")
    return models.get(name, num_classes, **kwargs)


def learning_rate_schedule(base_lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warmup then cosine decay to 0.

    lr(s) = base * s / W for s < W, else base * (1 + cos(pi * (s - W) / (T - W))) / 2.
    """
    warmup_steps = min(int(warmup_steps), total_steps - 1)
    cosine = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return cosine
    warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
    return optax.join_schedules([warmup, cosine], [warmup_steps])


def decay_mask(params: Any) -> Any:
    """True for weight matrices and conv kernels (ndim > 1); biases and norm scales are not decayed."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt: ml_collections.ConfigDict, schedule: optax.Schedule):
    """SGD (momentum/Nesterov, coupled L2), AdamW or LAMB (decoupled decay), with optional clipping."""
    parts = []
    if opt.get("clip_norm") is not None:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    if opt.name == "sgd":
        if opt.weight_decay:
            parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
    elif opt.name == "adamw":
        parts.append(
            optax.adamw(
                schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask
            )
        )
    else:
        parts.append(
            optax.lamb(
                schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask
            )
        )
    return optax.chain(*parts)


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Per-example -sum_c q_c log softmax(z)_c, with q = (1 - eps) onehot(y) + eps / C."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    return optax.softmax_cross_entropy(logits, targets)


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

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            (logits, _), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            loss = jnp.mean(cross_entropy(logits, batch["label"], smoothing))
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

    def eval_step(state: TrainState, batch: dict[str, jax.Array]):
        logits, _ = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
        )
        mask = batch["mask"].astype(jnp.float32)
        return {
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
            "count": jnp.sum(mask),
        }

    return eval_step


def create_state(model: nn.Module, tx, image_shape: tuple[int, ...], rng: jax.Array) -> TrainState:
    """A fresh TrainState; `rng` seeds the parameters and, folded with the step, dropout."""
    init_rng, train_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=train_rng,
    )


def _schedule_steps(config, num_train: int) -> tuple[int, int, int]:
    """(steps_per_epoch, total_steps, warmup_steps) from the natural units of the config."""
    steps_per_epoch = num_train // config.input.batch_size
    if steps_per_epoch == 0:
        raise config_lib.ConfigError(
            f"config.input.batch_size={config.input.batch_size} exceeds the {num_train} training examples."
        )
    total = config_lib.steps_for(
        config.get("total_steps"), config.get("total_epochs"), steps_per_epoch, "total"
    )
    if config.get("warmup_steps") is not None:
        warmup = int(config.warmup_steps)
    else:
        warmup = round(config.warmup_epochs * steps_per_epoch)
    return steps_per_epoch, total, warmup


def _with_noise_fields(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds `clean_label` (= label) and `is_noisy` (all False) when the data has no noise record."""
    data = dict(data)
    data.setdefault("clean_label", data["label"])
    data.setdefault("is_noisy", np.zeros(len(data["label"]), bool))
    return data


def evaluate(eval_step, state, test_data, config, mesh) -> dict[str, float]:
    """Exact accuracy and mean cross-entropy on `test_data` (padded batches, masked)."""
    totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
    for batch in _eval_iterator(config, test_data, config.input.eval_batch_size):
        batch = parallel.to_global({k: batch[k] for k in ("image", "label", "mask")}, mesh)
        for key, value in jax.device_get(eval_step(state, batch)).items():
            totals[key] += float(value)
    count = max(totals["count"], 1.0)
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


def start_state(config, workdir: str, mesh, create_fn):
    """The train state to start from, with its checkpointer and shardings.

    `create_fn(rng)` builds a fresh state; it is `eval_shape`d to derive the shardings (replicated, or FSDP)
    and materialised under `jit` with those out_shardings only when nothing can be restored. Resume order:
    own workdir > `config.init_from` > scratch. Returns (checkpointer, start_step, state, shardings).
    """
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(create_fn, rng)
    shardings = parallel.param_shardings(abstract, mesh, fsdp=config.get("fsdp", False))
    init_fn = lambda: jax.jit(create_fn, out_shardings=shardings)(rng)
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
    start_step, state = _initial_state(config, workdir, ckpt, init_fn, abstract, shardings)
    return ckpt, start_step, state, shardings


def finished_run(ckpt, summary_path: str, state, start_step: int, total_steps: int) -> dict | None:
    """What `train` returns for a run that already finished (its saved summary), or None to train on."""
    if start_step < total_steps or not os.path.exists(summary_path):
        return None
    ckpt.close()
    with open(summary_path) as f:
        summary = json.load(f)
    logging.info(
        "The run in %s is finished (step %d); nothing to do.",
        os.path.dirname(summary_path),
        start_step,
    )
    return {
        "state": state,
        "step": start_step,
        "summary": summary,
        "history": [],
        "resumed_from": start_step,
        "trained_steps": 0,
    }


def _initial_state(config, workdir, ckpt, init_fn, abstract, shardings):
    """Resume order: own workdir > `config.init_from` > scratch. Returns (start_step, state)."""
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    restored = ckpt.restore(target)
    if restored is not None:
        logging.info("Resuming from step %d in %s.", restored[0], ckpt.directory)
        return restored
    state = init_fn()
    if config.get("init_from"):
        step, raw = checkpoint.restore_raw(config.init_from)
        params = _match(raw["params"], abstract.params, "params", config.init_from)
        batch_stats = _match(
            raw.get("batch_stats", {}), abstract.batch_stats, "batch_stats", config.init_from
        )
        state = state.replace(
            params=jax.device_put(params, shardings.params),
            batch_stats=jax.device_put(batch_stats, shardings.batch_stats),
        )
        logging.info("Initialised params from %s (step %d).", config.init_from, step)
    return 0, state


def _match(loaded: Any, abstract: Any, name: str, source: str) -> Any:
    """Checks `loaded` has the structure and shapes of `abstract`; raises a ValueError otherwise."""
    want = jax.tree.map(lambda a: tuple(a.shape), abstract)
    got = jax.tree.map(lambda a: tuple(np.shape(a)), loaded)
    if want != got:
        raise ValueError(
            f"config.init_from={source!r}: its {name} do not fit this model "
            f"(expected shapes {want}, found {got})."
        )
    return loaded


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    train_data: dict[str, np.ndarray],
    test_data: dict[str, np.ndarray],
    num_classes: int,
) -> dict[str, Any]:
    """Trains on `train_data['label']` and evaluates on `test_data`.

    Args:
      config: a pretrain config (configs/pretrain.py).
      workdir: where checkpoints, metrics.jsonl, TensorBoard files and the summary go.
      train_data: {'image', 'label'} numpy arrays, optionally 'clean_label' and 'is_noisy';
        without 'image', the label tables of a set streamed from TFDS (`config.input.stream`).
      test_data: {'image', 'label'} numpy arrays; None to stream `config.test_split`.
      num_classes: classifier outputs.

    Returns:
      {'state': TrainState, 'step': int, 'summary': dict of final numbers, 'history': logged records,
       'resumed_from': step restored from the workdir (0 when none), 'trained_steps': steps run now}.
    """
    validate(config)
    start_time = time.perf_counter()
    train_data = _with_noise_fields(train_data)
    mesh = parallel.make_mesh(config.get("num_devices"))
    local_batch = parallel.check_global_batch(config.input.batch_size, mesh)
    parallel.check_global_batch(config.input.eval_batch_size, mesh, "input.eval_batch_size")
    _, total_steps, warmup_steps = _schedule_steps(config, len(train_data["label"]))
    model = build_model(config, num_classes)
    schedule = learning_rate_schedule(config.optimizer.lr, total_steps, warmup_steps)
    tx = make_optimizer(config.optimizer, schedule)

    image_shape = _image_shape(test_data, config)
    if parallel.is_main_process():
        _write_json(
            os.path.join(workdir, MODEL_FILE),
            {
                "name": config.model.name,
                "num_classes": num_classes,
                "input_shape": image_shape,
                "config": json.loads(config_lib.to_json(config)),
            },
        )
    ckpt, start_step, state, shardings = start_state(
        config, workdir, mesh, lambda r: create_state(model, tx, image_shape, r)
    )
    summary_path = os.path.join(workdir, SUMMARY_FILE)
    finished = finished_run(ckpt, summary_path, state, start_step, total_steps)
    if finished:
        return finished

    replicated = parallel.replicated(mesh)
    train_step = jax.jit(
        make_train_step(model, tx, config.label_smoothing, schedule),
        in_shardings=(shardings, parallel.data_sharding(mesh)),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(model),
        in_shardings=(shardings, parallel.data_sharding(mesh)),
        out_shardings=replicated,
    )
    writer = metrics.MetricWriter(workdir, enabled=parallel.is_main_process())
    progress = metrics.Progress(total_steps, config.input.batch_size, first_step=start_step)
    batches = _train_iterator(config, train_data, start_step)
    fields = ("image", "label", "clean_label", "is_noisy")
    logging.info(
        "Training %s for %d steps (from %d), %d examples/step on %d devices, %d/process.",
        config.model.name,
        total_steps,
        start_step,
        config.input.batch_size,
        mesh.devices.size,
        local_batch,
    )
    pending: list[dict[str, jax.Array]] = []
    summary: dict[str, float] = {}
    for step in range(start_step + 1, total_steps + 1):
        batch = next(batches)
        state, step_metrics = train_step(
            state, parallel.to_global({k: batch[k] for k in fields}, mesh)
        )
        pending.append(step_metrics)
        if config_lib.itstime(step, config.log_every_steps, total_steps):
            summary.update(_log_train(writer, progress, step, pending))
            pending = []
        if config_lib.itstime(step, config.get("eval_every_steps"), total_steps):
            results = evaluate(eval_step, state, test_data, config, mesh)
            writer.write(step, results)
            summary.update(results)
            logging.info("step %d: test accuracy %.4f", step, results["test_accuracy"])
        if config_lib.itstime(step, config.ckpt_every_steps, total_steps):
            ckpt.save(step, state)
    ckpt.close()
    writer.close()
    summary.update(step=total_steps, wall_seconds=time.perf_counter() - start_time)
    if parallel.is_main_process():
        _write_json(summary_path, summary)
    return {
        "state": state,
        "step": total_steps,
        "summary": summary,
        "history": writer.history,
        "resumed_from": start_step,
        "trained_steps": total_steps - start_step,
    }


def _write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def _log_train(writer, progress, step: int, pending: list[dict]) -> dict[str, float]:
    """Fetches the metrics of the steps since the last log, checks the loss and writes them."""
    fetched = jax.device_get(pending)
    losses = np.array([m["loss"] for m in fetched])
    bad = metrics.first_non_finite(losses)
    if bad is not None:
        metrics.check_finite(step - len(losses) + 1 + bad, "Training loss", float(losses[bad]))
    sums = {
        k: float(sum(m[k] for m in fetched))
        for k in ("fit_clean", "fit_noisy", "true_noisy", "n_clean", "n_noisy")
    }
    scalars = {
        "train_loss": float(losses.mean()),
        "learning_rate": float(fetched[-1]["lr"]),
        **train_summaries(sums),
        **progress.update(step),
    }
    writer.write(step, scalars)
    return scalars


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Stage `pretrain`: noisy labels from `noise.load_or_make`, then `train`."""
    from nml_jax import data, noise

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


class Encoder:
    """A frozen pre-trained model that maps uint8 images to pre-logit features.

    Attributes:
      config: the pretrain config the checkpoint was trained with.
      step: the checkpoint's step.
      feature_dim: D, the width of the features.
      input_shape: (H, W, C) of the preprocessed images the model takes.
      fingerprint: a short hash of (workdir realpath, step, config) that changes with the checkpoint.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        variables: dict,
        step: int,
        workdir: str,
        input_shape: tuple[int, ...],
    ):
        self.config = config
        self.step = step
        self.input_shape = tuple(input_shape)
        num_classes = int(np.shape(variables["params"]["head"]["kernel"])[-1])
        self._model = build_model(config, num_classes)
        self._variables = jax.device_put(variables)
        self._apply = jax.jit(lambda v, x: self._model.apply(v, x, train=False)[1])
        self.feature_dim = int(np.shape(variables["params"]["head"]["kernel"])[0])
        blob = json.dumps(
            [os.path.realpath(workdir), step, config.to_dict()], sort_keys=True, default=repr
        )
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]

    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 [B, D] features of uint8 images [B, H, W, C], with the training eval preprocessing."""
        from nml_jax.data import pipeline

        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"Encoder.features expects uint8 images [B, H, W, C]; got {images.dtype} {images.shape}."
            )
        data = {"image": images, "label": np.zeros(len(images), np.int32)}
        out = []
        batches = pipeline.eval_batches(
            data,
            global_batch=batch_size,
            pp=self.config.input.pp_eval,
            process_index=0,  # Every process encodes all the images it is given.
            process_count=1,
        )
        for batch in batches:
            feats = np.asarray(self._apply(self._variables, batch["image"]), np.float32)
            out.append(feats[np.asarray(batch["mask"], bool)])
        if not out:
            return np.zeros((0, self.feature_dim), np.float32)
        return np.concatenate(out)


def restore_encoder(pretrain_workdir: str) -> Encoder:
    """The encoder of the newest checkpoint in `pretrain_workdir` (with its model.json).

    Raises:
      FileNotFoundError: the workdir has no model.json or no checkpoint.
    """
    path = os.path.join(pretrain_workdir, MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist; {pretrain_workdir!r} is not a pretrain workdir."
        )
    with open(path) as f:
        model = json.load(f)
    config = ml_collections.ConfigDict(model["config"])
    step, raw = checkpoint.restore_raw(pretrain_workdir)
    variables = {"params": raw["params"], "batch_stats": raw.get("batch_stats", {})}
    variables = jax.tree.map(np.asarray, variables)
    return Encoder(config, variables, step, pretrain_workdir, model["input_shape"])
