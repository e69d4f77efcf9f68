"""ResNet convolutions on XLA:CPU: the backend's options against PyTorch eager, in the same run.

For each candidate (a set of XLA_FLAGS: XLA:CPU's YNNPACK, XNNPACK and oneDNN paths, Eigen threading), a fresh
process measures our ResNet (`models.get`) on random data:
  - `train`: the real jitted pre-training step (`pretrain_throughput.make_step`: SGD momentum, weight decay,
    batch-norm updates) in images/s;
  - `forward`: the frozen encoder's eval forward (`train=False`, jitted), images/s, as feature extraction runs;
  - `max_rel_diff`: the largest |difference| / max |reference| of its logits and of every parameter gradient on a
    fixed batch, against the `default` candidate (the numerical check: an option is adopted only if it is exact
    to float32 round-off).
PyTorch (`torch_models.TorchResNet`, the same architecture, NCHW, `torch.set_num_threads(2)`) is measured in its
own process in the same run: an SGD-momentum training step and a `no_grad` eval forward.

Cases: ResNet-18 with the small stem at 32 px (train batch 64, forward batch 256); `--resnet50` adds ResNet-50 at
224 px (train batch 16, forward batch 32: several minutes per candidate on 2 cores) and EfficientNet-Lite0 at
224 px (forward only, batch 32; PyTorch: the `efficientnet_lite_pytorch` wheel's model).

    python -m benchmarks.xla_cpu_options [--quick] [--resnet50] [--candidates=default,ynn_conv,...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

# name -> XLA_FLAGS added to the environment's. `default` is jaxlib's own configuration (the programs here are
# compiled without `parallel.conv_net_options()`, so the flags alone decide; `no_ynn` is what those options set).
CANDIDATES = {
    "default": "",
    "ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",
    "no_ynn": "--xla_cpu_experimental_ynn_fusion_type=",
    "no_ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot",
    "no_ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "ynn_eltwise_reduce": "--xla_cpu_experimental_ynn_fusion_type=eltwise,reduce",
    "xnn_graph": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "eigen_one_thread": "--xla_cpu_multi_thread_eigen=false",
    "no_ynn_one_thread": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_multi_thread_eigen=false",
}
# name -> (model kwargs, image shape HWC, train batch (None: forward only), forward batch, classes).
CASES = {
    "resnet18": ({"name": "resnet18", "stem": "small"}, (32, 32, 3), 64, 256, 10),
    "resnet50": ({"name": "resnet50", "stem": "imagenet"}, (224, 224, 3), 16, 32, 1000),
    "efficientnet_lite0": ({"name": "efficientnet_lite0"}, (224, 224, 3), None, 32, 1000),
}
TORCH_THREADS = 2


def _timed(fn, steps: int, repeats: int) -> float:
    """Median seconds per call of `fn` over `repeats` runs of `steps` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - start) / steps)
    return sorted(times)[len(times) // 2]


# ---------------------------------------------------------------------------------------------------------------
# Workers: each runs in its own process (XLA_FLAGS are read once, when JAX starts).


def jax_worker(case: str, steps: int, repeats: int, out: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import common, pretrain_throughput
    from nml_jax import models

    kwargs, shape, train_batch, forward_batch, classes = CASES[case]
    model_kwargs = {k: v for k, v in kwargs.items() if k != "name"}
    result = {}
    if train_batch:
        step, state, batch = pretrain_throughput.make_step(
            kwargs["name"], model_kwargs, "float32", shape, train_batch, compiler_options={}
        )
        holder = [state]

        def train():
            holder[0], metrics = step(holder[0], batch)
            common.block(metrics["loss"])

        result["train_images_per_s"] = round(train_batch / _timed(train, steps, repeats), 1)
    train_batch = train_batch or forward_batch

    model = models.get(kwargs["name"], classes, **model_kwargs)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((forward_batch, *shape)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    forward_s = _timed(lambda: common.block(forward(variables, x)), max(1, steps // 2), repeats)

    labels = jnp.asarray(rng.integers(0, classes, train_batch), jnp.int32)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x[:train_batch], train=False)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    grads = jax.jit(jax.grad(loss))(variables["params"])
    logits = forward(variables, x)[0]
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    np.savez(
        out,
        logits=np.asarray(logits),
        **{jax.tree_util.keystr(p): np.asarray(g) for p, g in leaves},
    )
    return {**result, "forward_images_per_s": round(forward_batch / forward_s, 1)}


def _torch_net(case: str):
    kwargs, _, _, _, classes = CASES[case]
    if kwargs["name"] == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=224)
        return net, lambda x: net.extract_features(x).mean(dim=(2, 3))
    from benchmarks import torch_models

    depth = int(kwargs["name"].removeprefix("resnet"))
    net = torch_models.TorchResNet(depth, classes, stem=kwargs["stem"])
    return net, net.features


def torch_worker(case: str, steps: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(TORCH_THREADS)
    _, (h, w, c), train_batch, forward_batch, classes = CASES[case]
    net, features = _torch_net(case)
    result = {}
    if train_batch:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        x = torch.randn(train_batch, c, h, w)
        y = torch.randint(0, classes, (train_batch,))

        def train():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()

        net.train()
        result["train_images_per_s"] = round(train_batch / _timed(train, steps, repeats), 1)
    net.eval()
    xf = torch.randn(forward_batch, c, h, w)

    def forward():
        with torch.no_grad():
            features(xf)

    forward_s = _timed(forward, max(1, steps // 2), repeats)
    return {**result, "forward_images_per_s": round(forward_batch / forward_s, 1)}


# ---------------------------------------------------------------------------------------------------------------
# The driver.


def _run_worker(args: list[str], flags: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.xla_cpu_options", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_rel_diff(path: str, reference: str) -> dict:
    """Largest |a - b| / max |b| over the logits and over all gradient leaves."""
    import numpy as np

    with np.load(path) as a, np.load(reference) as b:

        def rel(k):
            return float(np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(b[k]))), 1e-30))

        grads = [rel(k) for k in b.files if k != "logits"]
        return {"logits": rel("logits"), "grads": max(grads)}


def run_case(case: str, candidates: list[str], steps: int, repeats: int, tmp: str) -> list[dict]:
    from benchmarks import common

    rows = []
    common.log(f"{case}: torch")
    torch_row = _run_worker(
        ["--worker=torch", f"--case={case}", f"--steps={steps}", f"--repeats={repeats}"], ""
    )
    rows.append({"case": case, "framework": "pytorch", "threads": TORCH_THREADS, **torch_row})
    reference = os.path.join(tmp, f"{case}_default.npz")
    for name in candidates:
        common.log(f"{case}: {name}")
        out = os.path.join(tmp, f"{case}_{name}.npz")
        args = [
            "--worker=jax",
            f"--case={case}",
            f"--steps={steps}",
            f"--repeats={repeats}",
            f"--out={out}",
        ]
        row = {"case": case, "framework": "jax", "candidate": name, "xla_flags": CANDIDATES[name]}
        row.update(_run_worker(args, CANDIDATES[name]))
        if "error" not in row and os.path.exists(reference):
            row["max_rel_diff"] = max_rel_diff(out, reference)
        for key in ("train_images_per_s", "forward_images_per_s"):
            if key in row and key in torch_row:
                row[key.replace("images_per_s", "vs_torch")] = round(row[key] / torch_row[key], 2)
        rows.append(row)
    return rows


def main():
    from benchmarks import common

    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["jax", "torch"], default=None)
    p.add_argument("--case", default="resnet18", choices=sorted(CASES))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--resnet50", action="store_true")
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    args = p.parse_args()
    if args.worker == "jax":
        print(json.dumps(jax_worker(args.case, args.steps, args.repeats, args.out)))
        return
    if args.worker == "torch":
        print(json.dumps(torch_worker(args.case, args.steps, args.repeats)))
        return
    candidates = args.candidates.split(",")
    unknown = sorted(set(candidates) - set(CANDIDATES))
    if unknown or candidates[0] != "default":
        raise SystemExit(
            f"--candidates: start with 'default'; known: {sorted(CANDIDATES)}; got {unknown}"
        )
    machine = common.machine()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in (
            ("resnet18", "resnet50", "efficientnet_lite0") if args.resnet50 else ("resnet18",)
        ):
            big = case != "resnet18"
            steps = args.steps or (2 if big or args.quick else 10)
            repeats = args.repeats or (1 if args.quick else 3)
            results += run_case(case, candidates, steps, repeats, tmp)
    common.report("xla_cpu_options", machine, results)


if __name__ == "__main__":
    main()
