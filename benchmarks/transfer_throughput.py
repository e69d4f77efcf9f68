"""Transfer-head throughput: LP and NMTune steps/s on cached features, and the share of the matmul peak.

Runs nml_jax.transfer's own jitted training program (`train_program`, with `make_head` and
`init_variables`, as `tuning.fit` builds it) on N random device-resident features for a
few epochs inside one jitted scan, and reports the time per step. `matmul_gflop` counts the dense matmuls of
one step (forward, times 3 for forward + backward):
  LP:     2 B D C;
  NMTune: on 2B rows, Linear D->4D and 4D->D (2 * 2 * 2B * D * 4D), the classifier (2 * 2B * D * C),
          the covariance z^T z (2 * 2B * D^2) and the Gram matrix of the singular-value term
          (2 * (2B)^2 * D when 2B <= D, else 2 * 2B * D^2).
The eigendecomposition is not a matmul and is not counted. `peak_fraction` = achieved matmul FLOP/s divided
by the FLOP/s of a large `jnp.dot` measured in the same run.

The NMTune singular-value term runs `eigvalsh` on the CPU through LAPACK (OpenBLAS threads); the benchmark
runs a child process with and without OPENBLAS_NUM_THREADS=1 and reports both (`openblas_threads`).

    python -m benchmarks.transfer_throughput [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import common
from nml_jax import defaults, parallel, tuning

NUM_CLASSES = 10


def peak_gflops(size: int, repeats: int) -> float:
    """Best FLOP/s of a float32 [size x size] @ [size x size] `jnp.dot` over `repeats`, in GFLOP/s."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
    dot = jax.jit(jnp.dot)
    seconds = common.time_call(lambda: dot(a, a), repeats=repeats)["min_s"]
    return 2 * size**3 / seconds / 1e9


def step_matmul_flops(method: str, batch: int, dim: int, num_classes: int) -> float:
    """Dense-matmul FLOPs of one training step (forward x 3), per the module docstring."""
    if method == "lp":
        forward = 2 * batch * dim * num_classes
    else:
        rows, hidden = 2 * batch, 4 * dim
        gram = 2 * rows * rows * dim if rows <= dim else 2 * rows * dim * dim
        forward = 2 * 2 * rows * dim * hidden + 2 * rows * dim * num_classes
        if method == "nmtune":
            forward += 2 * rows * dim * dim + gram
    return 3.0 * forward


def make_program(method: str, num_examples: int, dim: int, batch: int, epochs: int):
    """(train, args): nml_jax.transfer's jitted training program and its device-resident inputs."""
    config = defaults.head(method)
    config.batch_size, config.epochs = batch, epochs
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    views = rng.standard_normal((1, num_examples, dim)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, num_examples).astype(np.int32)
    model = tuning.make_head(method, config, NUM_CLASSES)
    variables = jax.device_put(
        tuning.init_variables(model, dim, config.seed), parallel.replicated(mesh)
    )
    steps = tuning.steps_per_epoch(num_examples, batch)
    train = tuning.train_program(
        method,
        tuning.settings_key(config),
        NUM_CLASSES,
        mesh,
        num_examples=num_examples,
        num_views=1,
    )
    args = (
        variables,
        jax.device_put(views, NamedSharding(mesh, P(None, parallel.DATA_AXIS))),
        jax.device_put(labels, parallel.data_sharding(mesh)),
        jnp.asarray(config.seed, jnp.int32),
        (),  # No online views: the bank path.
    )
    return train, args, epochs * steps


def measure(method, dim, batch, num_examples, epochs, repeats, peak):
    train, args, steps = make_program(method, num_examples, dim, batch, epochs)
    timing = common.time_call(lambda: train(*args), warmup=1, repeats=repeats)
    step_s = timing["median_s"] / steps
    gflop = step_matmul_flops(method, batch, dim, NUM_CLASSES) / 1e9
    return {
        "method": method,
        "dim": dim,
        "batch_size": batch,
        "num_examples": num_examples,
        "epochs": epochs,
        "step_ms": round(1000 * step_s, 3),
        "steps_per_s": round(1 / step_s, 1),
        "epoch_s": round(step_s * tuning.steps_per_epoch(num_examples, batch), 3),
        "matmul_gflop_per_step": round(gflop, 4),
        "matmul_gflops": round(gflop / step_s, 2),
        "peak_fraction": round(gflop / step_s / peak, 3),
    }


def eigvalsh_ms(rows: int, repeats: int) -> float:
    """Median ms of a jitted `jnp.linalg.eigvalsh` of a [rows x rows] Gram matrix."""
    z = jnp.asarray(np.random.default_rng(0).standard_normal((rows, 2 * rows)), jnp.float32)
    gram = z @ z.T
    fn = jax.jit(jnp.linalg.eigvalsh)
    return round(1000 * common.time_call(lambda: fn(gram), repeats=repeats)["median_s"], 3)


def thread_probe(quick: bool) -> list[dict]:
    """eigvalsh and an NMTune step in this process's OpenBLAS setting (run as a child process)."""
    repeats = 3 if quick else 5
    results = [
        {"what": "eigvalsh", "rows": rows, "ms": eigvalsh_ms(rows, repeats)} for rows in (128, 512)
    ]
    peak = peak_gflops(1024, repeats)
    row = measure("nmtune", 512, 64, 1024 if quick else 4096, 1, repeats, peak)
    results.append({"what": "nmtune_step", "dim": 512, "batch_size": 64, "ms": row["step_ms"]})
    return results


def openblas_comparison(quick: bool) -> list[dict]:
    """`thread_probe` in child processes with OPENBLAS_NUM_THREADS unset and set to 1."""
    out = []
    for setting in (None, "1"):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        if setting is not None:
            env["OPENBLAS_NUM_THREADS"] = setting
        command = [sys.executable, "-m", "benchmarks.transfer_throughput", "--thread-probe"]
        command += ["--quick"] if quick else []
        child = subprocess.run(
            command, env=env, cwd=common.REPO, capture_output=True, text=True, check=True
        )
        for row in json.loads(child.stdout.strip().splitlines()[-1]):
            out.append({"openblas_threads": setting or "default", **row})
    return out


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--thread-probe",
        action="store_true",
        help="internal: print eigvalsh and NMTune step times under this process's OpenBLAS setting",
    )
    args = p.parse_args()
    if args.thread_probe:
        print(json.dumps(thread_probe(args.quick)))
        return
    machine = common.machine()
    peak = peak_gflops(2048, 5)
    num_examples = 512 if args.quick else 4096
    epochs = 1 if args.quick else 2
    on_cpu = jax.default_backend() == "cpu"
    results = []
    for method in ("lp", "nmtune"):
        for dim in (512, 2048):
            # An NMTune step at D = 2048 takes seconds on a CPU: one timed run after the warm-up.
            repeats = 1 if args.quick or (on_cpu and method == "nmtune" and dim == 2048) else 3
            for batch in (64, 256):
                common.log(f"{method} D={dim} B={batch}")
                results.append(measure(method, dim, batch, num_examples, epochs, repeats, peak))
    common.log("OpenBLAS thread settings")
    common.report(
        "transfer_throughput",
        machine,
        results,
        matmul_peak_gflops=round(peak, 2),
        openblas=openblas_comparison(args.quick),
    )


if __name__ == "__main__":
    main()
