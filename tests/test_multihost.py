"""Two local `jax.distributed` processes x 2 CPU devices (coordinator on 127.0.0.1, gloo collectives) give the
results of one process x 4 devices: supervised and CLIP pre-training, features, transfer, and the launch script."""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from nml_jax import pretrain
from tests import test_pretrain as t

CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    import jax
    import numpy as np
    from nml_jax import parallel, pretrain
    from tests import test_pretrain as t

    parallel.initialize()  # NML_JAX_DISTRIBUTED=1 and the coordinator come from the environment.
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    result = pretrain.train(t.tiny_config(), {workdir!r}, t.random_data(), t.random_data(16, seed=1), 3)
    params = parallel.to_host(result["state"].params)
    if parallel.is_main_process():
        flat = {{"/".join(str(k.key) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}}
        np.savez({out!r}, accuracy=result["summary"]["test_accuracy"], **flat)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(num_processes: int, devices: int, index: int = 0, port: int = 0) -> dict[str, str]:
    """The environment of process `index` of a local run; one process runs without jax.distributed."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    env.pop("NML_JAX_DISTRIBUTED", None)
    if num_processes > 1:
        env.update(
            NML_JAX_DISTRIBUTED="1",
            NML_JAX_COORDINATOR=f"127.0.0.1:{port}",
            NML_JAX_NUM_PROCESSES=str(num_processes),
            NML_JAX_PROCESS_ID=str(index),
        )
    return env


def start_processes(command: list[str], num_processes: int, devices: int) -> list[subprocess.Popen]:
    """Starts `command` as every process of a local run (`num_processes` x `devices` CPU devices)."""
    port = free_port()
    return [
        subprocess.Popen(
            command,
            env=process_env(num_processes, devices, index, port),
            cwd=t.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for index in range(num_processes)
    ]


def wait_all(procs: list[subprocess.Popen], timeout: int = 900) -> None:
    """Waits for every process; asserts each exits 0 (showing the end of its output otherwise)."""
    try:
        for proc in procs:
            output = proc.communicate(timeout=timeout)[0].decode()
            assert proc.returncode == 0, output[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    single = pretrain.train(
        t.tiny_config(num_devices=4),
        str(tmp_path / "one"),
        t.random_data(),
        t.random_data(16, seed=1),
        3,
    )
    out = str(tmp_path / "params.npz")
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=t.REPO, workdir=str(tmp_path / "two"), out=out))
    wait_all(start_processes([sys.executable, str(script)], 2, 2))
    saved = np.load(out)
    flat = {
        "/".join(str(k.key) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(jax.device_get(single["state"].params))[
            0
        ]
    }
    assert sorted(flat) == sorted(k for k in saved.files if k != "accuracy")
    for key, value in flat.items():
        # Same global batches and global reductions; only the cross-process summation order differs.
        np.testing.assert_allclose(saved[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert float(saved["accuracy"]) == single["summary"]["test_accuracy"]


LOOP = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    import jax, jax.numpy as jnp, numpy as np
    from nml_jax import parallel

    parallel.initialize()
    mesh = parallel.make_mesh()
    total = jax.jit(jnp.sum, out_shardings=parallel.replicated(mesh))
    for step in range(100000):
        x = jax.make_array_from_process_local_data(parallel.data_sharding(mesh), np.ones(1, np.float32))
        assert float(total(x)) == 2.0  # A cross-process all-reduce every step.
        if step == 20:
            print("running", flush=True)
        time.sleep(0.02)
    """
)


