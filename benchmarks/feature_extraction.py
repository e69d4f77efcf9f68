"""Feature extraction throughput: images/s of `features.encode` with a restored encoder.

Trains a tiny checkpoint first (configs/pretrain.py:smoke, 8 steps of the small CNN, into a temporary
workdir), restores it with `encoders.restore` and encodes the Fashion-MNIST test images (uint8,
including the eval preprocessing and the host-device copies) with
  - `features.encode(encoder, images, chunk)`: what the features stage runs, chunk = 256 and 1024;
  - `Encoder.features(images, batch_size=B)`: the compiled device batch B = 256 and 1024.

    python -m benchmarks.feature_extraction [--quick]
"""

from __future__ import annotations

import tempfile

from benchmarks import common
from nml_jax import data, encoders, features, pretrain


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    machine = common.machine()
    images = data.load("nml_fashion_mnist", "test")["image"]
    if args.quick:
        images = images[:2048]
    repeats = 2 if args.quick else 3
    results = []
    with tempfile.TemporaryDirectory(prefix="nml_feat_") as workdir:
        common.log("training a tiny checkpoint (configs/pretrain.py:smoke)")
        pretrain.run(common.load_config("pretrain.py", "smoke"), workdir)
        encoder = encoders.restore(workdir)
        cases = {
            "features.encode": lambda b: features.encode(encoder, images, b),
            "Encoder.features": lambda b: encoder.features(images, batch_size=b),
        }
        for name, fn in cases.items():
            for batch in (256, 1024):
                common.log(f"{name} batch {batch}")
                timing = common.time_call(lambda f=fn, b=batch: f(b), repeats=repeats)
                results.append(
                    {
                        "function": name,
                        "batch_size": batch,
                        "images": len(images),
                        "feature_dim": encoder.feature_dim,
                        "model": encoder.config.model.name,
                        "seconds": round(timing["median_s"], 3),
                        "images_per_s": round(len(images) / timing["median_s"], 1),
                    }
                )
    common.report("feature_extraction", machine, results)


if __name__ == "__main__":
    main()
