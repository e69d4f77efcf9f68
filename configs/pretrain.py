"""Supervised pre-training on noisy labels (embedded default: small CNN on Fashion-MNIST).

Trains the small CNN for 2 epochs on the 60k Fashion-MNIST train images with symmetric label noise
(ratio from `noise=`, default 0) and evaluates on the clean test split; a few minutes on 2 CPU cores.

    python -m nml_jax.main --config=configs/pretrain.py --workdir=workdirs/pretrain_n0
    python -m nml_jax.main --config=configs/pretrain.py:noise=0.1,seed=1 --workdir=workdirs/pretrain_n10_s1
    python -m nml_jax.main --config=configs/pretrain.py:smoke --workdir=/tmp/pretrain_smoke

Variants: noise (ratio), kind (symmetric|asymmetric|none), seed, model (a name in nml_jax.models),
epochs, batch, lr, dataset, smoke (512 examples, a few steps).
"""

from nml_jax import config_lib, pretrain


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
    config = pretrain.default_config()
    config.dataset = arg.dataset
    config.noise = config_lib.noise_block(arg.kind, arg.noise, arg.seed)
    config.seed = arg.seed
    config.model.name = arg.model
    config.total_epochs = arg.epochs
    config.input.batch_size = arg.batch
    config.optimizer.lr = arg.lr
    if arg.smoke:
        config.train_examples = 512
        config.total_epochs = None
        config.total_steps = 8
        config.input.eval_batch_size = 256
        config.log_every_steps = 4
        config.ckpt_every_steps = 4
    return config
