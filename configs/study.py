"""The noisy-model study: noise ratios {0, 0.05, 0.1, 0.2, 0.3} x seeds through every stage, and its report.

Each (ratio, seed) cell runs the main job (configs/nmtune.py) in `<workdir>/runs/noise<r>_seed<s>/`; finished
stages are skipped, so a stopped study is simply started again. The report sets each of the paper's claims
beside the measured numbers, with the spread over seeds.

    python -m nml_jax.main --config=configs/study.py --workdir=workdirs/study
    python -m nml_jax.main --config=configs/study.py:seeds=1,ratios=(0.0,0.3) --workdir=workdirs/quick
"""

from nml_jax import config_lib, defaults


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, seeds=3, ratios=(0.0, 0.05, 0.1, 0.2, 0.3), smoke=False)
    config = defaults.nmtune(smoke=arg.smoke)
    config.stage = "study"
    config.ratios = tuple(float(r) for r in arg.ratios)
    config.seeds = tuple(range(arg.seeds))
    config.title = "Noisy-model study on the embedded suite"
    return config
