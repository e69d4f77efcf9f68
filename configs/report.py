"""A report (report.md, claims.json, figures) from results.csv files made anywhere: other workdirs, other
machines, cluster jobs. Runs are matched by (noise ratio, seed); the claims need >= 3 seeds.

    python -m nml_jax.main --config=configs/report.py --workdir=workdirs/report \
        --config.results=workdirs/study/results.csv --config.spectra=workdirs/study/spectrum.json \
        --config.num_classes=10 --config.pretrain_domains=fashion_mnist

results / spectra: comma-separated paths. num_classes: chance = 1 / num_classes for every test set, to flag
near-chance sets (unset: flag nothing). pretrain_domains: test domains that hold the pre-training data (left
out of the ID claims; the embedded study's is fashion_mnist).
"""

import ml_collections

from nml_jax import defaults


def get_config(arg=None):
    del arg
    config = ml_collections.ConfigDict()
    config.stage = "report"
    config.results = ""
    config.spectra = ""
    config.num_classes = defaults.optional(int)
    config.pretrain_domains = ""
    config.title = "nml-jax report"
    return config
