"""Fitting LP, MLP and NMTune heads on device-resident cached features (the transfer stage calls `fit`).

`fit` puts the features on the mesh once (rows sharded over `data`) and runs the whole training, all epochs,
inside one jitted pair of nested `lax.scan`s; nothing leaves the device until the end. The recipe is the
official NMTune one: AdamW (betas 0.9/0.999, eps 1e-8, decoupled weight decay on every parameter), a per-step
cosine decay to 0 without warmup, batch 64, 30 epochs (`defaults.head`).

Batches: each epoch draws a permutation from (seed, epoch) and cuts it into ceil(N / B) batches of B rows;
the last batch is padded with masked rows, so every example is used once per epoch exactly as PyTorch's
`drop_last=False` does: every loss term and the BatchNorm statistics see only the real rows of a short batch.

Views: `train_views` is a [V, N, D] bank of V views of every example, view 0 the un-augmented features. NMTune
and the MLP baseline take two views per example and step, drawn from (seed, step): two different augmented views
(1..V-1) when V >= 3; views 0 and 1 when V == 2; view 0 twice when V == 1. In the online mode (`online`, see
features.OnlineViews) the two views are instead two fresh augmentations of the batch (augment.py) run through
the frozen encoder inside the jitted step, the official recipe. LP trains on view 0 only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nml_jax import augment, config_lib, defaults, losses, parallel
from nml_jax.models import heads

OPTIMIZERS = ("adamw",)
# Independent random streams derived from config.seed.
_INIT_STREAM, _SHUFFLE_STREAM, _VIEW_STREAM = 0, 1, 2


def validate(method: str, config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid setting of a `method` head config (defaults.head)."""
    config_lib.check_choice("method", method, defaults.METHODS)
    config_lib.check_choice("optimizer", config.optimizer, OPTIMIZERS)
    config_lib.check_range("lr", config.lr, 0.0, math.inf, low_open=True, high_open=True)
    config_lib.check_range("weight_decay", config.weight_decay, 0.0, math.inf, high_open=True)
    for name in ("batch_size", "epochs", "eval_batch_size"):
        config_lib.check_positive_int(name, config[name])
    if not isinstance(config.seed, int) or isinstance(config.seed, bool):
        raise config_lib.ConfigError(
            f"config.{config_lib.key_name('seed')}={config.seed!r} is not valid; expected an int."
        )
    if method == "lp":
        return
    config_lib.check_range(
        "mlp_ratio", config.mlp_ratio, 0.0, math.inf, low_open=True, high_open=True
    )
    config_lib.check_positive_int("depth", config.depth)
    config_lib.check_choice("residual", config.residual, (True, False))
    config_lib.check_range("scale_init", config.scale_init, -math.inf, math.inf)
    if method == "nmtune":
        for name in ("consistency_weight", "covariance_weight", "svd_weight"):
            config_lib.check_range(name, config[name], 0.0, math.inf, high_open=True)
        config_lib.check_positive_int("svd_top_k", config.svd_top_k)


