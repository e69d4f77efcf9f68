"""The entry point: dispatch, config.json, and clear errors for bad configs."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from nml_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, workdir):
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
    cmd = [sys.executable, "-m", "nml_jax.main", f"--workdir={workdir}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_noise_stage_writes_config_and_noise(tmp_path):
    proc = _main(
        "--config=configs/noise.py:ratio=0.1", "--config.train_split=train[:2000]", workdir=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["stage"] == "noise" and config["noise"]["ratio"] == 0.1
    with np.load(tmp_path / "noise.npz") as f:
        assert f["is_noisy"].sum() == 200
        assert f["transition"].shape == (10, 10)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=configs/noise.py", "--config.noise.ratoi=0.1"], "ratoi"),
        (
            ["--config=configs/noise.py", "--config.stage=pretrian"],
            "config.stage='pretrian' is not valid",
        ),
        (
            ["--config=configs/noise.py:ratio=1.5"],
            r"noise.ratio=1.5 is not valid; expected a number in \[0.0, 1.0\)",
        ),
        (["--config=configs/noise.py:ration=0.1"], "Unknown config variant 'ration'"),
        (["--config=configs/nosie.py"], "nosie.py"),
        (
            ["--config=configs/nmtune.py:smoke", "--config.transfer.nmtune.svd_weight=-1"],
            r"config.transfer.nmtune.svd_weight=-1.0 is not valid",
        ),
        (
            ["--config=configs/nmtune.py:smoke", "--config.pretrain.model.name=resnet7"],
            r"config.pretrain.model.name='resnet7' is not valid",
        ),
        (
            ["--config=configs/study.py:smoke", "--config.views.mode=bnak"],
            r"config.views.mode='bnak' is not valid",
        ),
        (
            ["--config=configs/pretrain.py", "--config.optimizer.lr=abc"],
            r"^Command-line error: flag --config.optimizer.lr=abc: could not convert string to float",
        ),
        (
            ["--config=configs/nmtune.py", "--config.pretrain.optimizer.lrr=0.1"],
            r"^Command-line error: --config.pretrain.optimizer.lrr names no key of the config "
            r"\(no 'lrr' there; did you mean 'lr'\?\)",
        ),
        (
            ["--config=configs/pretrain.py", "--config.seed=1.5"],
            r"^Command-line error: flag --config.seed=1.5: invalid literal for int",
        ),
    ],
)
def test_bad_config_fails_with_message(tmp_path, args, message):
    """Every bad value fails at start, before any work: nothing is written to the workdir."""
    proc = _main(*args, workdir=tmp_path / "w")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[
        -1
    ]  # One line says it all: no traceback, no usage text.
    assert re.search(message, last), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "helpshort" not in proc.stderr
    assert not (tmp_path / "w").exists()


def test_configs_load_without_tensorflow_or_jax():
    code = (
        "import sys; from nml_jax import config_lib\n"
        "for spec in ('nmtune.py:smoke', 'study.py', 'clip_yfcc15m.py', 'pretrain_imagenet.py'):\n"
        "    config_lib.load_config('configs/' + spec)\n"
        "print(sorted(m for m in ('tensorflow', 'jax') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("config", ["noise.py", "pretrain.py", "pretrain_imagenet.py"])
def test_optional_fields_take_command_line_values(tmp_path, config):
    """Fields that default to None (data_dir, total_steps, ...) accept typed `--config.*` overrides: the run
    gets as far as looking for the dataset in the given data_dir."""
    proc = _main(
        f"--config=configs/{config}",
        "--config.dataset=imagenet2012",
        f"--config.data_dir={tmp_path / 'tfds'}",
        *([] if config == "noise.py" else ["--config.total_steps=3"]),
        workdir=tmp_path / "w",
    )
    assert proc.returncode != 0
    assert "'imagenet2012' is not prepared in " + str(tmp_path / "tfds") in proc.stderr, (
        proc.stderr[-2000:]
    )


def test_parse_arg_types():
    arg = config_lib.parse_arg(
        "noise=0,smoke,name=abc,ratios=(0.1,0.2)", noise=0.2, smoke=False, name="x", ratios=()
    )
    assert arg.noise == 0.0 and isinstance(arg.noise, float)
    assert arg.smoke is True and arg.name == "abc" and arg.ratios == (0.1, 0.2)
    with pytest.raises(config_lib.ConfigError, match="expected a float"):
        config_lib.parse_arg("noise=abc", noise=0.2)
