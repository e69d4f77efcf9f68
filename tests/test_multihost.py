"""Two local processes x 2 CPU devices train exactly like one process x 4 devices."""

import os
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
    port = free_port()
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "JAX_NUM_CPU_DEVICES": "2",
            "JAX_PLATFORMS": "cpu",
            "NML_JAX_DISTRIBUTED": "1",
            "NML_JAX_COORDINATOR": f"127.0.0.1:{port}",
            "NML_JAX_NUM_PROCESSES": "2",
            "NML_JAX_PROCESS_ID": str(index),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                cwd=t.REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    for proc in procs:
        output = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, output[-3000:]
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
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "JAX_NUM_CPU_DEVICES": "1",
            "JAX_PLATFORMS": "cpu",
            "NML_JAX_DISTRIBUTED": "1",
            "NML_JAX_COORDINATOR": f"127.0.0.1:{port}",
            "NML_JAX_NUM_PROCESSES": "2",
            "NML_JAX_PROCESS_ID": str(index),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                cwd=t.REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
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