def make_head(method: str, config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """LinearHead for 'lp', NMTuneHead (from the config's head settings) for 'mlp' and 'nmtune'."""
    if method == "lp":
        return heads.LinearHead(num_classes)
    return heads.NMTuneHead(
        num_classes,
        mlp_ratio=config.mlp_ratio,
        depth=config.depth,
        residual=config.residual,
        scale_init=config.scale_init,
    )


def init_variables(model: nn.Module, dim: int, seed: int) -> dict[str, Any]:
    """The head's initial variables (`params`, and `batch_stats` for the MLP heads) from `seed`."""
    key = jax.random.fold_in(jax.random.key(seed), _INIT_STREAM)
    return dict(model.init(key, jnp.zeros((2, dim), jnp.float32), train=False))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """ceil(N / B): the last, short batch is padded with masked rows."""
    return -(-num_examples // batch_size)


def epoch_batches(
    seed: int, epoch: jax.Array | int, num_examples: int, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """Example indices [S, B] and validity mask [S, B] of one epoch, shuffled from (seed, epoch).

    The permutation of range(N) is cut into S = ceil(N / B) batches; the S * B - N padding slots point at
    example 0 and are masked out.
    """
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SHUFFLE_STREAM), epoch)
    num_steps = steps_per_epoch(num_examples, batch_size)
    padding = num_steps * batch_size - num_examples
    order = jnp.concatenate(
        [jax.random.permutation(key, num_examples), jnp.zeros(padding, jnp.int32)]
    ).astype(jnp.int32)
    mask = jnp.arange(num_steps * batch_size) < num_examples
    return order.reshape(num_steps, batch_size), mask.reshape(num_steps, batch_size)


def draw_views(
    seed: int, step: jax.Array | int, num_views: int, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """Two view indices [B] per example for global `step`, from (seed, step).

    V >= 3: two different augmented views, a ~ U{0..A-1}, b = (a + U{1..A-1}) mod A, plus 1 (A = V - 1);
    V == 2: views 0 and 1; V == 1: view 0 twice.
    """
    if num_views <= 2:
        zeros = jnp.zeros(batch_size, jnp.int32)
        return zeros, zeros + (num_views - 1)
    augmented = num_views - 1
    key = _view_key(seed, step)
    key_a, key_b = jax.random.split(key)
    first = jax.random.randint(key_a, (batch_size,), 0, augmented)
    offset = jax.random.randint(key_b, (batch_size,), 1, augmented)
    return first + 1, (first + offset) % augmented + 1


def _view_key(seed, step) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _VIEW_STREAM), step)


