"""Two local processes x 2 CPU devices train exactly like one process x 4 devices."""

import os
import socket
import subprocess
import sys
import textwrap

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
