"""Side by side with plain PyTorch (CPU, eager), written for this benchmark, in the same run.

(a) The small CNN training step (conv32-pool-conv64-pool-dense128-logits, SGD momentum 0.9, lr 0.05, coupled
    weight decay 5e-4, batch 64, 28x28x1): examples/s of `pretrain.make_train_step` (jitted) vs PyTorch.

(b) NMTune with the paper's augmented views: the wall time of 30 epochs on N examples (default N = 2,000 and
    5,000), feature passes included, for two frozen encoders with random-init weights (the times do not depend
    on the weights): the small CNN (28x28x1, D = 128) and ResNet-18 with the small stem (32x32x3, D = 512;
    `models.get('resnet18', stem='small')`, and `torch_models.TorchResNet(18, stem='small')`, the same
    architecture). Every way trains the same NMTune head (Linear D->4D, BatchNorm, ReLU, Linear 4D->D, residual scale, classifier;
    CE on both views + consistency + covariance - top-5 singular-value share), AdamW lr 1e-3, wd 1e-4,
    batch 64, on two augmented views of each example: RandomResizedCrop to the input size, scale (0.8, 1.0),
    ratio (3/4, 4/3), and a horizontal flip with p = 1/2 (the supervised recipe, augment.RECIPES).
    - torch_official, the paper's step: every step draws two independent augmented views of the batch
      (`torch_augment`: a box per image drawn as torchvision's `RandomResizedCrop.get_params` draws it, the
      crop, `F.interpolate(bilinear, align_corners=False, antialias=True)` back to size (torchvision's tensor
      path), the flip), runs the frozen encoder (eval mode, no_grad) on the 2B images and trains the head on
      the 2B features. The augmentation runs inside the timed loop (the official code pays for it too, in
      DataLoader workers that share the same cores). No feature pass.
    - torch_cached: the plain view and K = 4 augmented views (as our bank caches them) encoded once, then the
      head on two different cached augmented views per example and step (drawn as `tuning.draw_views` does).
    - ours_bank: the plain pass (`ImageEncoder.embed`) and K = 4 augmented passes (`features.augmented_view`),
      then `tuning.fit` on the [1 + K, N, D] bank (one jitted program, all epochs in a `lax.scan`).
    - ours_online: `tuning.fit` with `features.OnlineViews`: two fresh augmentations of the batch through the
      frozen encoder inside the jitted step. The plain pass is counted too (the features stage computes it in
      this mode as well, for LP and for `fit`'s plain view); it is the same measured pass as ours_bank's.

    For each way: the time of each feature pass; `probe_step_ms`, the median of S steps (default 20) after
    warm-up; the 30-epoch tuning loop; and `total_30_epochs_s` = feature passes + tuning loop. A loop whose
    estimate 30 * steps_per_epoch * probe step is under `--full-budget-s` (120 s) is run in full and its
    measured time reported (`how`: "measured: full 30-epoch run"; `step_ms` and `epoch_s` are then its mean
    step and epoch, short last batches included); a longer one is computed from the probe step time
    (`how`: "estimated from S measured steps"; `step_ms` is the probe's), plus the measured feature passes.
    Ours: wall times include XLA compilation (a user pays it once per shape and process); `*_compile_s` say
    how much of it was compilation (jax.monitoring), and `step_ms`/`epoch_s` of a full run exclude it. Our
    probe is `tuning.fit` with one epoch on S * 64 examples (the median of 3 after a compiling one), its
    per-call overhead included, so it errs high for cheap steps; PyTorch's probe is timed step by step.

PyTorch runs with `torch.set_num_threads(2)` (the cores of the reference machine; XLA:CPU uses all cores);
`--torch-threads=N` changes it. On a busy machine PyTorch's OpenMP threads spin and lose badly to other
processes (measured at load 5 on 2 cores: 209 examples/s with 2 threads, 1,409 with 1), so compare on an idle
machine, or with `--torch-threads=1` when the load is high. OPENBLAS_NUM_THREADS is set to 1 unless given, as
`nml_jax.main` does (it only affects JAX's LAPACK calls; PyTorch uses MKL).
Needs `pip install torch==2.13.0` (the CPU wheel); torchvision is not needed.

    python -m benchmarks.torch_compare [--quick] [--torch-threads=2] [--sizes=2000,5000] \
        [--encoders=cnn,resnet18] [--steps=20] [--full-budget-s=120]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dataclasses
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from benchmarks import common, pretrain_throughput, torch_models
from nml_jax import augment, defaults, encoders, features, models, tuning

BATCH = 64
NUM_CLASSES = 10
DIM = 128
EPOCHS = 30
FEATURE_CHUNK = (
    256  # Images per PyTorch forward in the feature passes (ImageEncoder.embed's batch).
)
RECIPE = augment.recipe("supervised", "classifier")
# name -> (model block of the JAX encoder, input shape HWC, feature dim).
ENCODERS = {
    "cnn": ({"name": "cnn"}, (28, 28, 1), 128),
    "resnet18": ({"name": "resnet18", "stem": "small"}, (32, 32, 3), 512),
}
WAYS = ("torch_official", "torch_cached", "ours_bank", "ours_online")


class TorchSmallCNN(nn.Module):
    """The same architecture as nml_jax.models.cnn.SmallCNN, NCHW."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.dense = nn.Linear(64 * 7 * 7, DIM)
        self.head = nn.Linear(DIM, NUM_CLASSES)

    def features(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return torch.relu(self.dense(x.flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


TORCH_ENCODERS = {
    "cnn": TorchSmallCNN,
    "resnet18": lambda: torch_models.TorchResNet(18, NUM_CLASSES, stem="small"),
}


class TorchNMTuneHead(nn.Module):
    """Z = s * MLP(F) + F, logits = classifier(Z), as in the official NMTune code."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.BatchNorm1d(4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim)
        )
        self.scale = nn.Parameter(torch.ones(dim))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, f):
        z = self.scale * self.mlp(f) + f
        return self.classifier(z), z


def torch_nmtune_loss(logits, z, f1, labels):
    """CE(both views) + MSE(l2n(z2), l2n(f1)) + 0.04 off-diag(cov z)^2 / D - 0.001 top-5 sv share."""
    batch, dim = f1.shape
    ce = nn.functional.cross_entropy(logits, torch.cat([labels, labels]))
    cons = nn.functional.mse_loss(
        nn.functional.normalize(z[batch:], dim=1), nn.functional.normalize(f1.detach(), dim=1)
    )
    centred = z - z.mean(0)
    cov = centred.T @ centred / (2 * batch - 1)
    off = cov - torch.diag(torch.diag(cov))
    s = torch.linalg.svdvals(z)
    s = s / s.sum()
    return ce + cons + 0.04 * off.pow(2).sum() / dim - 0.001 * s[:5].mean()


# ---------------------------------------------------------------------------------------------------------------
# (a) The small CNN training step.


def torch_cnn_step_s(steps: int) -> float:
    """Median seconds of one PyTorch SGD step of the small CNN at batch 64."""
    model = TorchSmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(BATCH, 1, 28, 28)
    y = torch.randint(0, NUM_CLASSES, (BATCH,))

    def step():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return _median_time(step, steps)


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def small_cnn_step(steps: int) -> dict:
    jax_row = pretrain_throughput.measure(
        "cnn", {}, "float32", (28, 28, 1), BATCH, steps=steps, repeats=3
    )
    torch_step = torch_cnn_step_s(steps)
    row = {
        "comparison": "small_cnn_train_step",
        "batch_size": BATCH,
        "jax_examples_per_s": jax_row["examples_per_s"],
        "torch_examples_per_s": round(BATCH / torch_step, 1),
    }
    row["jax_over_torch"] = round(row["jax_examples_per_s"] / row["torch_examples_per_s"], 2)
    return row


# ---------------------------------------------------------------------------------------------------------------
# (b) The augmented views in PyTorch: torchvision's RandomResizedCrop (+ flip) in plain torch.


def torch_crop_box(
    height: int, width: int, scale, ratio=augment.RATIO
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one RandomResizedCrop box, drawn as torchvision's `get_params` draws it."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(augment.TRIES):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def torch_resized_crop(image: torch.Tensor, box) -> torch.Tensor:
    """The `box` (top, left, h, w) of an image [C, H, W], resized bilinearly back to [C, H, W]."""
    top, left, h, w = box
    crop = image[None, :, top : top + h, left : left + w]
    return nn.functional.interpolate(
        crop, size=image.shape[1:], mode="bilinear", align_corners=False, antialias=True
    )[0]


def torch_augment(images: torch.Tensor, scale, flip: bool) -> torch.Tensor:
    """One augmented view per image of a batch [B, C, H, W]: a crop box each, resized, flipped w.p. 1/2."""
    height, width = images.shape[2:]
    out = torch.empty_like(images)
    for i in range(len(images)):
        view = torch_resized_crop(images[i], torch_crop_box(height, width, scale))
        if flip and torch.rand(1).item() < 0.5:
            view = view.flip(-1)
        out[i] = view
    return out


def crop_check(boxes: int = 8) -> dict:
    """Max |torch_resized_crop - augment.resized_crop| over random boxes of a 32x32x3 image: on interior
    pixels, and on the one-pixel border (where ours blends in the pixels just outside the box, torchvision's
    crop-then-resize does not)."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((32, 32, 3)).astype(np.float32)
    interior = border = 0.0
    for _ in range(boxes):
        box = torch_crop_box(32, 32, RECIPE["scale"])
        ours = np.asarray(augment.resized_crop(jnp.asarray(image), jnp.asarray(box, jnp.int32)))
        theirs = torch_resized_crop(torch.from_numpy(image).permute(2, 0, 1), box)
        diff = np.abs(theirs.permute(1, 2, 0).numpy() - ours)
        interior = max(interior, float(diff[1:-1, 1:-1].max()))
        border = max(border, float(diff.max()))
    return {"boxes": boxes, "interior_max_abs_diff": interior, "border_max_abs_diff": border}


# ---------------------------------------------------------------------------------------------------------------
# (b) The PyTorch loops.


def torch_epoch_batches(num_examples: int) -> list[torch.Tensor]:
    """One epoch's shuffled index batches of 64, the last one short (DataLoader, drop_last=False)."""
    return list(torch.randperm(num_examples).split(BATCH))


def torch_head_step(head, optimizer, f1, f2, labels) -> None:
    """One AdamW step of the NMTune head on the 2B features of two views."""
    logits, z = head(torch.cat([f1, f2]))
    loss = torch_nmtune_loss(logits, z, f1, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def torch_feature_passes(encoder, images: torch.Tensor, k: int) -> tuple[torch.Tensor, list[float]]:
    """The bank [1 + k, N, D] (view 0 plain, views 1..k augmented) and the seconds of each pass."""
    views, seconds = [], []
    with torch.no_grad():
        for view in range(1 + k):
            start = time.perf_counter()
            parts = []
            for chunk in images.split(FEATURE_CHUNK):
                if view:
                    chunk = torch_augment(chunk, RECIPE["scale"], RECIPE["flip"])
                parts.append(encoder.features(chunk))
            views.append(torch.cat(parts))
            seconds.append(time.perf_counter() - start)
    return torch.stack(views), seconds


def run_torch_loop(step, num_examples: int, steps: int, budget_s: float) -> dict:
    """Times `step(indices)`: the median of `steps` full batches after 2 warm-up steps, then the 30-epoch
    loop, run in full if its estimate is under `budget_s`, else estimated from the step time."""
    per_epoch = tuning.steps_per_epoch(num_examples, BATCH)
    times = []
    for i in range(steps + 2):
        index = torch.randint(0, num_examples, (BATCH,))
        start = time.perf_counter()
        step(index)
        if i >= 2:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    estimate = EPOCHS * per_epoch * step_s
    if estimate > budget_s:
        return {
            "probe_step_s": step_s,
            "step_s": step_s,
            "epoch_s": per_epoch * step_s,
            "tuning_s": estimate,
            "how": f"estimated from {steps} measured steps",
        }
    start = time.perf_counter()
    for _ in range(EPOCHS):
        for index in torch_epoch_batches(num_examples):
            step(index)
    tuning_s = time.perf_counter() - start
    return {
        "probe_step_s": step_s,
        "step_s": tuning_s / (EPOCHS * per_epoch),
        "epoch_s": tuning_s / EPOCHS,
        "tuning_s": tuning_s,
        "how": "measured: full 30-epoch run",
    }


def torch_ways(name: str, inputs: np.ndarray, labels: np.ndarray, *, k, steps, budget_s) -> dict:
    """The torch_official and torch_cached rows for one encoder and N."""
    torch.manual_seed(0)
    encoder = TORCH_ENCODERS[name]().eval()
    dim = ENCODERS[name][2]
    images = torch.from_numpy(inputs).permute(0, 3, 1, 2).contiguous()
    targets = torch.from_numpy(labels)
    scale, flip = RECIPE["scale"], RECIPE["flip"]

    def fresh_head():
        head = TorchNMTuneHead(dim, NUM_CLASSES)
        return head, torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)

    head, optimizer = fresh_head()

    def official_step(index):
        x = images[index]
        with torch.no_grad():
            f = encoder.features(
                torch.cat([torch_augment(x, scale, flip), torch_augment(x, scale, flip)])
            )
        torch_head_step(head, optimizer, f[: len(index)], f[len(index) :], targets[index])

    common.log(f"  torch_official {name} N={len(inputs)}")
    official = run_torch_loop(official_step, len(inputs), steps, budget_s)

    common.log(f"  torch_cached {name} N={len(inputs)}: feature passes")
    bank, pass_s = torch_feature_passes(encoder, images, k)
    head, optimizer = fresh_head()

    def cached_step(index):
        first = torch.randint(0, k, (len(index),))
        second = (first + torch.randint(1, k, (len(index),))) % k
        f1, f2 = bank[first + 1, index], bank[second + 1, index]
        torch_head_step(head, optimizer, f1, f2, targets[index])

    common.log(f"  torch_cached {name} N={len(inputs)}: tuning")
    cached = run_torch_loop(cached_step, len(inputs), steps, budget_s)
    return {
        "torch_official": {**official, "feature_passes_s": {}},
        "torch_cached": {
            **cached,
            "feature_passes_s": {"plain": pass_s[0], "augmented": pass_s[1:]},
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# (b) Ours: the project's feature passes and tuning.fit.


def jax_encoder(name: str) -> encoders.ImageEncoder:
    """A frozen ImageEncoder of the registry's model `name` with random-init weights (timing only)."""
    model_block, input_shape, dim = ENCODERS[name]
    model_kwargs = {k: v for k, v in model_block.items() if k != "name"}
    model = models.get(model_block["name"], NUM_CLASSES, **model_kwargs)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32))
    card = {
        "kind": "classifier",
        "input_shape": list(input_shape),
        "config": {"model": model_block},
    }
    apply_fn = lambda v, x: model.apply(v, x, train=False)[1]
    return encoders.ImageEncoder(card, apply_fn, variables, dim, 0, f"random-init-{name}")


def ours_feature_passes(
    encoder, inputs: np.ndarray, k: int
) -> tuple[np.ndarray, list[float], float]:
    """The bank [1 + k, N, D] through the features stage's functions, each pass's seconds, compile seconds."""
    spec = {"scale": list(RECIPE["scale"]), "flip": RECIPE["flip"], "seed": 0}
    chunk = defaults.downstream().feature_chunk_size
    views, seconds = [], []
    with common.compile_seconds() as compiled:
        for view in range(1 + k):
            start = time.perf_counter()
            if view:
                views.append(features.augmented_view(encoder, inputs, view, spec, chunk))
            else:
                views.append(encoder.embed(inputs))
            seconds.append(time.perf_counter() - start)
    return np.stack(views), seconds, compiled["seconds"]


def run_fit(views, labels, online, *, steps: int, repeats: int, budget_s: float) -> dict:
    """Times `tuning.fit('nmtune', ...)`: the step time from one-epoch fits on steps * 64 examples (the
    median of `repeats` after a compiling one), then the 30-epoch fit, run in full if its estimate is under
    `budget_s`, else estimated (plus the probe's compile time)."""
    config = defaults.head("nmtune")
    config.epochs = EPOCHS
    num_examples = views.shape[1]
    per_epoch = tuning.steps_per_epoch(num_examples, BATCH)
    sub = min(steps * BATCH, num_examples)
    probe = config.copy_and_resolve_references()
    probe.epochs = 1
    probe_online = (
        None if online is None else dataclasses.replace(online, inputs=online.inputs[:sub])
    )

    def fit(cfg, n, on):
        return tuning.fit(
            "nmtune", views[:, :n], labels[:n], cfg, num_classes=NUM_CLASSES, online=on
        )

    with common.compile_seconds() as compiled:
        fit(probe, sub, probe_online)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit(probe, sub, probe_online)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times) / tuning.steps_per_epoch(sub, BATCH)
    estimate = EPOCHS * per_epoch * step_s
    if estimate > budget_s:
        return {
            "probe_step_s": step_s,
            "step_s": step_s,
            "epoch_s": per_epoch * step_s,
            "tuning_s": estimate + compiled["seconds"],
            "compile_s": compiled["seconds"],
            "how": f"estimated from {steps} measured steps",
        }
    with common.compile_seconds() as compiled:
        start = time.perf_counter()
        fit(config, num_examples, online)
        tuning_s = time.perf_counter() - start
    run_s = tuning_s - compiled["seconds"]
    return {
        "probe_step_s": step_s,
        "step_s": run_s / (EPOCHS * per_epoch),
        "epoch_s": run_s / EPOCHS,
        "tuning_s": tuning_s,
        "compile_s": compiled["seconds"],
        "how": "measured: full 30-epoch run",
    }


def our_ways(name: str, inputs: np.ndarray, labels: np.ndarray, *, k, steps, repeats, budget_s):
    """The ours_bank and ours_online rows for one encoder and N."""
    encoder = jax_encoder(name)
    common.log(f"  ours {name} N={len(inputs)}: feature passes")
    bank, pass_s, pass_compile_s = ours_feature_passes(encoder, inputs, k)
    passes = {"plain": pass_s[0], "augmented": pass_s[1:], "compile_s": pass_compile_s}
    common.log(f"  ours_bank {name} N={len(inputs)}: tuning")
    fit_kwargs = {"steps": steps, "repeats": repeats, "budget_s": budget_s}
    bank_row = run_fit(bank, labels, None, **fit_kwargs)
    online = features.OnlineViews(
        inputs, encoder.apply_fn, encoder.variables, tuple(RECIPE["scale"]), RECIPE["flip"]
    )
    common.log(f"  ours_online {name} N={len(inputs)}: tuning")
    online_row = run_fit(bank[:1], labels, online, **fit_kwargs)
    return {
        "ours_bank": {**bank_row, "feature_passes_s": passes},
        "ours_online": {**online_row, "feature_passes_s": {"plain": pass_s[0]}},
    }


def _row(name: str, num_examples: int, way: str, timing: dict, k: int) -> dict:
    """One JSON row: the timings rounded, the feature passes summed into the 30-epoch total."""
    passes = dict(timing["feature_passes_s"])
    passes_compile_s = passes.pop("compile_s", None)
    passes_total = passes.get("plain", 0.0) + sum(passes.get("augmented", []))
    row = {
        "comparison": "nmtune_30_epochs_with_views",
        "encoder": name,
        "input_shape": list(ENCODERS[name][1]),
        "dim": ENCODERS[name][2],
        "num_examples": num_examples,
        "way": way,
        "views_k": k if way in ("torch_cached", "ours_bank") else None,
        "batch_size": BATCH,
        "steps_per_epoch": tuning.steps_per_epoch(num_examples, BATCH),
        "feature_passes_s": {
            key: [round(v, 3) for v in value] if isinstance(value, list) else round(value, 3)
            for key, value in passes.items()
        },
        "feature_passes_total_s": round(passes_total, 3),
        "step_ms": round(1000 * timing["step_s"], 3),
        "probe_step_ms": round(1000 * timing["probe_step_s"], 3),
        "epoch_s": round(timing["epoch_s"], 3),
        "tuning_30_epochs_s": round(timing["tuning_s"], 2),
        "total_30_epochs_s": round(passes_total + timing["tuning_s"], 2),
        "how": timing["how"],
    }
    if passes_compile_s is not None:
        row["feature_passes_compile_s"] = round(passes_compile_s, 2)
    if "compile_s" in timing:
        row["tuning_compile_s"] = round(timing["compile_s"], 2)
    return row


def nmtune_rows(name: str, num_examples: int, *, k, steps, repeats, budget_s) -> list[dict]:
    """The four ways' rows for one encoder and N, and a row of the ratios of their 30-epoch totals."""
    _, input_shape, _ = ENCODERS[name]
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((num_examples, *input_shape)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, num_examples).astype(np.int64)
    timings = {
        **torch_ways(name, inputs, labels, k=k, steps=steps, budget_s=budget_s),
        **our_ways(name, inputs, labels, k=k, steps=steps, repeats=repeats, budget_s=budget_s),
    }
    rows = [_row(name, num_examples, way, timings[way], k) for way in WAYS]
    for row in rows:
        common.log(json.dumps(row))  # So that an interrupted run keeps what it measured.
    total = {row["way"]: row["total_30_epochs_s"] for row in rows}
    rows.append(
        {
            "comparison": "nmtune_30_epochs_ratios",
            "encoder": name,
            "num_examples": num_examples,
            "torch_official_over_ours_bank": round(total["torch_official"] / total["ours_bank"], 2),
            "torch_official_over_ours_online": round(
                total["torch_official"] / total["ours_online"], 2
            ),
            "torch_cached_over_ours_bank": round(total["torch_cached"] / total["ours_bank"], 2),
            "torch_official_over_torch_cached": round(
                total["torch_official"] / total["torch_cached"], 2
            ),
            # The ways whose totals (and so the ratios they enter) are estimates, with their `how`.
            "estimated": {row["way"]: row["how"] for row in rows if row["how"].startswith("est")},
        }
    )
    return rows


def _positive_ints(flag: str, text: str) -> list[int]:
    """Comma-separated positive integers, or a one-line exit naming the flag."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"{flag}={text!r}: expected positive integers separated by commas.")
    return values


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--sizes", default=None, help="N values, comma-separated (2000,5000; quick 64)")
    p.add_argument("--encoders", default="cnn,resnet18", help=f"some of {sorted(ENCODERS)}")
    p.add_argument("--steps", type=int, default=None, help="S, steps timed per way (20; quick 2)")
    p.add_argument(
        "--full-budget-s",
        type=float,
        default=None,
        help="run a tuning loop in full when its estimate is under this (120; quick 2)",
    )
    args = p.parse_args()
    names = args.encoders.split(",")
    for name in names:
        if name not in ENCODERS:
            raise SystemExit(f"--encoders: {name!r} is not one of {sorted(ENCODERS)}.")
    sizes = _positive_ints("--sizes", args.sizes or ("64" if args.quick else "2000,5000"))
    steps = args.steps if args.steps is not None else (2 if args.quick else 20)
    if steps < 1:
        raise SystemExit(f"--steps={steps}: expected a positive number of steps to time.")
    budget_s = args.full_budget_s if args.full_budget_s is not None else (2 if args.quick else 120)
    if budget_s < 0:
        raise SystemExit(f"--full-budget-s={budget_s}: expected seconds >= 0.")
    if args.torch_threads < 1:
        raise SystemExit(f"--torch-threads={args.torch_threads}: expected at least 1 thread.")
    k = defaults.DEFAULT_VIEWS
    torch.set_num_threads(args.torch_threads)
    machine = {
        **common.machine(),
        "torch": torch.__version__,
        "torch_threads": args.torch_threads,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
    }
    common.log("(a) small CNN training step")
    results = [small_cnn_step(10 if args.quick else 30)]
    common.log("(b) NMTune, 30 epochs with augmented views")
    for name in names:
        for num_examples in sizes:
            results += nmtune_rows(
                name,
                num_examples,
                k=k,
                steps=steps,
                repeats=1 if args.quick else 3,
                budget_s=budget_s,
            )
    common.report(
        "torch_compare",
        machine,
        results,
        encoder_weights="random init (timing only)",
        views_k=k,
        steps_timed=steps,
        full_budget_s=budget_s,
        crop_check=crop_check(),
    )


if __name__ == "__main__":
    main()
