"""The workdir guards: one run at a time, and no output reused or replaced under another config."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from nml_jax import config_lib, files, main, noise, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(path):
    """Every file under `path` with its size and mtime: what a refused run must leave untouched."""
    return {
        os.path.join(d, f): (
            os.path.getsize(os.path.join(d, f)),
            os.path.getmtime(os.path.join(d, f)),
        )
        for d, _, names in os.walk(path)
        for f in names
    }


def _noise_config(*overrides: str):
    config = config_lib.load_config("configs/noise.py:" + ",".join(overrides))
    with config.unlocked():
        config.train_split = "train[:500]"
    return config


def _pretrain_config(*overrides: str, **fields):
    config = config_lib.load_config("configs/pretrain.py:" + ",".join(("smoke", *overrides)))
    with config.unlocked():
        config.update({"train_examples": 128, "total_steps": 2, "log_every_steps": 1, **fields})
    return config


def test_lock_is_exclusive_and_released(tmp_path):
    with workdir.lock(str(tmp_path)):
        holder = json.loads((tmp_path / workdir.LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with (
            pytest.raises(workdir.WorkdirError, match=f"in use by another run .*pid {os.getpid()}"),
            workdir.lock(str(tmp_path)),
        ):
            pass
    assert not (tmp_path / workdir.LOCK_FILE).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"host": workdir.socket.gethostname(), "pid": dead.pid, "since": time.time()}
    (tmp_path / workdir.LOCK_FILE).write_text(json.dumps(holder))
    with workdir.lock(str(tmp_path)):
        assert json.loads((tmp_path / workdir.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_second_run_in_a_busy_workdir_exits_at_once(tmp_path):
    with workdir.lock(str(tmp_path)):
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "nml_jax.main",
                "--config=configs/noise.py",
                f"--workdir={tmp_path}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.perf_counter() - start
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Workdir error: ")
    assert f"pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 60
    assert os.listdir(tmp_path) == []  # Not even config.json.


def test_differing_keys_names_old_and_new_and_ignores_cadence():
    old = {"seed": 0, "model": {"name": "cnn"}, "log_every_steps": 10, "pairs": [1, 2]}
    new = {"seed": 1, "model": {"name": "vit"}, "log_every_steps": 99, "pairs": (1, 2), "extra": 1}
    assert workdir.differing_keys(old, new) == [
        "extra: '(absent)' -> 1",
        "model.name: 'cnn' -> 'vit'",
        "seed: 0 -> 1",
    ]


def test_noise_stage_refuses_other_settings_and_overwrite_moves_aside(tmp_path):
    wd = str(tmp_path)
    main.run(_noise_config("ratio=0.1"), wd)
    before = _tree(wd)
    with pytest.raises(workdir.WorkdirError, match=r"ratio: 0\.1 -> 0\.2"):
        main.run(_noise_config("ratio=0.2"), wd)
    assert _tree(wd) == before  # Neither noise.npz nor config.json replaced.
    with pytest.raises(workdir.WorkdirError, match=r"seed: 0 -> 3"):
        main.run(_noise_config("ratio=0.1", "seed=3"), wd)

    config = _noise_config("ratio=0.2")
    with config.unlocked():
        config.overwrite = True
    main.run(config, wd)
    assert float(noise.load(os.path.join(wd, noise.NOISE_FILE))["ratio"]) == 0.2
    assert files.read_json(os.path.join(wd, "config.json"))["noise"]["ratio"] == 0.2


def test_pretrain_refuses_another_seed_or_model_and_moves_nothing(tmp_path):
    """The reported failures: a finished workdir run again under another noise ratio reused the model under the
    new label, and another model name moved both good checkpoints to corrupt_checkpoints/."""
    wd = str(tmp_path)
    first = main.run(_pretrain_config("noise=0.1"), wd)
    before = _tree(wd)
    cases = [
        (("noise=0.2",), {}, r"noise\.ratio: 0\.1 -> 0\.2"),
        (("noise=0.1", "seed=1"), {}, r"noise\.seed: 0 -> 1; seed: 0 -> 1"),
        (("noise=0.1", "model=vit_tiny"), {}, r"model\.name: 'cnn' -> 'vit_tiny'"),
    ]
    for overrides, fields, message in cases:
        with pytest.raises(workdir.WorkdirError, match=message):
            main.run(_pretrain_config(*overrides, **fields), wd)
        assert _tree(wd) == before
    assert not os.path.exists(os.path.join(wd, "corrupt_checkpoints"))

    # Logging cadence is not part of the fingerprint: the finished run is recognised.
    again = main.run(_pretrain_config("noise=0.1", log_every_steps=2), wd)
    assert again["trained_steps"] == 0 and again["summary"] == first["summary"]

    moved = main.run(_pretrain_config("noise=0.2", overwrite=True), wd)
    assert moved["trained_steps"] == 2
    (aside,) = os.listdir(os.path.join(wd, workdir.OVERWRITTEN_DIR))
    old = os.path.join(wd, workdir.OVERWRITTEN_DIR, aside)
    assert files.read_json(os.path.join(old, "model.json"))["noise_ratio"] == 0.1
    assert files.read_json(os.path.join(wd, "model.json"))["noise_ratio"] == 0.2
    assert os.listdir(os.path.join(old, "checkpoints")) == ["2"]
    with np.load(os.path.join(old, noise.NOISE_FILE)) as f:
        assert float(f["ratio"]) == 0.1
