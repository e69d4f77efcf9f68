"""Devices, meshes, shardings and multi-host set-up.

Every program runs the same code on every host. Batches enter `jax.jit` as global arrays built from each host's
local part with `jax.make_array_from_process_local_data`, sharded over the mesh's `data` axis. Parameters are
replicated, or sharded over the same axis when FSDP is asked for (big ViTs / ResNets).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
_initialized = False


# A dead or hung process is declared lost after this many seconds without a heartbeat (JAX's default is 100 s);
# heartbeats run on their own thread, so long compiles or steps do not delay them.
HEARTBEAT_TIMEOUT_S = 20
# How long a process that finishes waits for the others to finish too (JAX's default is 300 s).
SHUTDOWN_TIMEOUT_S = 60
# Text of a collective that failed because its peer is gone (CPU/Gloo); on GPU a dead peer hangs the collective
# instead, and the heartbeat timeout ends it.
_LOST_PEER = re.compile(
    r"Connection (closed|reset) by peer|Socket closed|Broken pipe", re.IGNORECASE
)


def initialize(distributed: Any = None) -> None:
    """Calls `jax.distributed.initialize` when the config or the environment asks for it.

    `distributed` is a config (or dict) with optional `coordinator_address`, `num_processes`, `process_id`,
    `local_device_ids`, `heartbeat_timeout_seconds`, `shutdown_timeout_seconds`; an empty one lets JAX detect the
    cluster (TPU pod, SLURM). The environment variable NML_JAX_DISTRIBUTED=1 (with optional NML_JAX_COORDINATOR,
    NML_JAX_NUM_PROCESSES, NML_JAX_PROCESS_ID) does the same without a config change, which is what the launch
    scripts use.

    When another process dies, a collective that fails on it ends this process with status 1 and one line on
    stderr; a process that hangs is declared lost by the runtime after HEARTBEAT_TIMEOUT_S seconds (JAX then aborts
    with its own C++ message, which no Python code can replace in this JAX version).
    """
    global _initialized
    if _initialized:
        return
    kwargs: dict[str, Any] = {}
    if distributed is not None:
        kwargs = {k: v for k, v in dict(distributed).items() if v is not None and k != "enabled"}
        if not dict(distributed).get("enabled", True):
            return
    elif os.environ.get("NML_JAX_DISTRIBUTED", "0") == "1":
        env = {
            "coordinator_address": os.environ.get("NML_JAX_COORDINATOR"),
            "num_processes": os.environ.get("NML_JAX_NUM_PROCESSES"),
            "process_id": os.environ.get("NML_JAX_PROCESS_ID"),
        }
        kwargs = {k: (int(v) if k != "coordinator_address" else v) for k, v in env.items() if v}
    else:
        return
    kwargs.setdefault("heartbeat_timeout_seconds", HEARTBEAT_TIMEOUT_S)
    kwargs.setdefault("shutdown_timeout_seconds", SHUTDOWN_TIMEOUT_S)
    jax.distributed.initialize(**kwargs)
    _initialized = True
    if jax.process_count() > 1:
        _install_excepthook()


def _stop(message: str) -> None:
    """Prints `message` as the last line of stderr and ends the process at once.

    os._exit skips JAX's exit hook, which would wait for the lost process at a shutdown barrier and then abort.
    """
    sys.stderr.write(f"\nnml_jax process {jax.process_index()}/{jax.process_count()}: {message}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)


def _install_excepthook() -> None:
    """An uncaught error from a collective whose peer is gone ends the process with one line (no traceback, no
    wait at JAX's shutdown barrier for the dead process); other errors print their traceback as usual."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not _LOST_PEER.search(str(value)):
            previous(kind, value, tb)
            return
        _stop(
            "a collective failed because another process is gone "
            f"({' '.join(str(value).split())[:300]}); stopping. Restart every process of the run: it resumes "
            "from its last checkpoint."
        )

    sys.excepthook = hook


def is_main_process() -> bool:
    """Only process 0 writes files."""
    return jax.process_index() == 0


def log_topology() -> None:
    logging.info(
        "process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )


def conv_net_options(train: bool = False) -> dict[str, str]:
    """XLA compiler options for programs that run a convolutional network (`jax.jit(..., compiler_options=)`).

    On CPU, jaxlib 0.10's default hands convolutions and dots to YNNPACK, slower here for conv nets than Eigen's
    kernels, while YNNPACK's element-wise and reduction kernels make batch norm's training pass faster. So an eval
    forward turns YNNPACK off, and a training step (`train=True`) keeps only its element-wise and reduction
    fusions. ResNet-18, 32 px, 2 cores, against the default: eval forward about 1.6x, training step about
    1.3-1.4x (`benchmarks/xla_cpu_options.py`). The dense heads keep the default (NMTune at D = 2048: 7.9 vs 4.3
    steps/s with YNNPACK), so the choice is made per program, not per process. Results differ from the default
    by float32 round-off only. Other backends: no options.
    """
    if jax.default_backend() != "cpu":
        return {}
    kinds = "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE" if train else ""
    return {"xla_cpu_experimental_ynn_fusion_type": kinds}


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over the first `num_devices` devices (all by default)."""
    devices = jax.devices()
    if num_devices is not None:
        if num_devices > len(devices):
            raise ValueError(f"Asked for {num_devices} devices, but only {len(devices)} exist.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `data`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = 2**16) -> P:
    """Shards the largest dimension divisible by `num_shards` over `data`; small arrays stay replicated."""
    if int(np.prod(shape, dtype=np.int64)) < min_size or num_shards == 1:
        return P()
    for dim in np.argsort(shape)[::-1]:
        if shape[dim] % num_shards == 0:
            spec = [None] * len(shape)
            spec[dim] = DATA_AXIS
            return P(*spec)
    return P()


def param_shardings(abstract_tree: Any, mesh: Mesh, fsdp: bool = False) -> Any:
    """Shardings for a pytree of (abstract) arrays: replicated, or FSDP-sharded when `fsdp`."""
    num_shards = mesh.shape[DATA_AXIS]

    def spec(leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, fsdp_spec(tuple(shape), num_shards) if fsdp else P())

    return jax.tree.map(spec, abstract_tree)


def check_global_batch(global_batch: int, mesh: Mesh, name: str = "batch_size") -> int:
    """Checks the global batch splits evenly over devices and processes; returns the per-process batch."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch % devices:
        raise ValueError(
            f"config.{name}={global_batch} must be divisible by the number of devices ({devices})."
        )
    if global_batch % processes:
        raise ValueError(
            f"config.{name}={global_batch} must be divisible by the number of processes ({processes})."
        )
    return global_batch // processes


def to_global(local_batch: Any, mesh: Mesh) -> Any:
    """Builds global arrays sharded over `data` from this process's part of the batch."""
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def to_host(tree: Any) -> Any:
    """Fetches (possibly multi-host) global arrays as numpy arrays on every process."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
