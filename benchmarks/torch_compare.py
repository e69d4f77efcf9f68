"""Side by side with plain PyTorch (CPU, eager), written for this benchmark, in the same run.

(a) The small CNN training step (conv32-pool-conv64-pool-dense128-logits, SGD momentum 0.9, lr 0.05, coupled
    weight decay 5e-4, batch 64, 28x28x1): examples/s of `pretrain.make_train_step` (jitted) vs PyTorch.
(b) NMTune as the paper's code runs it: every step the frozen encoder (the small CNN) runs forward on both
    views of the batch, then the NMTune head (Linear D->4D, BatchNorm, ReLU, Linear 4D->D, residual scale,
    classifier) is trained with CE on both views + consistency + covariance - top-5 singular-value share
    (`torch.linalg.svdvals`), AdamW lr 1e-3, wd 1e-4, batch 64. Ours: the features are computed once
    (`Encoder`-style jitted forward) and `tuning.train_program` runs the epochs in one jitted scan on the
    cached features. N = 4096 examples, D = 128 features; time per epoch and the ratio torch / ours.

PyTorch runs with `torch.set_num_threads(2)` (the cores of the reference machine; XLA:CPU uses all cores);
`--torch-threads=N` changes it. On a busy machine PyTorch's OpenMP threads spin and lose badly to other
processes (measured at load 5 on 2 cores: 209 examples/s with 2 threads, 1,409 with 1), so compare on an idle
machine, or with `--torch-threads=1` when the load is high.
Needs `pip install torch==2.13.0` (the CPU wheel).

    python -m benchmarks.torch_compare [--quick] [--torch-threads=2]
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
import torch
from torch import nn

from benchmarks import common, pretrain_throughput, transfer_throughput
from nml_jax import models

BATCH = 64
NUM_CLASSES = 10
DIM = 128


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


def torch_nmtune_epoch_s(num_examples: int) -> float:
    """Seconds of one paper-style NMTune epoch: frozen-encoder forward on both views every step."""
    encoder = TorchSmallCNN().eval()
    head = TorchNMTuneHead(DIM, NUM_CLASSES)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    images = torch.randn(num_examples, 1, 28, 28)
    labels = torch.randint(0, NUM_CLASSES, (num_examples,))

    def epoch():
        order = torch.randperm(num_examples)
        for start in range(0, num_examples, BATCH):
            index = order[start : start + BATCH]
            x, y = images[index], labels[index]
            with torch.no_grad():
                f1, f2 = encoder.features(x), encoder.features(x)
            logits, z = head(torch.cat([f1, f2]))
            loss = torch_nmtune_loss(logits, z, f1, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    epoch()  # Warm-up (allocator, thread pool).
    start = time.perf_counter()
    epoch()
    return time.perf_counter() - start


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def jax_feature_pass_s(num_examples: int) -> float:
    """Seconds to encode N images once with the small CNN's jitted eval forward (the cached features)."""
    model = models.from_config(common.load_config("pretrain.py").model, NUM_CLASSES)
    images = np.random.default_rng(0).standard_normal((num_examples, 28, 28, 1), np.float32)
    batches = images.reshape(-1, 256, 28, 28, 1)
    variables = model.init(jax.random.key(0), batches[0])
    apply = jax.jit(lambda v, x: model.apply(v, x)[1])
    return common.time_call(lambda: [apply(variables, b) for b in batches], repeats=2)["median_s"]


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads")
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    machine = {
        **common.machine(),
        "torch": torch.__version__,
        "torch_threads": args.torch_threads,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
    }
    num_examples = 1024 if args.quick else 4096
    steps = 10 if args.quick else 30

    common.log("(a) small CNN training step")
    jax_row = pretrain_throughput.measure(
        "cnn", {}, "float32", (28, 28, 1), BATCH, steps=steps, repeats=3
    )
    torch_step = torch_cnn_step_s(steps)
    cnn = {
        "comparison": "small_cnn_train_step",
        "batch_size": BATCH,
        "jax_examples_per_s": jax_row["examples_per_s"],
        "torch_examples_per_s": round(BATCH / torch_step, 1),
    }
    cnn["jax_over_torch"] = round(cnn["jax_examples_per_s"] / cnn["torch_examples_per_s"], 2)

    common.log("(b) NMTune epoch: paper-style (encoder every step) vs cached features")
    train, train_args, num_steps = transfer_throughput.make_program(
        "nmtune", num_examples, DIM, BATCH, epochs=1
    )
    jax_epoch = common.time_call(lambda: train(*train_args), repeats=3)["median_s"]
    feature_pass = jax_feature_pass_s(num_examples)
    torch_epoch = torch_nmtune_epoch_s(num_examples)
    nmtune = {
        "comparison": "nmtune_epoch",
        "num_examples": num_examples,
        "dim": DIM,
        "batch_size": BATCH,
        "steps_per_epoch": num_steps,
        "torch_encoder_every_step_epoch_s": round(torch_epoch, 3),
        "jax_cached_features_epoch_s": round(jax_epoch, 3),
        "jax_feature_pass_once_s": round(feature_pass, 3),
        "torch_over_jax_per_epoch": round(torch_epoch / jax_epoch, 2),
        "torch_over_jax_30_epochs_with_feature_pass": round(
            30 * torch_epoch / (30 * jax_epoch + feature_pass), 2
        ),
    }
    common.report("torch_compare", machine, [cnn, nmtune])


if __name__ == "__main__":
    main()
