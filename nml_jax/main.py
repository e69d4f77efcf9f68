"""Entry point: `python -m nml_jax.main --config=configs/<name>.py[:variant] --workdir=DIR`.

Parses the config, validates it with the stage's `validate(config)` before any work, sets up processes
(multi-host when asked), writes `<workdir>/config.json` and calls the stage's `run(config, workdir)`. Each stage
is the module of the same name in nml_jax.
"""

from __future__ import annotations

import importlib
import logging as pylogging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# OpenBLAS threads compete with XLA's for the same cores: an NMTune step ran 1.4x slower idle, 4x under load
# (measured on 2 cores). It must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from absl import app, flags, logging
from ml_collections import config_flags

from nml_jax import config_lib

# Pipeline order; stage `s` is the module nml_jax.<s>, with `validate(config)` and `run(config, workdir)`.
STAGES = (
    "noise",
    "pretrain",
    "clip_pretrain",
    "features",
    "analyze",
    "transfer",
    "nmtune",
    "nmtune_text",
    "study",
    "report",
)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/nmtune.py:smoke.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the stage's outputs.")


class _QuietLibraries(pylogging.Filter):
    """Orbax logs every save, restore and metadata write at INFO; keep only its warnings."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def stage_module(config):
    """The module of `config.stage`, after its `validate(config)` passed; a ConfigError names the bad key."""
    if "stage" not in config:
        raise config_lib.ConfigError(f"The config has no `stage`; expected one of {list(STAGES)}.")
    config_lib.check_choice("stage", config.stage, STAGES)
    module = importlib.import_module(f"nml_jax.{config.stage}")
    module.validate(config)
    return module


def run(config, workdir: str):
    """Validates `config`, then runs `config.stage` in `workdir` and returns what the stage returns."""
    stage = stage_module(config)
    from nml_jax import parallel

    parallel.initialize(config.get("distributed", None))
    if parallel.is_main_process():
        config_lib.write_config(config, workdir)
    parallel.log_topology()
    return stage.run(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
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
