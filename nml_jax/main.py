"""Entry point: `python -m nml_jax.main --config=configs/<name>.py[:variant] --workdir=DIR`.

Parses the config, validates it with the stage's `validate(config)` before any work, sets up processes
(multi-host when asked), writes `<workdir>/config.json` and calls the stage's `run(config, workdir)`. Each stage
is the module of the same name in nml_jax. Only one run works in a workdir at a time (`workdir.lock`).

Every user error (a bad flag, config value, file, model card, dataset or workdir; a full disk) ends the run with
one line on stderr naming what was wrong and exit status 1 (2 for a command-line error), never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import logging as pylogging
import os
import re
import sys

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
    """Validates `config`, then runs `config.stage` in `workdir` and returns what the stage returns.

    `<workdir>/config.json` is written at the start, unless the workdir holds the config of another run: then
    only once the stage has finished (a stage refuses to reuse output made under another config, so a refused
    run leaves the old config.json in place, describing what is there).
    """
    stage = stage_module(config)
    from nml_jax import files, parallel
    from nml_jax import workdir as workdir_lib

    parallel.initialize(config.get("distributed", None))
    parallel.log_topology()
    with workdir_lib.lock(workdir):
        previous = os.path.join(workdir, "config.json")
        changed = files.exists(previous) and _fingerprint_of(previous) != config_lib.fingerprint(
            config
        )
        if parallel.is_main_process() and not changed:
            config_lib.write_config(config, workdir)
        out = stage.run(config, workdir)
        if parallel.is_main_process() and changed:
            config_lib.write_config(config, workdir)
    return out


def _fingerprint_of(path: str) -> str | None:
    from nml_jax import files

    try:
        return config_lib.fingerprint(files.read_json(path))
    except files.FileFormatError:
        return None


# What a user error's one line starts with, by class name (the first match along the MRO).
_ERROR_LABELS = {
    "ConfigError": "Config error",
    "FeatureFileError": "Feature file error",
    "ModelCardError": "Model card error",
    "StateDictError": "Weights error",
    "DatasetError": "Dataset error",
    "WorkdirError": "Workdir error",
    "CheckpointWriteError": "Write error",
    "CheckpointError": "Checkpoint error",
    "UserError": "Error",
}
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)


def error_line(error: BaseException) -> str:
    """The one line `main` prints for a user error."""
    label = next(
        (_ERROR_LABELS[c.__name__] for c in type(error).__mro__ if c.__name__ in _ERROR_LABELS),
        "Error",
    )
    message = " ".join(str(error).split())
    return f"{label}: {message}"


def _flag_error_line(error: Exception) -> str:
    """One line for a command-line error: absl wraps errors in config files with their whole traceback, and
    ml_collections reports an unknown key as a quoted repr."""
    text = str(error)
    if "Traceback (most recent call last)" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        text = last.split(": ", 1)[1] if re.match(r"^[\w.]+(Error|Exception): ", last) else last
    if isinstance(error, flags.UnrecognizedFlagError) and "config." in text:
        return f"{text}: no such key in the config (check the spelling; `--config.KEY=VALUE` sets a key)."
    return " ".join(text.split())


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a failure reported as one line (exit status 2) instead of usage text."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"Command-line error: {_flag_error_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except AttributeError as e:  # ml_collections: `--config.a.b=..` where a has no key b.
        print(f"Command-line error: {_unknown_key_line(str(e), argv)}", file=sys.stderr)
        raise SystemExit(2) from None


def _unknown_key_line(message: str, argv: list[str]) -> str:
    """'unknown config key' naming the flag and ml_collections' suggestion, from its quoted message."""
    text = message.replace("\\n", " ").replace("\\'", "'")
    key = re.search(r"'(\w+)'", text)
    suggestion = re.search(r'Did you mean "(\w+)"', text)
    flag = next(
        (a.split("=")[0] for a in argv if key and re.search(rf"^--config\..*\b{key[1]}(=|$)", a)),
        None,
    )
    line = f"{flag or 'a --config flag'} names no key of the config"
    if key:
        line += f" (no {key[1]!r} there"
        line += f"; did you mean {suggestion[1]!r}?)" if suggestion else ")"
    return line + "."


def _config_value():
    try:
        config = _CONFIG.value
        config.get("stage")  # A config file that failed to load raises on first use.
        return config
    except OSError as e:  # The config file is missing or failed to load.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next((line for line in lines if line.startswith("[Errno")), lines[-1])
        raise SystemExit(
            f"Config error: cannot load {flags.FLAGS['config'].serialize()}: {detail}"
        ) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required, e.g. --workdir=workdirs/run1.")
    try:
        run(_config_value(), _WORKDIR.value)
    except config_lib.UserError as e:
        logging.error("%s", e)
        raise SystemExit(error_line(e)) from None
    except OSError as e:
        if e.errno not in _DISK_ERRNOS:
            raise
        logging.error("%s", e)
        where = f" ({e.filename})" if e.filename else ""
        raise SystemExit(
            f"Write error: {os.strerror(e.errno)}{where}. Free space or fix the permissions and run again: "
            "finished outputs and the last complete checkpoint are kept."
        ) from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)
