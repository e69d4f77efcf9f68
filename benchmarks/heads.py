"""Many heads in one program: heads x steps per second of `many_heads.fit_many`'s program against one by one.

For LP and NMTune at D = 128 and 512, batch 64, N random device-resident features: the one-by-one path is
`tuning.train_program` (what `tuning.fit` runs), whose heads x steps/s is its steps/s whatever the number of
heads; the batched path is `many_heads.heads_program` with H = 1, 4 and 16 heads (vmap over heads), timed per
call (all epochs, all heads). `matmul_gflops` counts H times the dense-matmul FLOPs of one step
(`transfer_throughput.step_matmul_flops`) and `peak_fraction` divides by the FLOP/s of a large `jnp.dot`
timed in the same run. `ragged` rows train heads of different N (N, N/2, N/4, N/8), padded to the largest:
their heads x steps/s counts only each head's real steps.

`cell` rows time what one cell of the study trains (`transfer.fit_heads`, compilation included): LP, MLP and
NMTune on three training sets of the embedded suite's sizes (N = 10,000 / 5,000 / 1,347, D = 128, 10 classes,
a bank of K = 4 views; random features), one by one against all heads of a method in one program; 30 epochs
(2 with --quick).

    python -m benchmarks.heads [--quick]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import common, transfer_throughput
from nml_jax import defaults, features, many_heads, parallel, transfer, tuning

NUM_CLASSES = 10
BATCH = 64


def _config(method: str, epochs: int):
    config = defaults.head(method)
    config.batch_size, config.epochs = BATCH, epochs
    return config


def _variables(method, config, dim, seeds):
    model = tuning.make_head(method, config, NUM_CLASSES)
    trees = [tuning.init_variables(model, dim, seed) for seed in seeds]
    return jax.tree.map(lambda *leaves: np.stack(leaves), *trees)


def one_by_one(method, dim, num_examples, epochs, repeats):
    """Median seconds of one `tuning.train_program` call (one head, all epochs) and its steps: the program
    `benchmarks.transfer_throughput` measures."""
    train, args, steps = transfer_throughput.make_program(method, num_examples, dim, BATCH, epochs)
    seconds = common.time_call(lambda: train(*args), repeats=repeats)["median_s"]
    return seconds, steps


def batched(method, dim, sizes, epochs, repeats):
    """Median seconds of one `many_heads.heads_program` call over len(sizes) heads and their real steps."""
    config = _config(method, epochs)
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    heads, largest = len(sizes), max(sizes)
    views = jax.device_put(
        rng.standard_normal((heads, 1, largest, dim)).astype(np.float32),
        NamedSharding(mesh, P(None, None, parallel.DATA_AXIS)),
    )
    labels = jax.device_put(
        rng.integers(0, NUM_CLASSES, (heads, largest)).astype(np.int32),
        NamedSharding(mesh, P(None, parallel.DATA_AXIS)),
    )
    variables = _variables(method, config, dim, range(heads))
    train = many_heads.heads_program(
        method,
        tuning.settings_key(config),
        NUM_CLASSES,
        mesh,
        num_examples=tuple(sizes),
        num_views=1,
        masked_classes=False,
    )
    seeds = jnp.arange(heads, dtype=jnp.int32)
    mask = jnp.ones((heads, NUM_CLASSES), bool)
    seconds = common.time_call(
        lambda: train(variables, views, labels, seeds, mask), repeats=repeats
    )["median_s"]
    return seconds, sum(epochs * tuning.steps_per_epoch(n, BATCH) for n in sizes)


def row(method, dim, path, heads, seconds, head_steps, peak, **extra):
    """One result: heads x steps/s and its matmul FLOP/s against the peak."""
    rate = head_steps / seconds
    gflop = transfer_throughput.step_matmul_flops(method, BATCH, dim, NUM_CLASSES) / 1e9
    return {
        "method": method,
        "dim": dim,
        "batch_size": BATCH,
        "path": path,
        "heads": heads,
        "head_steps_per_s": round(rate, 1),
        "call_s": round(seconds, 4),
        "matmul_gflops": round(gflop * rate, 2),
        "peak_fraction": round(gflop * rate / peak, 3),
        **extra,
    }


CELL_SIZES = (
    10000,
    5000,
    1347,
)  # Fashion-MNIST (train_limit), MNIST-5k, UCI digits training splits.


def cell(method: str, epochs: int, grouped: bool) -> dict:
    """Wall seconds of `transfer.fit_heads` for one method on a study cell's three training sets."""
    rng = np.random.default_rng(0)
    tasks = [
        features.TaskFeatures(
            name=f"task{n}",
            kind="id",
            train_domain=f"domain{n}",
            train_views=rng.standard_normal((1 + defaults.DEFAULT_VIEWS, n, 128)).astype(
                np.float32
            ),
            train_labels=rng.integers(0, NUM_CLASSES, n),
            tests={},
            num_classes=NUM_CLASSES,
        )
        for n in CELL_SIZES
    ]
    config = _config(method, epochs)
    start = time.perf_counter()
    heads = transfer.fit_heads(
        tasks, (method,), {method: config}, heads_per_program={method: 16 if grouped else 1}
    )
    common.block([h.variables for h in heads.values()])
    return {
        "method": method,
        "path": "cell_many" if grouped else "cell_one_by_one",
        "sizes": list(CELL_SIZES),
        "dim": 128,
        "epochs": epochs,
        "wall_s": round(time.perf_counter() - start, 2),
    }


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    machine = common.machine()
    peak = transfer_throughput.peak_gflops(1024 if args.quick else 2048, 3 if args.quick else 5)
    num_examples = 256 if args.quick else 2048
    epochs = 1 if args.quick else 2
    repeats = 1 if args.quick else 3
    results = []
    for method in ("lp", "nmtune"):
        for dim in (128, 512):
            common.log(f"{method} D={dim} one by one")
            seconds, steps = one_by_one(method, dim, num_examples, epochs, repeats)
            base = row(method, dim, "one_by_one", 1, seconds, steps, peak)
            results.append(base)
            for heads in (1, 4, 16):
                common.log(f"{method} D={dim} H={heads}")
                seconds, steps = batched(method, dim, [num_examples] * heads, epochs, repeats)
                out = row(method, dim, "many", heads, seconds, steps, peak)
                out["speedup"] = round(out["head_steps_per_s"] / base["head_steps_per_s"], 2)
                results.append(out)
            sizes = [num_examples // 2**i for i in range(4)]
            common.log(f"{method} D={dim} ragged {sizes}")
            seconds, steps = batched(method, dim, sizes, epochs, repeats)
            out = row(method, dim, "ragged", len(sizes), seconds, steps, peak, sizes=sizes)
            out["speedup"] = round(out["head_steps_per_s"] / base["head_steps_per_s"], 2)
            results.append(out)
    for method in ("lp", "mlp", "nmtune"):
        for grouped in (False, True):
            common.log(f"cell {method} grouped={grouped}")
            results.append(cell(method, 2 if args.quick else 30, grouped))
    common.report(
        "heads",
        machine,
        results,
        matmul_peak_gflops=round(peak, 2),
        num_examples=num_examples,
        epochs=epochs,
    )


if __name__ == "__main__":
    main()
