"""Entry point: `python -m nml_jax.main --config=configs/<name>.py[:variant] --workdir=DIR`.

Parses the config, sets up processes (multi-host when asked), writes `<workdir>/config.json` and dispatches
on `config.stage` to that stage's `run(config, workdir)`.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nml_jax import config_lib  # noqa: E402

# Stage name -> module whose `run(config, workdir)` runs it.
STAGES = {
    "noise": "nml_jax.noise",
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/nmtune.py:smoke.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the stage's outputs.")


def stage_module(stage: str):
    """Imports the module that runs `stage`, or raises ConfigError listing the known stages."""
    config_lib.check_choice("stage", stage, sorted(STAGES))
    return importlib.import_module(STAGES[stage])


def run(config, workdir: str):
    """Runs `config.stage` in `workdir` and returns what the stage returns."""
    if "stage" not in config:
        raise config_lib.ConfigError(f"The config has no `stage`; expected one of {sorted(STAGES)}.")
    module = stage_module(config.stage)
    from nml_jax import parallel

    parallel.initialize(config.get("distributed", None))
    if parallel.is_main_process():
        config_lib.write_config(config, workdir)
    parallel.log_topology()
    return module.run(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required, e.g. --workdir=workdirs/run1.")
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except config_lib.ConfigError as e:
        logging.error("%s", e)
        raise SystemExit(f"Config error: {e}") from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