@pytest.mark.slow
def test_a_killed_process_makes_the_other_exit_with_one_line(tmp_path):
    """Dead host (kill -9 of process 1 during psum steps): process 0 exits 1 within a minute, its last stderr
    line says what happened, and no traceback or C++ stack is printed (JAX alone aborts after ~80 s)."""
    script = tmp_path / "loop.py"
    script.write_text(LOOP.format(repo=t.REPO))
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=process_env(2, 1, index, port),
            cwd=t.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for index in range(2)
    ]
    survivor, victim = procs
    try:
        while (line := survivor.stdout.readline()) != b"running\n":  # Gloo prints to stdout too.
            assert line, "process 0 ended before its first steps"
        victim.send_signal(signal.SIGKILL)
        start = time.monotonic()
        _, stderr = survivor.communicate(timeout=60)
        elapsed = time.monotonic() - start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        victim.wait()
    lines = stderr.decode().strip().splitlines()
    assert survivor.returncode == 1, lines[-20:]
    assert elapsed < 60
    assert lines[-1].startswith(
        "nml_jax process 0/2: a collective failed because another process is gone"
    ), lines[-20:]
    assert "by peer" in lines[-1] and "last checkpoint" in lines[-1]
    assert not any("Traceback" in line or "stack trace" in line for line in lines), lines


STAGES = os.path.join(t.REPO, "tests", "two_process_stages.py")


@pytest.fixture(scope="module")
def stage_outputs(tmp_path_factory):
    """tests/two_process_stages.py (CLIP pre-training -> features -> NMTune transfer through main.run) as one
    process x 4 devices and as two processes x 2 devices: what process 0 saved in each."""
    runs = []
    for num_processes, devices in (
        (1, 4),
        (2, 2),
    ):  # Side by side: compiling is mostly single-threaded.
        workdir = tmp_path_factory.mktemp(f"stages{num_processes}")
        out = str(workdir / "out.npz")
        runs.append(
            (
                out,
                start_processes(
                    [sys.executable, STAGES, str(workdir), out], num_processes, devices
                ),
            )
        )
    outputs = []
    for out, procs in runs:
        wait_all(procs)
        with np.load(out) as f:
            outputs.append(dict(f))
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"stage runs: {cpu.ru_utime + cpu.ru_stime:.0f} CPU-seconds in child processes so far")
    return outputs


def _part(saved: dict, prefix: str) -> dict:
    return {k: v for k, v in saved.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_two_process_clip_pretraining_matches_one_process(stage_outputs):
    one, two = (_part(s, "clip/") for s in stage_outputs)
    assert sorted(one) == sorted(two) and len(one) > 10
    np.testing.assert_array_equal(one["clip/is_noisy"], two["clip/is_noisy"])
    assert one["clip/is_noisy"].sum() == 64  # round(0.25 * 256) swapped captions, the same ones.
    for key in one:
        # The same global batches and InfoNCE over the gathered global batch; only the summation order of the
        # cross-process reductions differs. Attention key biases shift every logit of a softmax row equally, so
        # their true gradient is 0 and the computed one is round-off; Adam scales it to steps of up to lr.
        atol = 1e-3 * 6 if "['key']['bias']" in key else 1e-6
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=atol, err_msg=key)
    diff = {k: float(np.abs(two[k].astype(float) - one[k]).max()) for k in one}
    bias = max(d for k, d in diff.items() if "['key']['bias']" in k)
    rest = max(d for k, d in diff.items() if "['key']['bias']" not in k)
    print(f"CLIP two vs one process: max |diff| {rest:.1e} (attention key biases {bias:.1e})")


@pytest.mark.slow
def test_two_process_features_match_one_process(stage_outputs):
    one, two = (_part(s, "features/") for s in stage_outputs)
    assert sorted(one) == sorted(two)
    assert one["features/mnist5k_ood/train_views"].shape == (
        3,
        128,
        32,
    )  # Plain + 2 augmented views.
    assert one["features/mnist5k_ood/uci_digits"].shape == (
        100,
        32,
    )  # 100 does not split over 4 devices.
    for key in one:
        # Features of encoders whose parameters agree to 1e-6.
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
    print(
        f"features two vs one process: max |diff| {max(float(np.abs(two[k] - one[k]).max()) for k in one):.1e}"
    )


