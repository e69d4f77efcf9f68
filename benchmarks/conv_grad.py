"""Convolution gradients on this backend: lax's own vs `benchmarks.fast_conv.Conv` (matmul kernel-gradient).

For the conv layers of the small CNN (28 px) and ResNet-18 (small stem, 32 px), times the forward pass, lax's
input-gradient, lax's kernel-gradient, `layers.kernel_gradient`, and a whole forward + backward step of
`nn.Conv` vs `layers.Conv` (both gradients). `speedup` > 1 means `layers.Conv` is faster. This is the
measurement that decides whether the models should use `layers.Conv` (they do not: see the README). Every
program is compiled with `parallel.conv_net_options()`, as the models' programs are.

    python -m benchmarks.conv_grad [--quick]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import common
from benchmarks import fast_conv as layers
from nml_jax import parallel

# (name, batch, spatial size, in channels, out channels, kernel, stride).
LAYERS = (
    ("cnn.conv1", 64, 28, 1, 32, 3, 1),
    ("cnn.conv2", 64, 14, 32, 64, 3, 1),
    ("resnet18.stem", 64, 32, 3, 64, 3, 1),
    ("resnet18.stage1", 64, 32, 64, 64, 3, 1),
    ("resnet18.stage2_down", 64, 32, 64, 128, 3, 2),
    ("resnet18.stage2", 64, 16, 128, 128, 3, 1),
    ("resnet18.stage3", 64, 8, 256, 256, 3, 1),
    ("resnet18.stage4", 64, 4, 512, 512, 3, 1),
    ("resnet18.proj", 64, 32, 64, 128, 1, 2),
)
QUICK = ("cnn.conv2", "resnet18.stage1", "resnet18.stage3")
_DIMS = ("NHWC", "HWIO", "NHWC")


def _jit(fn):
    return jax.jit(fn, compiler_options=parallel.conv_net_options())


def measure_layer(name, batch, size, c_in, c_out, kernel, stride, repeats):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, c_in)), jnp.float32)
    strides = (stride, stride)
    pads = layers.explicit_padding("SAME", (size, size), (kernel, kernel), strides)
    module_kwargs = dict(
        features=c_out, kernel_size=(kernel, kernel), strides=stride, use_bias=False
    )
    params = nn.Conv(**module_kwargs).init(jax.random.key(0), x)
    k = params["params"]["kernel"]

    def conv(x, k):
        return lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=_DIMS)

    g = jnp.ones_like(conv(x, k))

    def step(module):
        return _jit(jax.grad(lambda p, x: jnp.sum(jnp.square(module.apply(p, x))), argnums=(0, 1)))

    fns = {
        "forward": _jit(conv),
        "lax_input_grad": _jit(lambda x, k: jax.vjp(lambda v: conv(v, k), x)[1](g)[0]),
        "lax_kernel_grad": _jit(lambda x, k: jax.vjp(lambda w: conv(x, w), k)[1](g)[0]),
        "matmul_kernel_grad": _jit(
            lambda x, k: layers.kernel_gradient(x, g, (kernel, kernel), strides, pads)
        ),
    }
    result = {
        "layer": name,
        "input": [batch, size, size, c_in],
        "kernel": [kernel, kernel, c_in, c_out],
        "stride": stride,
    }
    for key, fn in fns.items():
        result[f"{key}_ms"] = round(
            1000 * common.time_call(lambda f=fn: f(x, k), repeats=repeats)["median_s"], 2
        )
    for key, module in (
        ("nn_conv", nn.Conv(**module_kwargs)),
        ("layers_conv", layers.Conv(**module_kwargs)),
    ):
        fn = step(module)
        result[f"{key}_fwd_bwd_ms"] = round(
            1000 * common.time_call(lambda f=fn: f(params, x), repeats=repeats)["median_s"], 2
        )
    result["speedup"] = round(result["nn_conv_fwd_bwd_ms"] / result["layers_conv_fwd_bwd_ms"], 2)
    return result


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    machine = common.machine()
    results = []
    for spec in LAYERS:
        if args.quick and spec[0] not in QUICK:
            continue
        common.log(f"conv layer {spec[0]}")
        results.append(measure_layer(*spec, repeats=3 if args.quick else 5))
    common.report("conv_grad", machine, results)


if __name__ == "__main__":
    main()
