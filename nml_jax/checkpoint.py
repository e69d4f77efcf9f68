"""Orbax checkpoints of a training state under `<workdir>/checkpoints`.

`Checkpointer` wraps an Orbax `CheckpointManager` (async saves, keep-N). The state is restored by the shape,
dtype and sharding of an abstract state, so it lands directly in sharded arrays. A checkpoint that fails to
restore (corrupted or partial files) is moved to `<workdir>/corrupt_checkpoints/<step>` with a warning naming
the step, and the previous one is tried. Resume order (see `pretrain.py`): own workdir > `init_from` >
scratch. The data position is the step: the input pipeline is a pure function of (seed, step).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from nml_jax import parallel

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"


class Checkpointer:
    """Saves and restores one training state per step under `<workdir>/checkpoints`.

    Every process calls every method (Orbax coordinates the hosts); only the files differ by process.
    """

    def __init__(self, workdir: str, *, max_to_keep: int | None = 3, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
            ),
        )

    def steps(self) -> list[int]:
        """Steps of the finished checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Starts saving `state` as checkpoint `step` (asynchronously unless disabled)."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, abstract_state: Any) -> tuple[int, Any] | None:
        """Restores the newest checkpoint that restores cleanly, as `(step, state)`; None if none does.

        Args:
          abstract_state: the state's structure as `jax.ShapeDtypeStruct`s with shardings.
        """
        self.wait()
        for step in reversed(self.steps()):
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as e:  # Orbax/TensorStore raise many types for unreadable files.
                logging.warning(
                    "Checkpoint at step %d in %s cannot be restored (%s: %s); falling back to the "
                    "previous one.",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                )
                self._set_aside(step)
                continue
            return step, state
        return None

    def _set_aside(self, step: int) -> None:
        """Moves a bad checkpoint out of the manager's directory so the step can be saved again."""
        from jax.experimental import multihost_utils

        if parallel.is_main_process():
            target = os.path.join(self.workdir, CORRUPT_DIR, str(step))
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
            logging.warning("Moved the bad checkpoint of step %d to %s.", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"nml_jax_set_aside_{step}")
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()


def restore_raw(workdir: str) -> tuple[int, Any]:
    """The newest checkpoint of `workdir` as saved (dict of arrays), for `init_from` and inspection.

    A newest checkpoint that cannot be read (corrupted, partial) is skipped with a warning.

    Raises:
      FileNotFoundError: `workdir` holds no checkpoint.
      ValueError: none of its checkpoints can be restored.
    """
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    steps = sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(
            f"No checkpoint in {directory}; run the pretrain stage with --workdir={workdir} first."
        )
    errors = []
    with ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True)
    ) as manager:
        for step in reversed(steps):
            try:
                return step, manager.restore(step, args=ocp.args.StandardRestore())
            except Exception as e:  # Orbax/TensorStore raise many types for unreadable files.
                errors.append(f"step {step}: {type(e).__name__}")
                logging.warning(
                    "Checkpoint %d in %s cannot be restored; trying the previous one.",
                    step,
                    directory,
                )
    raise ValueError(f"No checkpoint in {directory} can be restored ({'; '.join(errors)}).")
