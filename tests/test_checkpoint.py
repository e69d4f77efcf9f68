"""Checkpoints: checksums, what is corruption and what is not, never losing the last good one, full disk."""

import errno
import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct
from orbax.checkpoint._src.path import async_path

from nml_jax import checkpoint, config_lib


@struct.dataclass
class State:
    step: jax.Array
    params: dict
    opt_state: optax.OptState


def make_state(value: float = 0.0, width: int = 4, dtype=jnp.float32) -> State:
    params = {
        "dense": {
            "kernel": jnp.full((width, 3), value, dtype),
            "bias": jnp.full((3,), value, dtype),
        }
    }
    return State(
        step=jnp.array(int(value), jnp.int32),
        params=params,
        opt_state=optax.sgd(0.1, momentum=0.9).init(params),
    )


def abstract(**kwargs):
    return jax.eval_shape(lambda: make_state(**kwargs))


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(checkpoint, "RETRY_DELAYS", (0.0, 0.0))


def saved(workdir, steps=(4, 8), async_save=False):
    ckpt = checkpoint.Checkpointer(str(workdir), async_save=async_save)
    for step in steps:
        ckpt.save(step, make_state(float(step)))
    ckpt.close()
    return os.path.join(str(workdir), checkpoint.CHECKPOINT_DIR)


def restore(workdir, **kwargs):
    ckpt = checkpoint.Checkpointer(str(workdir))
    try:
        return ckpt.restore(abstract(**kwargs))
    finally:
        ckpt.close()


def data_files(step_dir):
    """The OCDBT files the arrays are read from (b-tree nodes that hold these tiny arrays inline)."""
    return sorted(glob.glob(os.path.join(step_dir, "default", "d", "*")))


def flip_bytes(path, count=8):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    with open(path, "wb") as f:
        f.write(bytes(data))


def listing(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_saves_are_verified_and_restore_the_newest(tmp_path):
    directory = saved(tmp_path, async_save=True)
    for step in (4, 8):
        with open(os.path.join(directory, str(step), checkpoint.MANIFEST_FILE)) as f:
            manifest = json.load(f)
        assert any(p.endswith("_METADATA") for p in manifest["files"])
        assert checkpoint.verify(os.path.join(directory, str(step)))
    step, state = restore(tmp_path)
    assert step == 8 and float(state.params["dense"]["kernel"][0, 0]) == 8.0
    assert not os.path.exists(tmp_path / checkpoint.CORRUPT_DIR)


def test_flipped_bytes_are_detected_and_the_previous_checkpoint_used(tmp_path, caplog):
    directory = saved(tmp_path)
    # Orbax reads these eight bytes without complaint (the silent corruption); the checksum does not.
    flip_bytes(data_files(os.path.join(directory, "8"))[0])
    with caplog.at_level(logging.WARNING):
        step, state = restore(tmp_path)
    assert step == 4 and float(state.params["dense"]["bias"][0]) == 4.0
    assert "sha256 mismatch" in caplog.text
    assert listing(directory) == ["4"]
    assert listing(tmp_path / checkpoint.CORRUPT_DIR) == ["8"]


@pytest.mark.parametrize(
    "damage",
    [
        "truncate_data",
        "delete_metadata",
        "empty_step_dir",
        "garbage_manifest",
    ],
)
def test_corrupt_newest_is_set_aside_and_the_older_restored(tmp_path, damage):
    directory = saved(tmp_path)
    step_dir = os.path.join(directory, "8")
    if damage == "truncate_data":
        path = data_files(step_dir)[0]
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "delete_metadata":
        os.remove(os.path.join(step_dir, "default", "_METADATA"))
    elif damage == "empty_step_dir":  # The case: both checkpoints used to be set aside.
        shutil.rmtree(step_dir)
        os.mkdir(step_dir)
    else:
        with open(os.path.join(step_dir, checkpoint.MANIFEST_FILE), "w") as f:
            f.write("{not json")
    step, state = restore(tmp_path)
    assert step == 4 and int(state.step) == 4
    assert listing(directory) == ["4"]
    assert listing(tmp_path / checkpoint.CORRUPT_DIR) == ["8"]


def test_nothing_restores_moves_nothing_and_lists_each_step(tmp_path):
    directory = saved(tmp_path)
    for step in ("4", "8"):
        flip_bytes(data_files(os.path.join(directory, step))[0])
    with pytest.raises(
        checkpoint.CheckpointError, match=r"step 8: .*sha256.*step 4: .*sha256"
    ) as e:
        restore(tmp_path)
    assert isinstance(e.value, config_lib.UserError)
    assert listing(directory) == ["4", "8"]
    assert not os.path.exists(tmp_path / checkpoint.CORRUPT_DIR)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"width": 5},
            r"\['params'\]\['dense'\]\['kernel'\]: checkpoint float32\[4, 3\], this state float32\[5, 3\]",
        ),
        (
            {"dtype": jnp.bfloat16},
            r"\['params'\]\['dense'\]\['bias'\]: checkpoint float32\[3\], this state bfloat16\[3\]",
        ),
    ],
)
def test_a_state_that_does_not_fit_is_a_config_error_and_moves_nothing(tmp_path, kwargs, message):
    directory = saved(tmp_path)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=message) as e:
        restore(tmp_path, **kwargs)
    assert os.path.join(directory, "8") in str(e.value)
    assert isinstance(e.value, config_lib.UserError)
    assert listing(directory) == ["4", "8"]
    assert not os.path.exists(tmp_path / checkpoint.CORRUPT_DIR)