def online_views(
    online: tuple, data: tuple, seed, step, indices: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Features [B, D] of two fresh augmentations of examples `indices`, through the frozen encoder.

    `online` = (apply_fn, scale, flip) (static); `data` = (inputs [N, H, W, C], encoder variables). The view
    of example i at `step` depends only on (seed, step, i, draw).
    """
    apply_fn, scale, flip = online
    inputs, encoder_variables = data
    x = inputs[indices]
    base = _view_key(seed, step)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
    views = [
        augment.augment(jax.vmap(lambda k, d=draw: jax.random.fold_in(k, d))(keys), x, scale, flip)
        for draw in (0, 1)
    ]
    features = jax.lax.stop_gradient(apply_fn(encoder_variables, jnp.concatenate(views)))
    return features[: len(indices)], features[len(indices) :]


# A loss function maps (params, batch_stats, f_view1, f_view2, labels, mask, class_mask=None) to
# (loss, (aux terms, new batch_stats)).
LossFn = Callable[..., tuple[jax.Array, tuple[dict[str, jax.Array], Any]]]


def mask_classes(logits: jax.Array, class_mask: jax.Array | None) -> jax.Array:
    """Logits with the columns of padded classes (class_mask False) set to -inf, so that they take no
    probability and get no gradient: a head padded to more classes trains as the unpadded one."""
    if class_mask is None:
        return logits
    return jnp.where(class_mask, logits, -jnp.inf)


def make_loss_fn(method: str, model: nn.Module, config: ml_collections.ConfigDict) -> LossFn:
    """The training objective of `method` on one batch of B examples in two views.

    lp: CE of view 1. mlp: CE on both views (B rows each, one BatchNorm batch of 2B). nmtune: `nmtune_loss`.
    `class_mask` [C] (optional) marks the real classes of a head padded to C classes (`mask_classes`).
    """

    def lp_loss(params, batch_stats, f1, f2, labels, mask, class_mask=None):
        del f2
        logits = mask_classes(model.apply({"params": params}, f1), class_mask)
        ce = losses.cross_entropy(logits, labels, mask)
        return ce, ({"ce": ce, "loss": ce}, batch_stats)

    def two_view_loss(params, batch_stats, f1, f2, labels, mask, class_mask=None):
        both_mask = jnp.concatenate([mask, mask])
        (logits, z), updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            jnp.concatenate([f1, f2]),
            train=True,
            mask=both_mask,
            mutable=["batch_stats"],
        )
        logits = mask_classes(logits, class_mask)
        if method == "mlp":
            ce = losses.cross_entropy(logits, jnp.concatenate([labels, labels]), both_mask)
            aux = {"ce": ce, "loss": ce}
        else:
            _, aux = losses.nmtune_loss(
                logits,
                z,
                f1,
                labels,
                mask,
                consistency_weight=config.consistency_weight,
                covariance_weight=config.covariance_weight,
                svd_weight=config.svd_weight,
                k=config.svd_top_k,
            )
        return aux["loss"], (aux, updates["batch_stats"])

    return lp_loss if method == "lp" else two_view_loss


def cosine_schedule(lr: float, total_steps: int | jax.Array) -> optax.Schedule:
    """lr_t = lr * (1 + cos(pi * min(t, T) / T)) / 2 (the official cosine_lr, no warmup).

    T may be a traced array: heads trained together (many_heads.py) each decay over their own number of steps.
    The float32 operations are those XLA runs for `optax.cosine_decay_schedule(lr, T)` once it has folded the
    constants (t * (pi * (1 / T)), then (cos + 1) * (lr / 2)), so a compile-time T gives optax's values and a
    traced T the same values bit for bit (tests/test_many_heads.py checks both).
    """

    def schedule(count):
        total = jnp.asarray(total_steps, jnp.float32)
        step = jnp.minimum(jnp.asarray(count).astype(jnp.float32), total)
        angle = step * (jnp.float32(math.pi) * (1.0 / total))
        return (jnp.cos(angle) + 1.0) * (0.5 * lr)

    return schedule


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int | jax.Array
) -> optax.GradientTransformation:
    """AdamW with lr_t = lr * (1 + cos(pi * t / T)) / 2 per step t < T, no warmup (`cosine_schedule`)."""
    return optax.adamw(cosine_schedule(config.lr, total_steps), weight_decay=config.weight_decay)


@dataclasses.dataclass(frozen=True)
class TrainedHead:
    """A fitted head and what its training recorded.

    Attributes:
      method: 'lp', 'mlp' or 'nmtune'.
      model: the Flax head.
      variables: its final variables, replicated on `mesh`.
      loss_curve: [epochs] mean over each epoch's steps of the training loss.
      curves: [epochs] curve of every loss term (`ce`, `loss`, and NMTune's `consistency`, `covariance`,
        `dominant_sv`).
      num_steps: optimizer steps taken.
      mesh: the mesh the head lives on.
      eval_batch_size: batch size `predict` uses by default.
    """

    method: str
    model: nn.Module
    variables: Any
    loss_curve: np.ndarray
    curves: dict[str, np.ndarray]
    num_steps: int
    mesh: Mesh
    eval_batch_size: int


def _pad_rows(array: np.ndarray, axis: int, multiple: int) -> np.ndarray:
    """Zero-pads `axis` up to a multiple of `multiple`."""
    extra = -array.shape[axis] % multiple
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    return np.pad(array, widths)


def to_device(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def check_inputs(views: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    """Raises ValueError naming what is wrong with [V, N, D] views and [N] labels of `num_classes` classes."""
    if views.ndim != 3:
        raise ValueError(
            f"train_views must be [V, N, D], got shape {views.shape}; wrap one view as features[None]."
        )
    if labels.shape != (views.shape[1],):
        raise ValueError(f"train_labels must have shape ({views.shape[1]},), got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"train_labels must be integers, got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"train_labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]."
        )
    if not np.all(np.isfinite(views)):
        raise ValueError("train_views contains NaN or inf.")


def check_top_k(method: str, config: ml_collections.ConfigDict, dim: int) -> None:
    """NMTune's top-k singular values need k <= min(2B, D), the rank bound of a 2B x D batch."""
    if method == "nmtune" and config.svd_top_k > min(2 * config.batch_size, dim):
        raise config_lib.ConfigError(
            f"config.svd_top_k={config.svd_top_k} exceeds min(2 * batch_size, feature dim) = "
            f"{min(2 * config.batch_size, dim)}."
        )


def fit(
    method: str,
    train_views: Any,
    train_labels: Any,
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    mesh: Mesh | None = None,
    online=None,
) -> TrainedHead:
    """Trains a `method` head on float32 [V, N, D] feature views and [N] integer labels.

    With `online` (a features.OnlineViews), MLP and NMTune draw their two views per step through the encoder
    instead of from the bank. Every process passes the same full arrays. Deterministic: the same inputs and
    config.seed give the same numbers. Raises ValueError/ConfigError on bad inputs or settings,
    FloatingPointError on a non-finite loss.
    """
    validate(method, config)
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_global_batch(config.batch_size, mesh)
    parallel.check_global_batch(config.eval_batch_size, mesh, "eval_batch_size")
    views = np.asarray(train_views, np.float32)
    labels = np.asarray(train_labels)
    check_inputs(views, labels, num_classes)
    num_views, num_examples, dim = views.shape
    check_top_k(method, config, dim)
    if method == "lp":
        views, num_views, online = views[:1], 1, None

    num_devices = mesh.devices.size
    views_on_device = to_device(
        _pad_rows(views, 1, num_devices), NamedSharding(mesh, P(None, parallel.DATA_AXIS))
    )
    labels_on_device = to_device(
        _pad_rows(labels.astype(np.int32), 0, num_devices), parallel.data_sharding(mesh)
    )

    model = make_head(method, config, num_classes)
    variables = jax.device_put(init_variables(model, dim, config.seed), parallel.replicated(mesh))
    num_steps = steps_per_epoch(num_examples, config.batch_size)
    online_spec, online_data = _online_on_device(online, mesh)
    train = train_program(
        method,
        settings_key(config),
        num_classes,
        mesh,
        num_examples=num_examples,
        num_views=num_views,
        online=online_spec,
    )
    variables, curves = train(
        variables,
        views_on_device,
        labels_on_device,
        jnp.asarray(config.seed, jnp.int32),
        online_data,
    )
    curves = {name: np.asarray(value) for name, value in parallel.to_host(curves).items()}
    bad = np.flatnonzero(~np.isfinite(curves["loss"]))
    if bad.size:
        raise FloatingPointError(f"{method} training loss is not finite from epoch {bad[0]} on.")
    return TrainedHead(
        method=method,
        model=model,
        variables=variables,
        loss_curve=curves["loss"],
        curves=curves,
        num_steps=config.epochs * num_steps,
        mesh=mesh,
        eval_batch_size=config.eval_batch_size,
    )


def _online_on_device(online, mesh: Mesh) -> tuple[tuple | None, tuple]:
    """(static spec, device data) of the online views: (apply_fn, scale, flip) and (sharded inputs, encoder)."""
    if online is None:
        return None, ()
    inputs = _pad_rows(np.asarray(online.inputs, np.float32), 0, mesh.devices.size)
    data = (
        to_device(inputs, NamedSharding(mesh, P(parallel.DATA_AXIS))),
        jax.device_put(online.variables, parallel.replicated(mesh)),
    )
    return (online.apply_fn, tuple(online.scale), bool(online.flip)), data


def settings_key(config: ml_collections.ConfigDict) -> tuple:
    """The config as a hashable key for the compiled-program cache; the seed is a runtime input instead."""
    return tuple(sorted((k, v) for k, v in config.to_dict().items() if k != "seed"))


def make_train_step(
    method: str,
    config: ml_collections.ConfigDict,
    model: nn.Module,
    mesh: Mesh,
    *,
    num_views: int,
    online: tuple | None = None,
) -> Callable[..., tuple[tuple[Any, Any], dict[str, jax.Array]]]:
    """One optimizer step of one head: step(carry, batch, views, labels, seed, online_data, total_steps,
    class_mask=None) -> (carry, aux terms), with carry = (variables, optimizer state) and batch = (indices [B],
    mask [B], global step).

    `total_steps` (the cosine schedule's T) and `class_mask` may be traced, so `fit` and `many_heads.fit_many`
    (which vmaps this step over heads of different sizes) run the same step.
    """
    loss_fn = make_loss_fn(method, model, config)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    batch_size = config.batch_size
    batch_sharding = parallel.data_sharding(mesh)

    def train_step(carry, batch, views, labels, seed, online_data, total_steps, class_mask=None):
        variables, opt_state = carry
        indices, mask, step = batch
        if online is None:
            first, second = draw_views(seed, step, num_views, batch_size)
            f1, f2 = views[first, indices], views[second, indices]
        else:
            f1, f2 = online_views(online, online_data, seed, step, indices)
        f1, f2, y, mask = jax.lax.with_sharding_constraint(
            (f1, f2, labels[indices], mask), batch_sharding
        )
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        (_, (aux, batch_stats)), grads = grad_fn(params, batch_stats, f1, f2, y, mask, class_mask)
        optimizer = make_optimizer(config, total_steps)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        variables = {**variables, "params": optax.apply_updates(params, updates)}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        return (variables, opt_state), aux

    return train_step


@functools.lru_cache(maxsize=64)
def train_program(
    method: str,
    settings: tuple,
    num_classes: int,
    mesh: Mesh,
    *,
    num_examples: int,
    num_views: int,
    online: tuple | None = None,
) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """The jitted program (variables, views, labels, seed, online data) -> (final variables, per-epoch mean of
    each term); `online` = (encoder apply_fn, scale, flip) draws the views per step (`online_views`).

    Cached by everything but the seed, so fits of the same shapes and settings (another seed, another noise
    level in a study) reuse one compiled program.
    """
    config = ml_collections.ConfigDict(dict(settings))
    model = make_head(method, config, num_classes)
    epochs, batch_size = config.epochs, config.batch_size
    num_steps = steps_per_epoch(num_examples, batch_size)
    optimizer = make_optimizer(config, epochs * num_steps)
    train_step = make_train_step(method, config, model, mesh, num_views=num_views, online=online)

    def train(variables, views, labels, seed, online_data):
        step_fn = functools.partial(
            train_step,
            views=views,
            labels=labels,
            seed=seed,
            online_data=online_data,
            total_steps=epochs * num_steps,
        )

        def epoch_fn(carry, epoch):
            indices, mask = epoch_batches(seed, epoch, num_examples, batch_size)
            steps = epoch * num_steps + jnp.arange(num_steps)
            carry, aux = jax.lax.scan(step_fn, carry, (indices, mask, steps))
            return carry, jax.tree.map(jnp.mean, aux)

        carry = (variables, optimizer.init(variables["params"]))
        (variables, _), curves = jax.lax.scan(epoch_fn, carry, jnp.arange(epochs))
        return variables, curves

    replicated = parallel.replicated(mesh)
    # The online views run the (conv-net) encoder every step: compile as its own programs are.
    options = parallel.conv_net_options() if online is not None else {}
    return jax.jit(train, out_shardings=(replicated, replicated), compiler_options=options)


def logits_fn(model: nn.Module, variables: Any, features: jax.Array) -> jax.Array:
    """Eval-mode logits of either head (BatchNorm on running statistics)."""
    out = model.apply(variables, features, train=False)
    return out[0] if isinstance(out, tuple) else out


@functools.partial(jax.jit, static_argnums=0)
def _predict_batches(model: nn.Module, variables: Any, batches: jax.Array) -> jax.Array:
    return jax.lax.map(lambda x: logits_fn(model, variables, x), batches)


def predict(head: TrainedHead, features: Any, *, batch_size: int | None = None) -> np.ndarray:
    """Logits [N, C] for float32 [N, D] features, in eval mode, in fixed-size padded batches (exact)."""
    batch_size = head.eval_batch_size if batch_size is None else batch_size
    parallel.check_global_batch(batch_size, head.mesh, "eval_batch_size")
    features = np.asarray(features, np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}.")
    num_examples, dim = features.shape
    batches = _pad_rows(features, 0, batch_size).reshape(-1, batch_size, dim)
    sharding = NamedSharding(head.mesh, P(None, parallel.DATA_AXIS))
    logits = _predict_batches(head.model, head.variables, to_device(batches, sharding))
    logits = np.asarray(parallel.to_host(logits))
    return logits.reshape(-1, logits.shape[-1])[:num_examples]


def accuracy(head: TrainedHead, features: Any, labels: Any, classes: Any = None) -> float:
    """Fraction of `labels` [N] matched by the argmax of `predict(head, features)`, taken over the logits of
    `classes` only when given (label indices; ImageNet-A/R: their 200 classes)."""
    labels = np.asarray(labels)
    logits = predict(head, features)
    if classes is not None:
        classes = np.asarray(classes, np.int64)
        logits = np.where(np.isin(np.arange(logits.shape[-1]), classes), logits, -np.inf)
    predictions = logits.argmax(axis=-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels must have shape {predictions.shape}, got {labels.shape}.")
    return float(np.mean(predictions == labels))
