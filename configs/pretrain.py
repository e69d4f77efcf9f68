"""Supervised pre-training on noisy labels (embedded default: small CNN on Fashion-MNIST).

Trains the small CNN for 2 epochs on the 60k Fashion-MNIST train images with symmetric label noise
(ratio from `noise=`, default 0) and evaluates on the clean test split; a few minutes on 2 CPU cores.

    python -m nml_jax.main --config=configs/pretrain.py --workdir=workdirs/pretrain_n0
    python -m nml_jax.main --config=configs/pretrain.py:noise=0.1,seed=1 --workdir=workdirs/pretrain_n10_s1
    python -m nml_jax.main --config=configs/pretrain.py:smoke --workdir=/tmp/pretrain_smoke

Variants: noise (ratio), kind (symmetric|asymmetric|none), seed, model (a name in nml_jax.models),
epochs, batch, lr, dataset, smoke (512 examples, a few steps).
"""

from nml_jax import config_lib, defaults


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        noise=0.0,
        kind="symmetric",
        seed=0,
        model="cnn",
        epochs=2.0,
        batch=64,
        lr=0.05,
        dataset="nml_fashion_mnist",
        smoke=False,
    )
    return defaults.embedded_pretrain(**arg.to_dict())
