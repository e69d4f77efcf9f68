"""Accelerator throughput: ResNet-50 bfloat16 pre-training images/s and NMTune steps/s, for an NVIDIA GPU.

  - ResNet-50 (ImageNet stem) pre-training step at 224 px, bfloat16 compute, batch 128 and 256
    (`pretrain.make_train_step`, jitted as `pretrain.train` does; see benchmarks/pretrain_throughput.py);
  - NMTune at D = 2048, batch 256, N = 16384 cached features, 2 epochs in one jitted scan
    (`tuning.train_program`; see benchmarks/transfer_throughput.py), with its matmul peak fraction.

On a CPU backend it refuses to run unless `--quick`, which uses tiny shapes (64 px, batch 4; D = 256,
batch 32) to check that the script works.

    python -m benchmarks.gpu            # on the GPU machine
    python -m benchmarks.gpu --quick    # anywhere, tiny shapes
"""

from __future__ import annotations

import jax

from benchmarks import common, pretrain_throughput, transfer_throughput


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    on_cpu = jax.default_backend() == "cpu"
    if on_cpu and not args.quick:
        raise SystemExit(
            "benchmarks/gpu.py measures an accelerator and JAX sees only the CPU; run it on the GPU "
            "machine, or pass --quick for a tiny-shape check."
        )
    machine = common.machine()
    image_shape, batches = ((64, 64, 3), (4,)) if args.quick else ((224, 224, 3), (128, 256))
    dim, batch, num_examples = (256, 32, 256) if args.quick else (2048, 256, 16384)
    results = []
    for batch_size in batches:
        common.log(f"resnet50 bfloat16 {image_shape} batch {batch_size}")
        results.append(
            pretrain_throughput.measure(
                "resnet50",
                {"stem": "imagenet"},
                "bfloat16",
                image_shape,
                batch_size,
                steps=2 if args.quick else 20,
                repeats=2 if args.quick else 3,
            )
        )
    peak = transfer_throughput.peak_gflops(512 if args.quick else 8192, 5)
    common.log(f"nmtune D={dim} batch {batch}")
    results.append(
        transfer_throughput.measure(
            "nmtune", dim, batch, num_examples, 1 if args.quick else 2, 3, peak
        )
    )
    common.report("gpu", machine, results, matmul_peak_gflops=round(peak, 2))


if __name__ == "__main__":
    main()
