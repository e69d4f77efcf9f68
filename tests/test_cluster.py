"""Clusters without a cluster: URL data_dirs and shards reach TensorFlow unchanged (URL workdirs:
test_url_workdir.py), and the SLURM and TPU launch scripts run against fake `srun` / `gcloud` commands."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from nml_jax import data, files
from nml_jax.data import captions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_absolute_keeps_urls_and_makes_local_paths_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for url in ("gs://bucket/tfds", "s3://b/x", "hdfs://nn:8020/d", "ram://x", "gcs://b"):
        assert files.is_url(url) and files.absolute(url) == url
    assert files.absolute("rel/dir") == str(tmp_path / "rel" / "dir")
    assert files.absolute("~/tfds") == str(tmp_path / "home" / "tfds")
    assert not files.is_url("/data/gs:/x") and not files.is_url("C:/x")


def test_url_data_dir_reaches_tfds_unchanged(monkeypatch):
    seen = []

    class Unprepared:
        def is_prepared(self):
            return False

    def fake_builder(name, data_dir):
        seen.append((name, data_dir))
        return Unprepared()

    monkeypatch.setattr(data.tfds, "builder", fake_builder)
    with pytest.raises(FileNotFoundError) as error:
        data.builder("cifar10", data_dir="gs://nml-test-bucket/tfds")
    assert seen == [("cifar10", "gs://nml-test-bucket/tfds")]
    message = str(error.value)
    assert "--data_dir=gs://nml-test-bucket/tfds`" in message
    assert "gs://nml-test-bucket/tfds/downloads/manual" in message


def test_tfrecord_shards_read_from_a_url():
    # ram:// is TensorFlow's in-memory file system: the same tf.io.gfile / TFRecordDataset path as gs://.
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    texts = [f"caption {i}" for i in range(6)]
    tf.io.gfile.makedirs("ram://nml_shards")
    written = captions.write_shards("ram://nml_shards/pairs", images, texts, num_shards=2)
    shards = captions.list_shards("ram://nml_shards/pairs-*.tfrecord")
    assert shards == written and len(shards) == 2
    assert captions.count_records(shards) == [3, 3]
    assert list(captions.first_captions(shards, None)) == texts
    tokenize = lambda t: np.array([[int(x.split()[1])] for x in t], np.int32)
    batch = next(
        captions.stream_pairs(
            shards,
            [3, 3],
            caption_index=np.arange(6),
            is_noisy=np.zeros(6, bool),
            tokenize=tokenize,
            global_batch=6,
            seed=0,
            pp="decode(1)",
            shuffle_buffer=1,
            process_index=0,
            process_count=1,
        )
    )
    assert sorted(batch["index"].tolist()) == list(range(6))
    np.testing.assert_array_equal(batch["tokens"][:, 0], batch["index"])
    order = np.asarray(batch["index"])
    # JPEG is lossy; the decoded images stay close to the originals.
    assert np.abs(batch["image"].astype(float) - images[order].astype(float)).mean() < 12


@pytest.mark.parametrize("script", ["local_multiprocess.sh", "slurm_gpu.sbatch", "tpu_pod.sh"])
def test_launch_scripts_parse(script):
    subprocess.run(["bash", "-n", os.path.join(REPO, "launch", script)], check=True)


def _executable(path, text):
    path.write_text(text)
    path.chmod(0o755)


def test_tpu_script_forwards_overrides_and_runs_detached_with_restarts(tmp_path):
    """A fake `gcloud` runs the workers' command here (HOME = a temporary dir): the run starts detached, gets
    the overrides and data_dir word for word, is restarted after a failure, and a second launch while it runs
    starts nothing."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    (home / "nml_jax" / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    _executable(
        bin_dir / "gcloud",
        '#!/usr/bin/env bash\necho "$*" >> "$HOME/gcloud.log"\n'
        'case "$4" in\n  scp) cp "$5" "$HOME/" ;;\n'
        '  ssh) while [ "$1" != --command ]; do shift; done; bash -c "$2" ;;\nesac\n',
    )
    # The worker's python: records its arguments, fails the first time, then sleeps like a long run.
    _executable(
        home / "nml_jax" / ".venv" / "bin" / "python",
        '#!/usr/bin/env bash\nprintf "%s\\n" "$NML_JAX_DATA_DIR" "$@" >> "$HOME/args"\n'
        '[ -f "$HOME/failed" ] || { touch "$HOME/failed"; exit 1; }\nsleep 30\n',
    )
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RESTART_DELAY_S": "0",
        "NML_JAX_DATA_DIR": "gs://b/tfds",
    }
    command = [
        "bash",
        os.path.join(REPO, "launch", "tpu_pod.sh"),
        "configs/pretrain_imagenet.py:noise=0.1",
        "/mnt/shared/run 1",
        "--config.input.pp_eval=decode|resize(256)",
        "--config.title=two words",
    ]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "started (pid" in first.stdout
    args = home / "args"
    deadline = time.monotonic() + 30
    while (
        not args.exists() or args.read_text().count("--workdir") < 2
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    runs = args.read_text().split("gs://b/tfds\n")[1:]
    expected = [
        "-m",
        "nml_jax.main",
        "--config=configs/pretrain_imagenet.py:noise=0.1",
        "--workdir=/mnt/shared/run 1",
        "--config.input.pp_eval=decode|resize(256)",
        "--config.title=two words",
    ]
    assert [r.splitlines() for r in runs] == [
        expected,
        expected,
    ]  # The failed start, then the restart.
    log = (home / "nml_jax" / "run.log").read_text()
    assert "start 0" in log and "start 1" in log
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert second.returncode == 0 and "already running" in second.stdout
    pid = int((home / "nml_jax" / "run.pid").read_text())
    os.killpg(pid, signal.SIGTERM)  # setsid made the run its own process group.


def test_slurm_script_maps_one_task_per_gpu_and_forwards_overrides(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "srun", '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SRUN_ARGS": str(tmp_path / "args"),
        "SLURM_SUBMIT_DIR": REPO,
        "SLURM_NTASKS_PER_NODE": "8",
        "SLURM_CPUS_PER_TASK": "6",
        "SLURM_GPUS_PER_NODE": "8",
    }
    script = os.path.join(REPO, "launch", "slurm_gpu.sbatch")
    subprocess.run(
        ["bash", script, "configs/pretrain.py", "/shared/w", "--config.seed=3"], env=env, check=True
    )
    args = (tmp_path / "args").read_text().splitlines()
    assert not any(a.startswith("--gpus-per-task") for a in args)
    assert {
        "--gpu-bind=none",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--cpus-per-task=6",
    } <= set(args)
    assert args[args.index("env") + 1 : args.index("env") + 3] == [
        "JAX_PLATFORMS=cuda",
        "NML_JAX_DISTRIBUTED=1",
    ]
    assert args[-3:] == ["--config=configs/pretrain.py", "--workdir=/shared/w", "--config.seed=3"]
