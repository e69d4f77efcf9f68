"""Pre-training throughput: examples/s and step time of the real jitted train step.

Builds the model, optimizer and step with nml_jax.pretrain's own functions (`build_model`, `make_optimizer`,
`create_state`, `make_train_step`), jitted with donated state and explicit shardings as `pretrain.train`
does, and times steps on one device-resident random batch (the input pipeline is not measured).

    python -m benchmarks.pretrain_throughput [--quick] [--dtype=bfloat16]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from nml_jax import models, parallel, pretrain, trainer

# (model, model kwargs, image shape, CPU batch sizes, accelerator batch sizes).
CASES = (
    ("cnn", {}, (28, 28, 1), (32, 64, 128), (128, 256, 512)),
    ("resnet18", {"stem": "small"}, (32, 32, 3), (32, 64), (128, 256)),
    ("resnet50", {"stem": "imagenet"}, (224, 224, 3), (16,), (128, 256)),
)
QUICK_CPU = {"cnn": (64,), "resnet18": (32,), "resnet50": (8,)}
QUICK_CPU_IMAGE = {"resnet50": (64, 64, 3)}


def make_step(
    model_name: str,
    model_kwargs: dict,
    dtype: str,
    image_shape,
    batch_size: int,
    compiler_options: dict | None = None,
):
    """(train_step, state, batch) for one case, built from configs/pretrain.py and nml_jax.pretrain; compiled
    with `compiler_options` (default: `parallel.conv_net_options(train=True)`, as `pretrain.train` does)."""
    config = common.load_config("pretrain.py", f"model={model_name}")
    config.model.update({"dtype": dtype, **model_kwargs})
    num_classes = 10 if model_name != "resnet50" else 1000
    model = models.from_config(config.model, num_classes)
    schedule = trainer.learning_rate_schedule(config.optimizer.lr, 10_000, 0)
    tx = trainer.make_optimizer(config.optimizer, schedule)
    mesh = parallel.make_mesh()
    rng = jax.random.PRNGKey(0)
    abstract = jax.eval_shape(
        lambda r: trainer.create_state(model, tx, (jnp.zeros((1, *image_shape)),), r, train=False),
        rng,
    )
    shardings = parallel.param_shardings(abstract, mesh)
    state = jax.jit(
        lambda r: trainer.create_state(model, tx, (jnp.zeros((1, *image_shape)),), r, train=False),
        out_shardings=shardings,
    )(rng)
    step = jax.jit(
        pretrain.make_train_step(model, tx, 0.0, schedule),
        in_shardings=(shardings, parallel.data_sharding(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=0,
        compiler_options=parallel.conv_net_options(train=True)
        if compiler_options is None
        else compiler_options,
    )
    data_rng = np.random.default_rng(0)
    labels = data_rng.integers(0, num_classes, batch_size).astype(np.int32)
    batch = {
        "image": data_rng.standard_normal((batch_size, *image_shape)).astype(np.float32),
        "label": labels,
        "clean_label": labels,
        "is_noisy": np.zeros(batch_size, bool),
    }
    batch = jax.device_put(batch, parallel.data_sharding(mesh))
    return step, state, batch


def measure(model_name, model_kwargs, dtype, image_shape, batch_size, steps, repeats):
    """Compile time and the median seconds per step over `repeats` runs of `steps` steps."""
    step, state, batch = make_step(model_name, model_kwargs, dtype, image_shape, batch_size)
    start = time.perf_counter()
    state, _ = common.block(step(state, batch))
    compile_s = time.perf_counter() - start
    holder = [state]

    def run_steps():
        for _ in range(steps):
            holder[0], step_metrics = step(holder[0], batch)
        return step_metrics["loss"]

    timing = common.time_call(run_steps, warmup=1, repeats=repeats)
    step_s = timing["median_s"] / steps
    return {
        "model": model_name,
        **model_kwargs,
        "image_shape": list(image_shape),
        "batch_size": batch_size,
        "dtype": dtype,
        "compile_s": round(compile_s, 2),
        "step_ms": round(1000 * step_s, 2),
        "step_ms_min": round(1000 * timing["min_s"] / steps, 2),
        "examples_per_s": round(batch_size / step_s, 1),
        "steps_timed": steps * repeats,
    }


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--models", default="cnn,resnet18,resnet50", help="comma-separated subset")
    args = p.parse_args()
    machine = common.machine()
    on_cpu = jax.default_backend() == "cpu"
    wanted = args.models.split(",")
    results = []
    for name, kwargs, image_shape, cpu_batches, accel_batches in CASES:
        if name not in wanted:
            continue
        batches = cpu_batches if on_cpu else accel_batches
        if args.quick and on_cpu:
            batches, image_shape = QUICK_CPU[name], QUICK_CPU_IMAGE.get(name, image_shape)
        steps = 2 if name == "resnet50" and on_cpu else 5
        for batch_size in batches:
            common.log(f"{name} {image_shape} batch {batch_size}")
            results.append(
                measure(
                    name,
                    kwargs,
                    args.dtype,
                    image_shape,
                    batch_size,
                    steps=steps,
                    repeats=2 if args.quick else 3,
                )
            )
    common.report("pretrain_throughput", machine, results)


if __name__ == "__main__":
    main()
