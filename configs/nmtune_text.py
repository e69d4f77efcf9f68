"""NMTune on language-model features: frozen all-MiniLM-L6-v2 sentence embeddings (a JAX port of the real
weights, offline) of crowd-labelled tweets and drug reviews, three sentiment classes.

ID: airline tweets (seeded stratified 80/20 split). OOD: airline -> Apple tweets, -> other topics (deflategate,
driverless cars, Coachella, Claritin), -> drugs.com reviews. LP, MLP and NMTune; results.csv and report.md as the
main job. Embedding is the cost (cached in <workdir>/features afterwards).

    python -m nml_jax.main --config=configs/nmtune_text.py --workdir=workdirs/text
    python -m nml_jax.main --config=configs/nmtune_text.py:full --workdir=workdirs/text_full   # every text
    python -m nml_jax.main --config=configs/nmtune_text.py:smoke --workdir=/tmp/text_smoke
"""

import ml_collections

from nml_jax import config_lib, defaults


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, limit=3000, full=False, smoke=False, seed=0)
    config = defaults.downstream(defaults.METHODS)
    config.views.mode = "none"  # Sentence embeddings have no image augmentations.
    config.stage = "nmtune_text"
    config.seed = arg.seed
    for method in config.transfer:
        config.transfer[method].seed = arg.seed
    config.text = ml_collections.ConfigDict(
        {
            "source": "airline",
            "targets": ("apple", "other_topics", "drug_reviews"),
            "max_len": 128,
            # At most this many texts per set (a seeded random subsample); None = all of them.
            "limit": None if arg.full else arg.limit,
            "batch_size": 128,
        },
        type_safe=False,
    )
    config.title = "NMTune on MiniLM sentence features (tweets and drug reviews)"
    if arg.smoke:
        config.text.limit = 200
        for method in config.transfer:
            config.transfer[method].epochs = 2
    return config
