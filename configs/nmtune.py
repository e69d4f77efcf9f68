"""The main job: the embedded noisy-model study at one noise level, end to end.

Noise -> pre-training of the small CNN on noisy Fashion-MNIST (or the checkpoint already in the workdir) ->
features -> spectrum (SVE, LSVR) -> LP, MLP and NMTune on the embedded ID and OOD tasks -> results.csv,
spectrum.json, report.md, figures/.

    python -m nml_jax.main --config=configs/nmtune.py --workdir=workdirs/main
    python -m nml_jax.main --config=configs/nmtune.py:noise=0.2,seed=1 --workdir=workdirs/n20_s1
    python -m nml_jax.main --config=configs/nmtune.py:smoke --workdir=/tmp/smoke     # same path, ~1 minute
Views (README "NMTune as implemented"): `views=bank` (default; `k=4` cached augmented views per training example),
`views=online` (two fresh augmentations through the encoder every step: the official recipe), `views=none`.
NMTune on black-box features (any model, any API) instead of our own encoder:
    python -m nml_jax.main --config=configs/nmtune.py --workdir=workdirs/api \
        --config.features_npz=my_features.npz
"""

from nml_jax import config_lib, defaults


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        noise=0.1,
        seed=0,
        smoke=False,
        views="bank",
        k=defaults.DEFAULT_VIEWS,
        train_limit=10000,
    )
    return defaults.nmtune(**arg.to_dict())
