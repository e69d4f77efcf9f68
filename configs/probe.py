"""Linear probing (the paper's recipe) on the embedded ID and OOD suite, plus the feature spectrum.

On a pre-trained checkpoint (a pretrain workdir):
    python -m nml_jax.main --config=configs/probe.py --workdir=workdirs/probe \
        --config.pretrained=workdirs/pretrain
On black-box features (see README, "Your own features"):
    python -m nml_jax.main --config=configs/probe.py --workdir=workdirs/probe_npz \
        --config.features_npz=my_features.npz
Variants: `:methods=lp+mlp+nmtune` runs the tuned heads too; `:train_limit=N` caps each training split.
"""

from nml_jax import config_lib, defaults


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, methods="lp", train_limit=0, suite="embedded")
    config = defaults.downstream(tuple(arg.methods.split("+")), arg.suite)
    config.stage = "transfer"
    if arg.train_limit:
        config.train_limit = arg.train_limit
    config.title = "Linear probing on frozen features"
    return config
