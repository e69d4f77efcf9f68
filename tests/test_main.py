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
    ],
)
def test_bad_config_fails_with_message(tmp_path, args, message):
    proc = _main(*args, workdir=tmp_path)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr), proc.stderr[-2000:]


def test_parse_arg_types():
    arg = config_lib.parse_arg(
        "noise=0,smoke,name=abc,ratios=(0.1,0.2)", noise=0.2, smoke=False, name="x", ratios=()
    )
    assert arg.noise == 0.0 and isinstance(arg.noise, float)
    assert arg.smoke is True and arg.name == "abc" and arg.ratios == (0.1, 0.2)
    with pytest.raises(config_lib.ConfigError, match="expected a float"):
        config_lib.parse_arg("noise=abc", noise=0.2)