def test_another_tree_is_a_config_error(tmp_path):
    directory = saved(tmp_path)
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    other = {"params": abstract().params}
    with pytest.raises(
        checkpoint.CheckpointMismatchError, match=r"\['opt_state'\].*in the checkpoint, not in"
    ):
        ckpt.restore(other)
    ckpt.close()
    assert listing(directory) == ["4", "8"]


def eio_reads(monkeypatch, failures):
    """Makes the first `failures` file reads of the checksum check raise EIO; returns the call counter."""
    calls = []
    digest = checkpoint._file_digest

    def flaky(path):
        calls.append(path)
        if len(calls) <= failures:
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        return digest(path)

    monkeypatch.setattr(checkpoint, "_file_digest", flaky)
    return calls


def test_a_transient_read_error_is_retried(tmp_path, monkeypatch):
    directory = saved(tmp_path)
    eio_reads(monkeypatch, failures=2)
    assert restore(tmp_path)[0] == 8
    assert listing(directory) == ["4", "8"]


def test_a_persisting_read_error_fails_and_moves_nothing(tmp_path, monkeypatch):
    directory = saved(tmp_path)
    calls = eio_reads(monkeypatch, failures=10**6)
    with pytest.raises(
        checkpoint.CheckpointReadError, match=r"checkpoints/8: Input/output error, 3 times"
    ):
        restore(tmp_path)
    assert len(calls) == 3  # One try and the two retries, then no older step is tried.
    assert listing(directory) == ["4", "8"]
    assert not os.path.exists(tmp_path / checkpoint.CORRUPT_DIR)


