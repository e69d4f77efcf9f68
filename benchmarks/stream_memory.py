"""Peak memory of streamed features: RSS of `features.stream_features` over 2,000 and 20,000 mixed-size JPEGs.

For each size N, a child process writes a stand-in `imagenet2012` validation split of N JPEGs, alternately
60x80 and 300x200 (tests/standin.py, TFDS's own writer), into a temporary data_dir; a second child process
builds a small frozen CNN encoder (64x64x3 input, eval pp `decode|resize_small(64)|central_crop(64)|
value_range(0, 1)|normalize`), streams the split through it (batch 256) and reports its peak RSS
(`ru_maxrss`), its RSS just before streaming, and the streaming time. Memory bounded by the batch shows as a
peak that does not grow with N (the [N, D] features themselves are N * 128 * 4 bytes).

    python -m benchmarks.stream_memory [--quick]      # --quick: 500 and 2,000 images
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks import common

PP = "decode|resize_small(64)|central_crop(64)|value_range(0, 1)|normalize"


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_child(data_dir: str, count: int) -> None:
    sys.path.insert(0, os.path.join(common.REPO, "tests"))
    import standin

    standin.write("imagenet2012", data_dir, {"validation": count}, classes=range(1000))


def stream_child(data_dir: str) -> None:
    import jax
    import jax.numpy as jnp

    from nml_jax import encoders, features
    from nml_jax.models import cnn

    model = cnn.SmallCNN(num_classes=10, widths=(16, 32), feature_dim=128)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    card = {"kind": "classifier", "input_shape": [64, 64, 3], "config": {"input": {"pp_eval": PP}}}
    encoder = encoders.ImageEncoder(
        card, lambda v, x: model.apply(v, x)[1], variables, 128, 0, data_dir
    )
    before = _rss_mib()
    start = time.time()
    feats, labels = features.stream_features(
        encoder, "imagenet2012", "validation", data_dir=data_dir, batch_size=256
    )
    seconds = time.time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "images": len(labels),
                "feature_shape": list(feats[0].shape),
                "rss_before_stream_mib": round(before, 1),
                "peak_rss_mib": round(peak, 1),
                "stream_seconds": round(seconds, 2),
                "images_per_second": round(len(labels) / seconds, 1),
            }
        )
    )


def _child(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.stream_memory", *args],
        cwd=common.REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("--write", "--stream"):
        if sys.argv[1] == "--write":
            write_child(sys.argv[2], int(sys.argv[3]))
        else:
            stream_child(sys.argv[2])
        return
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    machine = common.machine()
    results = []
    for count in (500, 2000) if args.quick else (2000, 20000):
        with tempfile.TemporaryDirectory(prefix="nml_stream_") as data_dir:
            common.log(f"writing {count} stand-in JPEGs")
            start = time.time()
            _child("--write", data_dir, str(count))
            written = time.time() - start
            common.log(f"streaming {count} images")
            row = json.loads(_child("--stream", data_dir).strip().splitlines()[-1])
            row["write_seconds"] = round(written, 1)
            results.append(row)
            common.log(json.dumps(row))
    common.report("stream_memory", machine, results)


if __name__ == "__main__":
    main()
