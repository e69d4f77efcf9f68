"""The training loop shared by supervised (pretrain.py) and contrastive (clip_pretrain.py) pre-training.

A trainer supplies its model, loss and step, input pipeline and evaluation as a `Recipe`; this module owns
everything else: the optimizer and its warmup + cosine schedule, the train state (initialised from `eval_shape`
with explicit shardings: replicated, or FSDP), start/resume (own workdir > `config.init_from` > scratch), the
jitted step with donated state, checkpoint, logging and evaluation cadence, metrics/progress/ETA, and the
summary. The data position is the step: input pipelines are pure functions of (seed, step).

A run is finished when its summary and its final checkpoint both exist; the summary is written first, so a run
killed in between resumes from the previous checkpoint and ends with both (the same numbers). A resumed run
ends where an uninterrupted one ends; its logged train loss too when `ckpt_every_steps` is a multiple of
`log_every_steps` (the defaults), else the first window after the resume averages only the steps run since.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct

from nml_jax import checkpoint, config_lib, files, metrics, parallel

OPTIMIZERS = ("sgd", "adamw", "lamb")
# What every training run leaves in its workdir, besides its model card and summary.
OUTPUTS = (
    checkpoint.CHECKPOINT_DIR,
    checkpoint.CORRUPT_DIR,
    metrics.METRICS_FILE,
    metrics.TENSORBOARD_DIR,
)


@struct.dataclass
class TrainState:
    """Everything a resumed run needs; the data position is `step` (the pipeline is (seed, step))."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid key of the settings every trainer shares: batch sizes,
    duration, warmup, periodic work and the optimizer."""
    config_lib.check_positive_int("input.batch_size", config.input.batch_size)
    config_lib.check_positive_int("input.eval_batch_size", config.input.eval_batch_size)
    if config.get("total_steps") is None and config.get("total_epochs") is None:
        raise config_lib.ConfigError("Set config.total_steps or config.total_epochs.")
    if config.get("total_steps") is not None:  # Steps, when given, take precedence over epochs.
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
    else:
        make = optax.adamw if opt.name == "adamw" else optax.lamb
        parts.append(
            make(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask)
        )
    return optax.chain(*parts)


def schedule_steps(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int, int]:
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


def create_state(model, tx, example_inputs: tuple, rng: jax.Array, **init_kwargs) -> TrainState:
    """A fresh TrainState; `rng` seeds the parameters and, folded with the step, dropout.

    `example_inputs` are batch-of-one zero arrays of every input `model.init` takes.
    """
    init_rng, train_rng = jax.random.split(rng)
    variables = model.init(init_rng, *example_inputs, **init_kwargs)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=train_rng,
    )


def start_state(config, workdir: str, mesh, create_fn):
    """The train state to start from, with its checkpointer and shardings.

    `create_fn(rng)` builds a fresh state; it is `eval_shape`d to derive the shardings (replicated, or FSDP)
    and materialised under `jit` with those out_shardings only when nothing can be restored. Resume order:
    own workdir > `config.init_from` > scratch. Returns (checkpointer, start_step, state, shardings).
    """
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(create_fn, rng)
    shardings = parallel.param_shardings(abstract, mesh, fsdp=config.get("fsdp", False))
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    restored = ckpt.restore(target)
    if restored is not None:
        logging.info("Resuming from step %d in %s.", restored[0], ckpt.directory)
        return ckpt, restored[0], restored[1], shardings
    state = jax.jit(create_fn, out_shardings=shardings)(rng)
    if config.get("init_from"):
        state = _init_from(config.init_from, state, abstract, shardings)
    return ckpt, 0, state, shardings


def _init_from(source: str, state: TrainState, abstract, shardings) -> TrainState:
    """`state` with the params and batch statistics of the newest checkpoint in `source`."""
    step, raw = checkpoint.restore_raw(source)
    params = _match(raw["params"], abstract.params, "params", source)
    batch_stats = _match(raw.get("batch_stats", {}), abstract.batch_stats, "batch_stats", source)
    logging.info("Initialised params from %s (step %d).", source, step)
    return state.replace(
        params=jax.device_put(params, shardings.params),
        batch_stats=jax.device_put(batch_stats, shardings.batch_stats),
    )


def _match(loaded: Any, abstract: Any, name: str, source: str) -> Any:
    """Checks `loaded` has the structure and shapes of `abstract`; raises a ConfigError otherwise."""
    want = jax.tree.map(lambda a: tuple(a.shape), abstract)
    got = jax.tree.map(lambda a: tuple(np.shape(a)), loaded)
    if want != got:
        raise config_lib.ConfigError(
            f"config.init_from={source!r}: its {name} do not fit this model "
            f"(expected shapes {want}, found {got})."
        )
    return loaded


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a trainer supplies to `train`.

    Attributes:
      name: what the logs call the run.
      create_state: rng -> a fresh TrainState.
      train_step: (state, global batch) -> (state, metrics); metrics hold `loss` and `lr`, and counts that are
        summed between logs.
      batches: start_step -> iterator of this process's batches from that step on.
      rates: (summed counts, last step's metrics) -> the trainer's own logged scalars.
      evaluate: state -> scalars, run every `config.eval_every_steps` and at the end (None: never).
      finish: state -> scalars, run once after the last step (e.g. zero-shot accuracy; None: nothing).
      summary_file: the finished run's summary, in the workdir.
      compiler_options: XLA options of the jitted train step (`parallel.conv_net_options(train=True)` for conv
        nets).
    """

    name: str
    create_state: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    batches: Callable[[int], Iterator[dict]]
    rates: Callable[[dict[str, float], dict[str, float]], dict[str, float]]
    summary_file: str
    evaluate: Callable[[TrainState], dict[str, float]] | None = None
    finish: Callable[[TrainState], dict[str, float]] | None = None
    compiler_options: dict[str, str] = dataclasses.field(default_factory=dict)


