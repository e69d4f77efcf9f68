"""Noise injection: corrupt a pre-training set's labels and save `<workdir>/noise.npz`.

Default: 20% symmetric label noise on the train split of the embedded Fashion-MNIST.

    python -m nml_jax.main --config=configs/noise.py --workdir=workdirs/noise
    python -m nml_jax.main --config=configs/noise.py:ratio=0.1,kind=asymmetric --workdir=workdirs/noise_asym
"""

import ml_collections

from nml_jax import config_lib, defaults


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, ratio=0.2, kind="symmetric", seed=0, dataset="nml_fashion_mnist"
    )
    config = ml_collections.ConfigDict()
    config.stage = "noise"
    config.dataset = arg.dataset
    config.data_dir = defaults.optional(str)
    config.train_split = "train"
    config.noise = defaults.noise_block(arg.kind, arg.ratio, arg.seed)
    config.overwrite = (
        False  # Make noise.npz again when it was made with other settings (else: refuse).
    )
    return config