def test_a_transient_error_inside_orbax_is_retried(tmp_path, monkeypatch):
    saved(tmp_path)
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    restore_once, calls = ckpt._manager.restore, []

    def timing_out(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError(
                "DEADLINE_EXCEEDED: Error reading local file: [OS error 110: timed out]"
            )
        return restore_once(*args, **kwargs)

    monkeypatch.setattr(ckpt._manager, "restore", timing_out)
    assert ckpt.restore(abstract())[0] == 8 and len(calls) == 2
    ckpt.close()


def test_a_step_without_manifest_is_restored_unverified(tmp_path, caplog):
    # A kill between Orbax's commit and the manifest leaves a committed step without one.
    directory = saved(tmp_path)
    os.remove(os.path.join(directory, "8", checkpoint.MANIFEST_FILE))
    with caplog.at_level(logging.WARNING):
        assert restore(tmp_path)[0] == 8
    assert "unverified" in caplog.text
    assert listing(directory) == ["4", "8"]


def test_set_aside_never_overwrites_an_earlier_one(tmp_path):
    directory = saved(tmp_path)
    for expected in (["8"], ["8", "8.1"]):
        flip_bytes(data_files(os.path.join(directory, "8"))[0])
        assert restore(tmp_path)[0] == 4
        assert listing(tmp_path / checkpoint.CORRUPT_DIR) == expected
        saved(tmp_path, steps=(8,))
    assert restore(tmp_path)[0] == 8


def fail_metadata_write(monkeypatch, code=errno.ENOSPC):
    """The pytree metadata write (in Orbax's background thread) fails as on a full disk."""
    write_text = async_path.write_text

    async def full_disk(path, text):
        if path.name == "_METADATA":
            raise OSError(code, os.strerror(code), str(path))
        return await write_text(path, text)

    monkeypatch.setattr(async_path, "write_text", full_disk)


@pytest.mark.parametrize("surfaces_at", ["close", "next_save"])
def test_a_full_disk_is_one_clear_error_and_the_previous_checkpoint_survives(
    tmp_path, monkeypatch, surfaces_at
):
    directory = saved(tmp_path, steps=(4,))
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    fail_metadata_write(monkeypatch)
    ckpt.save(8, make_state(8.0))
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
        ckpt.close() if surfaces_at == "close" else ckpt.save(12, make_state(12.0))
    assert str(e.value) == (
        f"Could not write checkpoint 8 to {directory}: No space left on device. "
        "The previous checkpoint (step 4) is intact."
    )
    assert isinstance(e.value, config_lib.UserError)
    assert listing(directory) == ["4"]  # No temporary directory is left behind.
    monkeypatch.undo()
    assert restore(tmp_path)[0] == 4


def test_restore_raw_verifies_and_moves_nothing(tmp_path):
    directory = saved(tmp_path)
    step, raw = checkpoint.restore_raw(str(tmp_path))
    assert step == 8 and float(np.asarray(raw["params"]["dense"]["kernel"])[0, 0]) == 8.0
    flip_bytes(data_files(os.path.join(directory, "8"))[0])
    step, raw = checkpoint.restore_raw(str(tmp_path))
    assert step == 4 and float(np.asarray(raw["params"]["dense"]["bias"])[0]) == 4.0
    flip_bytes(data_files(os.path.join(directory, "4"))[0])
    with pytest.raises(checkpoint.CheckpointError, match="can be restored"):
        checkpoint.restore_raw(str(tmp_path))
    assert listing(directory) == ["4", "8"]
    assert not os.path.exists(tmp_path / checkpoint.CORRUPT_DIR)


def test_error_classification():
    assert checkpoint._is_transient(OSError(errno.ESTALE, "stale"))
    assert checkpoint._is_transient(TimeoutError())
    assert checkpoint._is_transient(ValueError("UNAVAILABLE: Error reading local file"))
    assert not checkpoint._is_transient(ValueError("DATA_LOSS: Error decoding b-tree node"))
    assert not checkpoint._is_transient(
        FileNotFoundError("Metadata file (named _METADATA) does not exist")
    )
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "quota")
    assert checkpoint._describe(wrapped) == "Disk quota exceeded"
    assert checkpoint._describe(
        ValueError("RESOURCE_EXHAUSTED: [OS error 28: No space left on device]")
    ) == ("No space left on device")


TWO_PROCESSES = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {repo!r})
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from nml_jax import checkpoint, parallel
    from tests import test_checkpoint as t

    parallel.initialize()  # NML_JAX_DISTRIBUTED=1 and the coordinator come from the environment.
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), t.abstract()
    )
    ckpt = checkpoint.Checkpointer({workdir!r})
    for step in (4, 8):
        ckpt.save(step, jax.jit(lambda: t.make_state(float(step)), out_shardings=replicated)())
    ckpt.close()
    if parallel.is_main_process():  # Only process 0 verifies checksums: the others must follow its verdict.
        t.flip_bytes(t.data_files(os.path.join({workdir!r}, "checkpoints", "8"))[0])
    multihost_utils.sync_global_devices("flipped")
    ckpt = checkpoint.Checkpointer({workdir!r})
    step, state = ckpt.restore(abstract)
    ckpt.close()
    print("RESTORED", step, float(np.asarray(state.params["dense"]["bias"].addressable_data(0))[0]))
    """
)


@pytest.mark.slow
def test_two_processes_agree_on_a_corrupt_checkpoint(tmp_path):
    from tests import test_pretrain

    script = tmp_path / "child.py"
    workdir = str(tmp_path / "work")
    script.write_text(TWO_PROCESSES.format(repo=test_pretrain.REPO, workdir=workdir))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={
                **os.environ,
                "JAX_NUM_CPU_DEVICES": "1",
                "JAX_PLATFORMS": "cpu",
                "NML_JAX_DISTRIBUTED": "1",
                "NML_JAX_COORDINATOR": f"127.0.0.1:{port}",
                "NML_JAX_NUM_PROCESSES": "2",
                "NML_JAX_PROCESS_ID": str(index),
            },
            cwd=test_pretrain.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for index in range(2)
    ]
    for proc in procs:
        output = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, output[-3000:]
        assert "RESTORED 4 4.0" in output, output[-3000:]
    assert listing(os.path.join(workdir, checkpoint.CHECKPOINT_DIR)) == ["4"]
    assert listing(os.path.join(workdir, checkpoint.CORRUPT_DIR)) == ["8"]