def log_train(writer, progress, step: int, pending: list[dict], rates) -> dict[str, float]:
    """Fetches the metrics of the steps since the last log, checks the loss and writes them."""
    fetched = jax.device_get(pending)
    losses = np.array([m["loss"] for m in fetched])
    bad = metrics.first_non_finite(losses)
    if bad is not None:
        metrics.check_finite(step - len(losses) + 1 + bad, "Training loss", float(losses[bad]))
    sums = {k: float(sum(m[k] for m in fetched)) for k in fetched[-1] if k not in ("loss", "lr")}
    scalars = {
        "train_loss": float(losses.mean()),
        "learning_rate": float(fetched[-1]["lr"]),
        **rates(sums, fetched[-1]),
        **progress.update(step),
    }
    writer.write(step, scalars)
    return scalars


def _finished(summary_path: str, state, start_step: int, total_steps: int) -> dict | None:
    """What `train` returns for a run that already finished (its saved summary), or None to train on."""
    summary = files.read_json(summary_path) if start_step >= total_steps else None
    if summary is None or summary.get("step") != total_steps:
        return None
    logging.info("The run in %s is finished (step %d).", os.path.dirname(summary_path), start_step)
    return {
        "state": state,
        "step": start_step,
        "summary": summary,
        "history": [],
        "resumed_from": start_step,
        "trained_steps": 0,
    }


def train(config, workdir: str, mesh, recipe: Recipe, total_steps: int) -> dict[str, Any]:
    """Runs `recipe` from where `workdir` stands to `total_steps`.

    Returns:
      {'state': TrainState, 'step': int, 'summary': dict of final numbers, 'history': logged records,
       'resumed_from': step restored from the workdir (0 when none), 'trained_steps': steps run now}.
    """
    start_time = time.perf_counter()
    ckpt, start_step, state, shardings = start_state(config, workdir, mesh, recipe.create_state)
    summary_path = os.path.join(workdir, recipe.summary_file)
    finished = _finished(summary_path, state, start_step, total_steps)
    if finished:
        ckpt.close()
        return finished
    train_step = jax.jit(
        recipe.train_step,
        in_shardings=(shardings, parallel.data_sharding(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=0,
        compiler_options=recipe.compiler_options,
    )
    writer = metrics.MetricWriter(
        workdir, enabled=parallel.is_main_process(), resume_step=start_step
    )
    progress = metrics.Progress(total_steps, config.input.batch_size, first_step=start_step)
    batches = recipe.batches(start_step)
    logging.info(
        "Training %s for %d steps (from %d), %d examples/step on %d devices.",
        recipe.name,
        total_steps,
        start_step,
        config.input.batch_size,
        mesh.devices.size,
    )
    pending: list[dict[str, jax.Array]] = []
    summary: dict[str, float] = {}
    for step in range(start_step + 1, total_steps + 1):
        state, step_metrics = train_step(state, parallel.to_global(next(batches), mesh))
        pending.append(step_metrics)
        if config_lib.itstime(step, config.log_every_steps, total_steps):
            summary.update(log_train(writer, progress, step, pending, recipe.rates))
            pending = []
        if recipe.evaluate and config_lib.itstime(
            step, config.get("eval_every_steps"), total_steps
        ):
            results = recipe.evaluate(state)
            writer.write(step, results)
            summary.update(results)
        if step < total_steps and config_lib.itstime(step, config.ckpt_every_steps, total_steps):
            ckpt.save(step, state)
    if start_step == total_steps and recipe.evaluate:  # The final checkpoint without its summary.
        summary.update(recipe.evaluate(state))
    if recipe.finish:
        results = recipe.finish(state)
        writer.write(total_steps, results)
        summary.update(results)
    writer.close()
    summary.update(step=total_steps, wall_seconds=time.perf_counter() - start_time)
    if parallel.is_main_process():
        files.write_json(summary_path, summary)
    if start_step < total_steps:
        ckpt.save(total_steps, state)
    ckpt.close()
    return {
        "state": state,
        "step": total_steps,
        "summary": summary,
        "history": writer.history,
        "resumed_from": start_step,
        "trained_steps": total_steps - start_step,
    }
