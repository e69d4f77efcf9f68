"""Many transfer heads in one jitted program: `fit_many` trains H heads of one method and settings at once.

A study trains hundreds of small heads (LP on 64 x D batches cannot fill even 2 CPU cores), so `fit_many` runs
`tuning.make_train_step` vmapped over a leading heads axis: per-head variables, optimizer state, seed (batch
order and view draws) and features. Heads may differ in their number of training examples N and of classes C
(tasks of one feature dimension): features and labels are zero-padded to the largest N, every head keeps its
own epoch permutation of its own N and its own ceil(N / B) steps per epoch (the extra steps of a shorter head
are skipped: its variables and optimizer state pass through unchanged) and its own cosine length; classifiers
are padded to the largest C with zero columns whose logits are masked to -inf (`tuning.mask_classes`), so they
take no probability, get no gradient and stay zero. Every head therefore takes the same steps as `tuning.fit`
with its seed; tests/test_many_heads.py checks the results against `fit` one by one.

Heads must share the method, the settings (all but the seed), the feature dimension D and the number of views
V. The online views mode (encoder in the loop) is not batched: `transfer.transfer_rows` fits those heads one
by one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nml_jax import parallel, tuning


@dataclasses.dataclass(frozen=True)
class HeadData:
    """One head to train: float32 [V, N, D] feature views, [N] integer labels in [0, num_classes), its seed."""

    train_views: Any
    train_labels: Any
    num_classes: int
    seed: int


def _checked(method: str, heads: Sequence[HeadData], config) -> list[tuple[np.ndarray, np.ndarray]]:
    """Host arrays (views, int32 labels) of every head after `fit`'s checks; ValueError when the heads cannot
    share a program (another V or D than the first head's)."""
    if not heads:
        raise ValueError("fit_many needs at least one head, got none.")
    arrays = []
    for i, head in enumerate(heads):
        views = np.asarray(head.train_views, np.float32)
        labels = np.asarray(head.train_labels)
        tuning.check_inputs(views, labels, head.num_classes)
        if not isinstance(head.seed, (int, np.integer)) or isinstance(head.seed, bool):
            raise ValueError(f"heads[{i}].seed={head.seed!r} is not valid; expected an int.")
        if method == "lp":
            views = views[:1]
        if arrays and (views.shape[0], views.shape[2]) != arrays[0][0].shape[::2]:
            raise ValueError(
                f"heads[{i}] has {views.shape[0]} views of dimension {views.shape[2]}, heads[0] "
                f"{arrays[0][0].shape[0]} of dimension {arrays[0][0].shape[2]}; heads trained in one program "
                "must share the number of views V and the feature dimension D."
            )
        arrays.append((views, labels.astype(np.int32)))
    tuning.check_top_k(method, config, arrays[0][0].shape[2])
    return arrays


def _pad_to(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return np.pad(array, widths)


def _is_classifier(path) -> bool:
    return any(getattr(key, "key", None) == "classifier" for key in path)


def _resize_classifier(variables: Any, num_classes: int) -> Any:
    """`variables` with the classifier's last (class) axis zero-padded or cut to `num_classes`."""

    def resize(path, leaf):
        if not _is_classifier(path):
            return leaf
        leaf = np.asarray(leaf)[..., :num_classes]
        return _pad_to(leaf, leaf.ndim - 1, num_classes)

    return jax.tree_util.tree_map_with_path(resize, variables)


def fit_many(
    method: str,
    heads: Sequence[HeadData],
    config: ml_collections.ConfigDict,
    *,
    mesh: Mesh | None = None,
) -> list[tuning.TrainedHead]:
    """Trains one `method` head per entry of `heads` in one jitted program; returns them in order.

    Each head is the one `tuning.fit(method, h.train_views, h.train_labels, config with seed h.seed,
    num_classes=h.num_classes, mesh=mesh)` trains (config.seed is not used). Raises ValueError/ConfigError on
    bad inputs or settings, FloatingPointError naming the head whose loss is not finite.
    """
    tuning.validate(method, config)
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_global_batch(config.batch_size, mesh)
    parallel.check_global_batch(config.eval_batch_size, mesh, "eval_batch_size")
    arrays = _checked(method, heads, config)
    num_views, _, dim = arrays[0][0].shape
    sizes = tuple(len(labels) for _, labels in arrays)
    classes = [head.num_classes for head in heads]
    padded_size = -(-max(sizes) // mesh.devices.size) * mesh.devices.size
    views = np.stack([_pad_to(v, 1, padded_size) for v, _ in arrays])
    labels = np.stack([_pad_to(y, 0, padded_size) for _, y in arrays])
    views_on_device = tuning.to_device(
        views, NamedSharding(mesh, P(None, None, parallel.DATA_AXIS))
    )
    labels_on_device = tuning.to_device(labels, NamedSharding(mesh, P(None, parallel.DATA_AXIS)))
    variables = [
        _resize_classifier(
            tuning.init_variables(tuning.make_head(method, config, c), dim, int(h.seed)),
            max(classes),
        )
        for h, c in zip(heads, classes)
    ]
    variables = jax.device_put(
        jax.tree.map(lambda *leaves: np.stack(leaves), *variables), parallel.replicated(mesh)
    )
    class_mask = np.arange(max(classes)) < np.asarray(classes)[:, None]
    train = heads_program(
        method,
        tuning.settings_key(config),
        max(classes),
        mesh,
        num_examples=sizes,
        num_views=num_views,
        masked_classes=not class_mask.all(),
    )
    variables, curves = train(
        variables,
        views_on_device,
        labels_on_device,
        jnp.asarray([int(h.seed) for h in heads], jnp.int32),
        jnp.asarray(class_mask),
    )
    return _split(method, config, mesh, heads, variables, curves, sizes)


def _split(method, config, mesh, heads, variables, curves, sizes) -> list[tuning.TrainedHead]:
    """One TrainedHead per head from the stacked results: its slice, its classifier cut to its classes."""
    variables = parallel.to_host(variables)
    curves = {name: np.asarray(value) for name, value in parallel.to_host(curves).items()}
    trained = []
    for h, head in enumerate(heads):
        own = {name: value[:, h] for name, value in curves.items()}
        bad = np.flatnonzero(~np.isfinite(own["loss"]))
        if bad.size:
            raise FloatingPointError(
                f"{method} training loss of head {h} (seed {head.seed}) is not finite from epoch "
                f"{bad[0]} on."
            )
        own_variables = _resize_classifier(
            jax.tree.map(lambda x, h=h: x[h], variables), head.num_classes
        )
        trained.append(
            tuning.TrainedHead(
                method=method,
                model=tuning.make_head(method, config, head.num_classes),
                variables=jax.device_put(own_variables, parallel.replicated(mesh)),
                loss_curve=own["loss"],
                curves=own,
                num_steps=config.epochs * tuning.steps_per_epoch(sizes[h], config.batch_size),
                mesh=mesh,
                eval_batch_size=config.eval_batch_size,
            )
        )
    return trained


def all_epoch_batches(
    seeds: jax.Array, epoch: jax.Array, num_examples: tuple[int, ...], batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """Indices and mask [H, S, B] of every head's epoch (`tuning.epoch_batches` of its seed and own N), padded
    to S = the most steps of any head with fully masked steps."""
    steps = [tuning.steps_per_epoch(n, batch_size) for n in num_examples]
    most = max(steps)
    indices, masks = [None] * len(num_examples), [None] * len(num_examples)
    for size in sorted(set(num_examples)):
        members = [h for h, n in enumerate(num_examples) if n == size]
        group_indices, group_mask = jax.vmap(
            lambda seed, n=size: tuning.epoch_batches(seed, epoch, n, batch_size)
        )(seeds[np.asarray(members)])
        extra = ((0, 0), (0, most - group_indices.shape[1]), (0, 0))
        group_indices, group_mask = jnp.pad(group_indices, extra), jnp.pad(group_mask, extra)
        for position, h in enumerate(members):
            indices[h], masks[h] = group_indices[position], group_mask[position]
    return jnp.stack(indices), jnp.stack(masks)


@functools.lru_cache(maxsize=64)
def heads_program(
    method: str,
    settings: tuple,
    num_classes: int,
    mesh: Mesh,
    *,
    num_examples: tuple[int, ...],
    num_views: int,
    masked_classes: bool,
) -> Any:
    """The jitted program (stacked variables, views [H, V, N, D], labels [H, N], seeds [H], class mask
    [H, C]) -> (stacked final variables, per-epoch mean of each term [epochs, H]).

    Cached by everything but the seeds and the data, so another group of heads of the same sizes (the next
    noise level or seed of a study) reuses the compiled program.
    """
    config = ml_collections.ConfigDict(dict(settings))
    model = tuning.make_head(method, config, num_classes)
    epochs, batch_size = config.epochs, config.batch_size
    steps = np.asarray([tuning.steps_per_epoch(n, batch_size) for n in num_examples], np.int32)
    ragged = len(set(steps.tolist())) > 1
    optimizer = tuning.make_optimizer(config, 1)  # The state's shape does not depend on T.
    train_step = tuning.make_train_step(method, config, model, mesh, num_views=num_views)

    def head_step(carry, batch, views, labels, seed, total_steps, class_mask):
        indices, mask, step, active = batch
        new = train_step(
            carry,
            (indices, mask, step),
            views,
            labels,
            seed,
            (),
            total_steps,
            class_mask if masked_classes else None,
        )
        if not ragged:
            return new
        # A shorter head's extra steps leave its variables and optimizer state as they were.
        keep = jax.tree.map(lambda a, b: jnp.where(active, a, b), new[0], carry)
        return keep, new[1]

    def train(variables, views, labels, seeds, class_mask):
        all_steps = jax.vmap(head_step)
        num_steps = jnp.asarray(steps)
        totals = epochs * num_steps

        def step_fn(carry, batch):
            return all_steps(carry, batch, views, labels, seeds, totals, class_mask)

        def epoch_fn(carry, epoch):
            indices, mask = all_epoch_batches(seeds, epoch, num_examples, batch_size)
            positions = jnp.arange(indices.shape[1])
            global_steps = epoch * num_steps[:, None] + positions
            active = positions < num_steps[:, None]
            batches = jax.tree.map(
                lambda x: jnp.swapaxes(x, 0, 1), (indices, mask, global_steps, active)
            )
            carry, aux = jax.lax.scan(step_fn, carry, batches)
            if not ragged:
                return carry, jax.tree.map(lambda x: jnp.mean(x, axis=0), aux)
            return carry, jax.tree.map(
                lambda x: jnp.sum(jnp.where(active.T, x, 0.0), axis=0) / num_steps, aux
            )

        carry = (variables, jax.vmap(optimizer.init)(variables["params"]))
        (variables, _), curves = jax.lax.scan(epoch_fn, carry, jnp.arange(epochs))
        return variables, curves

    replicated = parallel.replicated(mesh)
    return jax.jit(train, out_shardings=(replicated, replicated))
