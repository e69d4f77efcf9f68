"""Shared pieces of the benchmarks: the machine description, a timer and the JSON report.

Every benchmark prints ONE JSON object, `{"benchmark": name, "machine": {...}, "results": [...]}`, and
accepts `--quick` for a short run. `machine` records the CPU, cores, RAM, library versions, the JAX backend
and device kind, the load average when the run started and ended, and the date, so that numbers taken on a
busy machine can be told apart.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on; `loadavg_start` is taken now (call once, at start)."""
    import jaxlib

    devices = jax.devices()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def block(value: Any) -> Any:
    """Waits for every array in `value` to be computed."""
    return jax.block_until_ready(value)


def time_call(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Median, min and max wall seconds of `fn()` (blocked until ready) after `warmup` untimed calls."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
    }


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_total = [0.0]  # Seconds counted since the listener was registered.
_listening = [False]


def _count_compile(event: str, duration: float, **kwargs) -> None:
    if event in _COMPILE_EVENTS:
        _compile_total[0] += duration


@contextlib.contextmanager
def compile_seconds():
    """Yields a dict whose 'seconds', set on exit, is the time JAX spent tracing, lowering and compiling
    inside the block (jax.monitoring's compile events; blocks may nest)."""
    if not _listening[0]:
        jax.monitoring.register_event_duration_secs_listener(_count_compile)
        _listening[0] = True
    result = {"seconds": 0.0}
    start = _compile_total[0]
    try:
        yield result
    finally:
        result["seconds"] = _compile_total[0] - start


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the `--quick` flag every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run with fewer shapes and repeats")
    return p


def report(name: str, machine_info: dict[str, Any], results: list[dict[str, Any]], **extra) -> None:
    """Prints the benchmark's one JSON object (load average at the end added) and flushes stdout."""
    machine_info = {**machine_info, "loadavg_end": [round(v, 2) for v in os.getloadavg()]}
    print(json.dumps({"benchmark": name, "machine": machine_info, "results": results, **extra}))
    sys.stdout.flush()


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the JSON object."""
    print(message, file=sys.stderr, flush=True)


def load_config(name: str, arg: str | None = None):
    """`get_config(arg)` of configs/`name` (e.g. 'pretrain.py'), as `python -m nml_jax.main` builds it."""
    from nml_jax import config_lib

    return config_lib.load_config(os.path.join(REPO, "configs", name) + (f":{arg}" if arg else ""))
