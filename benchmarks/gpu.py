"""Accelerator throughput: ResNet-50 bfloat16 pre-training, feature extraction, NMTune, and the main job.

  - ResNet-50 (ImageNet stem) pre-training step at 224 px, bfloat16 compute (`pretrain.make_train_step`, jitted
    as `pretrain.train` does; see benchmarks/pretrain_throughput.py) at batch 128, 256, 512, ... until the
    first batch that does not fit in memory: images/s at each, and the largest that fits;
  - feature extraction: ResNet-50's eval forward (`train=False`, float32 and bfloat16), batch 512, images/s;
  - NMTune at D = 2048, batch 256, N = 16384 cached features, 2 epochs in one jitted scan
    (`tuning.train_program`; see benchmarks/transfer_throughput.py), with its matmul peak fraction;
  - with `--main-job`, the wall time of `python -m nml_jax.main --config=configs/nmtune.py` in a fresh workdir
    (needs the embedded data: `make data` or the Debian package on that machine).

Everything fits in one call of under 8 minutes on one H100/H200-class GPU. On a CPU backend it refuses to run
unless `--quick`, which uses tiny shapes (64 px, batch 4 and 8; D = 256, batch 32) to check that it works.

    python -m benchmarks.gpu [--main-job]   # on the GPU machine
    python -m benchmarks.gpu --quick        # anywhere, tiny shapes
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, pretrain_throughput, transfer_throughput
from nml_jax import models

MAX_BATCH = 4096


def _out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def pretrain_rows(image_shape, batches, quick: bool) -> list[dict]:
    """The ResNet-50 bfloat16 step at each batch until one does not fit (its row says so)."""
    rows = []
    for batch_size in batches:
        common.log(f"resnet50 bfloat16 {image_shape} batch {batch_size}")
        try:
            row = pretrain_throughput.measure(
                "resnet50",
                {"stem": "imagenet"},
                "bfloat16",
                image_shape,
                batch_size,
                steps=2 if quick else 10,
                repeats=2,
            )
        except Exception as error:  # Only an out-of-memory error ends the search.
            if not _out_of_memory(error):
                raise
            rows.append({"model": "resnet50", "batch_size": batch_size, "fits": False})
            break
        rows.append({**row, "fits": True})
    fitting = [r["batch_size"] for r in rows if r["fits"]]
    rows.append({"largest_batch_that_fits": max(fitting) if fitting else None})
    return rows


def forward_rows(image_shape, batch_size: int, quick: bool) -> list[dict]:
    """ResNet-50 eval-forward images/s (what the features stage runs), float32 and bfloat16."""
    rows = []
    x = jnp.asarray(
        np.random.default_rng(0).standard_normal((batch_size, *image_shape)), jnp.float32
    )
    for dtype in ("float32", "bfloat16"):
        model = models.get("resnet50", 1000, stem="imagenet", dtype=dtype)
        variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
        forward = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False)[1])
        timing = common.time_call(lambda f=forward, v=variables: f(v, x), repeats=2 if quick else 5)
        rows.append(
            {
                "what": "resnet50_eval_forward",
                "dtype": dtype,
                "batch_size": batch_size,
                "images_per_s": round(batch_size / timing["median_s"], 1),
            }
        )
    return rows


def main_job_row() -> dict:
    """Wall time of the main job in a fresh workdir."""
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "nml_jax.main",
                "--config=configs/nmtune.py",
                f"--workdir={workdir}",
            ],
            cwd=common.REPO,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - start
    row = {"what": "main_job", "config": "configs/nmtune.py", "wall_s": round(wall, 1)}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return row


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--main-job", action="store_true", help="also time configs/nmtune.py end to end")
    args = p.parse_args()
    on_cpu = jax.default_backend() == "cpu"
    if on_cpu and not args.quick:
        raise SystemExit(
            "benchmarks/gpu.py measures an accelerator and JAX sees only the CPU; run it on the GPU "
            "machine, or pass --quick for a tiny-shape check."
        )
    machine = common.machine()
    if args.quick:
        image_shape, batches, forward_batch = (64, 64, 3), (4, 8), 8
    else:
        image_shape, forward_batch = (224, 224, 3), 512
        batches = (128, 256, 512, 1024, 2048, MAX_BATCH)
    dim, batch, num_examples = (256, 32, 256) if args.quick else (2048, 256, 16384)
    results = pretrain_rows(image_shape, batches, args.quick)
    results += forward_rows(image_shape, forward_batch, args.quick)
    peak = transfer_throughput.peak_gflops(512 if args.quick else 8192, 5)
    common.log(f"nmtune D={dim} batch {batch}")
    results.append(
        transfer_throughput.measure(
            "nmtune", dim, batch, num_examples, 1 if args.quick else 2, 3, peak
        )
    )
    if args.main_job:
        common.log("main job")
        results.append(main_job_row())
    common.report("gpu", machine, results, matmul_peak_gflops=round(peak, 2))


if __name__ == "__main__":
    main()