@pytest.mark.slow
def test_two_process_transfer_matches_one_process(stage_outputs):
    one, two = (_part(s, "transfer/") for s in stage_outputs)
    assert sorted(one) == [
        "transfer/fashion_mnist/fashion_mnist/nmtune",
        "transfer/mnist5k_ood/mnist5k/nmtune",
        "transfer/mnist5k_ood/uci_digits/nmtune",
    ]
    assert one == two  # The same test images classified the same way: equal accuracies.


@pytest.mark.slow
def test_local_multiprocess_script_runs_a_two_process_job(tmp_path):
    """launch/local_multiprocess.sh: two processes x 2 devices train the smoke pre-training with the overrides
    given after the device count; process 0 alone writes the workdir."""
    workdir = tmp_path / "mp"
    overrides = [
        "--config.train_examples=64",
        "--config.total_steps=2",
        "--config.log_every_steps=1",
        "--config.input.batch_size=16",
        "--config.input.eval_batch_size=16",
        "--config.test_split=test[:40]",
    ]
    script = os.path.join(t.REPO, "launch", "local_multiprocess.sh")
    env = {**os.environ, "PY": sys.executable}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    done = subprocess.run(
        ["bash", script, "configs/pretrain.py:smoke", str(workdir), "2", "2", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    logs = [(tmp_path / f"mp.process{i}.log").read_text() for i in range(2)]
    assert done.returncode == 0, done.stdout + logs[0][-2000:] + logs[1][-2000:]
    for index, log in enumerate(logs):
        assert f"process {index}/2, 2 local / 4 global devices" in log
    summary = json.loads((workdir / pretrain.SUMMARY_FILE).read_text())
    # 40 test images over 2 processes x 2 devices: padded, masked batches, each image counted once.
    assert summary["step"] == 2 and summary["test_examples"] == 40
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if "train_loss" in r]
    assert logged == [1, 2]  # One writer: each step once.


@pytest.mark.slow
def test_two_processes_stream_clip_shards_and_resume(tmp_path):
    """CLIP on 4 TFRecord shards with 2 processes (each streams its own 2 shards; shards.json, noise.npz and the
    tokenizer made once by process 0): both see the same global losses, and a run resumed at the step-2
    checkpoint logs the uninterrupted run's losses of steps 3-4."""
    from nml_jax import data
    from nml_jax.data import captions

    images = np.repeat(data.load("nml_fashion_mnist", "train[:96]")["image"], 3, axis=-1)
    captions.write_shards(
        str(tmp_path / "pairs"), images, [f"a photo of item {i}" for i in range(96)], 4
    )
    script = os.path.join(t.REPO, "tests", "two_process_clip_shards.py")
    workdir = str(tmp_path / "work")

    def run(tag):
        outs = [str(tmp_path / f"{tag}{i}.json") for i in range(2)]
        procs = [
            subprocess.Popen(
                [sys.executable, script, str(tmp_path / "pairs-*.tfrecord"), workdir, out],
                env=env,
                cwd=t.REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            for out, env in zip(outs, _envs(2))
        ]
        wait_all(procs)
        results = []
        for out in outs:
            with open(out) as f:
                results.append(json.load(f))
        return results

    first = run("first")
    assert first[0]["losses"] == first[1]["losses"] and len(first[0]["losses"]) == 4
    for name in ("shards.json", "noise.npz", "tokenizer.json"):
        assert os.path.exists(os.path.join(workdir, name)), name
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    os.remove(os.path.join(workdir, "clip_summary.json"))
    resumed = run("resumed")
    for r in resumed:
        assert r["resumed_from"] == 2
        assert r["losses"] == first[0]["losses"][2:] and r["zero_shot"] == first[0]["zero_shot"]


def _envs(num_processes: int) -> list[dict[str, str]]:
    port = free_port()
    return [process_env(num_processes, 2, index, port) for index in range(num_processes)]
