"""Feature-space analysis: singular-value spectrum, SVE and LSVR of every downstream test set.

    python -m nml_jax.main --config=configs/analyze.py --workdir=workdirs/analyze \
        --config.pretrained=workdirs/pretrain
Variant `:centering=column` subtracts column means instead of the official per-row centring.
"""

from nml_jax import config_lib, defaults


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, centering="row", suite="embedded")
    config = defaults.downstream((), arg.suite)
    config.stage = "analyze"
    config.centering = arg.centering
    return config
