"""Training metrics: `<workdir>/metrics.jsonl`, TensorBoard event files and progress lines.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step (`{"step": s, ...}`);
TensorBoard scalars go to `<workdir>/tensorboard/`. A run resumed from step s first drops the records of steps
after s (logged by the run that was killed; they are logged again), so a resumed run's files read like an
uninterrupted run's. `Progress` logs steps/s, examples/s and the ETA.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from typing import Any

import numpy as np
from absl import logging

from nml_jax import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def check_finite(step: int, name: str, value: float) -> None:
    """Raises FloatingPointError naming `step` when `value` is NaN or infinite."""
    if not math.isfinite(value):
        raise FloatingPointError(f"{name} is {value} at step {step}; stopping the run.")


def first_non_finite(values: np.ndarray) -> int | None:
    """The index of the first NaN/inf entry of `values`, or None when all are finite."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))
    return int(bad[0]) if bad.size else None


class MetricWriter:
    """Appends scalars to `metrics.jsonl` and TensorBoard; a no-op when `enabled` is False.

    Attributes:
      history: every record written by this writer, for callers (tests) that want them.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.history: list[dict[str, Any]] = []
        self._jsonl = None
        self._events = None
        if enabled:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            files.makedirs(workdir)
            path = os.path.join(workdir, METRICS_FILE)
            if resume_step is not None:
                _drop_records_after(path, resume_step)
            self._jsonl = files.open_file(path, "a")
            self._events = EventFileWriter(os.path.join(workdir, TENSORBOARD_DIR))
            if resume_step is not None:
                self._purge_events_after(resume_step)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Writes `scalars` (name -> number) for `step`."""
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self.history.append(record)
        if not self.enabled:
            return
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
        self._jsonl.flush()
        values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in record.items()]
        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values[1:])
        )
        self._events.add_event(event)
        self._events.flush()

    def _purge_events_after(self, step: int) -> None:
        """A SessionLog START at step + 1: TensorBoard drops the earlier files' events of later steps."""
        from tensorboard.compat.proto import event_pb2

        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._events.add_event(
            event_pb2.Event(wall_time=time.time(), step=step + 1, session_log=start)
        )
        self._events.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._events.close()


def _drop_records_after(path: str, step: int) -> None:
    """Rewrites `path` (atomically) without the records of steps after `step`."""
    if not files.exists(path):
        return
    lines = io.StringIO(files.read_text(path), newline=None).readlines()
    kept = [line for line in lines if _record_step(line) <= step]
    if len(kept) != len(lines):
        files.write_text(path, "".join(kept))


def _record_step(line: str) -> float:
    """The step of a metrics.jsonl line; a torn last line (a kill mid-write) counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class Progress:
    """Measures throughput between calls and logs `step/total, steps/s, examples/s, ETA`."""

    def __init__(self, total_steps: int, examples_per_step: int, first_step: int = 0):
        self.total_steps = total_steps
        self.examples_per_step = examples_per_step
        self._last_step = first_step
        self._last_time = time.perf_counter()

    def update(self, step: int) -> dict[str, float]:
        """Logs a progress line; returns `steps_per_sec`, `examples_per_sec` and `eta_sec`."""
        now = time.perf_counter()
        steps = step - self._last_step
        steps_per_sec = steps / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self.total_steps - step) / max(steps_per_sec, 1e-9)
        logging.info(
            "step %d/%d: %.2f steps/s, %.1f examples/s, ETA %s",
            step,
            self.total_steps,
            steps_per_sec,
            steps_per_sec * self.examples_per_step,
            format_seconds(eta),
        )
        return {
            "steps_per_sec": steps_per_sec,
            "examples_per_sec": steps_per_sec * self.examples_per_step,
            "eta_sec": eta,
        }


def format_seconds(seconds: float) -> str:
    """`3725` -> `'1h02m05s'`."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
