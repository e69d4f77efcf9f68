"""Orbax checkpoints of a training state under `<workdir>/checkpoints`, verified by checksums.

`Checkpointer` wraps an Orbax `CheckpointManager` (async saves, keep-N). The state is restored by the shape,
dtype and sharding of an abstract state, so it lands directly in sharded arrays. Resume order (see
`trainer.start_state`): own workdir > `init_from` > scratch. The data position is the step: the input pipeline
is a pure function of (seed, step).

Verification. Once Orbax has committed a save (seen at the next save, `wait` or `close`), process 0 writes
`<step>/nml_checksums.json`: the size and sha256 of every file of the step, written to a temporary file and
renamed. Before Orbax reads a step, its files are checked against it. A step without the file (the process was
killed between Orbax's commit and the manifest, or the step predates manifests) is committed as far as Orbax
knows: it is restored unverified, with a warning.

What a restore does with each step, newest first:
- corrupt (a file missing, truncated or changed, undecodable data, anything Orbax cannot read): skipped. Once an
  older step restores, the corrupt newer ones are moved to `<workdir>/corrupt_checkpoints/<step>` (or
  `<step>.1`, ...; never deleted) so their step numbers can be saved again.
- its tree, shapes or dtypes differ from the abstract state: `CheckpointMismatchError` (a config error, e.g.
  another model in the same workdir); nothing is moved.
- a transient read error (EIO, ESTALE, EAGAIN, ETIMEDOUT, a timeout): retried after `RETRY_DELAYS`, then
  `CheckpointReadError`; nothing is moved.
- no step restores: `CheckpointError` listing each step and why; nothing is moved, so the user can recover.

A failed write (a full disk, a quota; also when raised from Orbax's background thread) raises
`CheckpointWriteError`, removes the failed step's temporary directories and leaves the older checkpoints intact.
In a multi-process run every process takes part in every call and all take the same decision for each step.

Where. A workdir may be local or a URL Orbax writes to: etils.epath opens its directories and TensorStore's own
drivers write the arrays, which covers `gs://` and `s3://` (`CHECKPOINT_SCHEMES`); the path is passed to Orbax
unchanged. Another URL scheme (hdfs://, ram://, ...) is refused with a WorkdirError before Orbax sees it. The
manifests, moves and clean-ups of this module go through `files` (tf.io.gfile for URLs).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from nml_jax import config_lib, files, parallel
from nml_jax import workdir as workdir_lib

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
MANIFEST_FILE = "nml_checksums.json"
# URL schemes Orbax can checkpoint to (etils.epath for directories, TensorStore's gcs and s3 drivers for arrays).
CHECKPOINT_SCHEMES = ("gs", "s3")
# Seconds to wait before each retry of a step that failed with a transient read error.
RETRY_DELAYS = (1.0, 4.0, 10.0)
TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.ESTALE, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR, errno.EBUSY}
)
# TensorStore reports OS errors as ValueErrors whose text starts with the absl status code.
_TRANSIENT_STATUS = ("UNAVAILABLE:", "DEADLINE_EXCEEDED:", "ABORTED:")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# Outcomes of one read of one step, ordered so that the worst one over all processes is the max.
_OK, _MISMATCH, _TRANSIENT, _CORRUPT = range(4)


class CheckpointError(config_lib.UserError, ValueError):
    """A workdir's checkpoints cannot be restored; raised as such when none restores, listing each step and
    why."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tree, shapes or dtypes differ from the state the config builds."""


class CheckpointReadError(CheckpointError):
    """A checkpoint could not be read because of an I/O error that persisted over the retries."""


class CheckpointWriteError(config_lib.UserError):
    """A checkpoint could not be written (full disk, quota, ...); the older ones are intact."""


class _Corrupt(Exception):
    """A step's files are missing, changed or undecodable."""


class Checkpointer:
    """Saves and restores one training state per step under `<workdir>/checkpoints`.

    Every process calls every method (Orbax coordinates the hosts); only the files differ by process.
    """

    def __init__(self, workdir: str, *, max_to_keep: int | None = 3, async_save: bool = True):
        check_location(workdir)
        self.workdir = _absolute(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
        self._async_save = async_save
        self._pending: int | None = None  # The step being saved, until its manifest is written.
        self._manager = _manager(
            self.directory,
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )

    def steps(self) -> list[int]:
        """Steps of the finished checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Starts saving `state` as checkpoint `step` (asynchronously unless disabled).

        Raises:
          CheckpointWriteError: this save, or the previous asynchronous one, failed.
        """
        self._finish_save()
        self._pending = step
        try:
            self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        except Exception as e:  # Orbax wraps what TensorStore and the filesystem raise.
            self._failed_write(e)
        if not self._async_save:
            self._finish_save()

    def restore(self, abstract_state: Any) -> tuple[int, Any] | None:
        """Restores the newest checkpoint that restores cleanly, as `(step, state)`; None if there is none.

        Args:
          abstract_state: the state's structure as `jax.ShapeDtypeStruct`s with shardings.

        Raises:
          CheckpointMismatchError: a checkpoint does not fit `abstract_state`.
          CheckpointReadError: a checkpoint cannot be read because of a persisting I/O error.
          CheckpointError: checkpoints exist but none restores.
        """
        self._finish_save()
        corrupt: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            try:
                state = _read_step(
                    self.directory,
                    step,
                    lambda s=step: self._manager.restore(
                        s, args=ocp.args.StandardRestore(abstract_state)
                    ),
                    lambda s=step: _check_fits(
                        _tree_metadata(self._manager, s), abstract_state, self.directory, s
                    ),
                )
            except _Corrupt as e:
                logging.warning(
                    "Checkpoint %d in %s is corrupt (%s); trying the previous one.",
                    step,
                    self.directory,
                    e,
                )
                corrupt.append((step, str(e)))
                continue
            for bad, _ in corrupt:
                self._set_aside(bad)
            return step, state
        if corrupt:
            raise _nothing_restores(self.directory, corrupt)
        return None

    def _set_aside(self, step: int) -> None:
        """Moves a corrupt checkpoint out of the manager's directory so the step can be saved again."""
        from jax.experimental import multihost_utils

        if parallel.is_main_process():
            target = _unused_path(os.path.join(self.workdir, CORRUPT_DIR, str(step)))
            files.makedirs(os.path.dirname(target))
            files.move(os.path.join(self.directory, str(step)), target)
            logging.warning("Moved the corrupt checkpoint of step %d to %s.", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"nml_jax_set_aside_{step}")
        self._manager.reload()

    def _finish_save(self) -> None:
        """Waits for the pending save and writes its checksum manifest."""
        if self._pending is None:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # Raised in Orbax's background thread: a failed write.
            self._failed_write(e)
        if self._pending not in self._manager.all_steps():
            self._failed_write(RuntimeError("Orbax did not commit the checkpoint; see the log"))
        if parallel.is_main_process():
            try:
                write_manifest(os.path.join(self.directory, str(self._pending)))
            except OSError as e:
                self._failed_write(e)
        self._pending = None

    def _failed_write(self, error: Exception) -> None:
        """Removes the pending step's temporary directories and raises a CheckpointWriteError."""
        step, self._pending = self._pending, None
        if parallel.is_main_process():
            for path in files.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
                files.rmtree(path)
        older = [s for s in self._manager.all_steps() if s != step]
        intact = (
            f"The previous checkpoint (step {max(older)}) is intact."
            if older
            else "There is no earlier checkpoint."
        )
        raise CheckpointWriteError(
            f"Could not write checkpoint {step} to {self.directory}: {_describe(error)}. {intact}"
        ) from error

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk and verified.

        Raises:
          CheckpointWriteError: the pending save failed.
        """
        self._finish_save()

    def close(self) -> None:
        """Finishes the pending save and releases Orbax's threads.

        Raises:
          CheckpointWriteError: the pending save failed.
        """
        try:
            self._finish_save()
        except CheckpointWriteError:
            with contextlib.suppress(Exception):  # Orbax re-raises the failure just reported.
                self._manager.close()
            raise
        self._manager.close()


def restore_raw(workdir: str) -> tuple[int, Any]:
    """The newest checkpoint of `workdir` as saved (dict of arrays), for `init_from` and inspection.

    Checkpoints are verified as by `Checkpointer.restore`; corrupt ones are skipped with a warning and nothing
    is moved (the workdir may belong to another run).

    Raises:
      FileNotFoundError: `workdir` holds no checkpoint.
      CheckpointReadError: a checkpoint cannot be read because of a persisting I/O error.
      CheckpointError (a ValueError): none of its checkpoints can be restored.
      WorkdirError: `workdir` is a URL Orbax cannot read (check_location).
    """
    check_location(workdir, "config.init_from")
    directory = os.path.join(_absolute(workdir), CHECKPOINT_DIR)
    steps = sorted(ocp.utils.checkpoint_steps(directory)) if files.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(
            f"No checkpoint in {directory}; run the pretrain stage with --workdir={workdir} first."
        )
    corrupt: list[tuple[int, str]] = []
    manager = _manager(directory, read_only=True)
    try:
        for step in reversed(steps):
            try:
                raw = _read_step(
                    directory,
                    step,
                    lambda s=step: manager.restore(s, args=ocp.args.StandardRestore()),
                )
            except _Corrupt as e:
                logging.warning(
                    "Checkpoint %d in %s is corrupt (%s); trying the previous one.",
                    step,
                    directory,
                    e,
                )
                corrupt.append((step, str(e)))
                continue
            return step, raw
    finally:
        manager.close()
    raise _nothing_restores(directory, corrupt)


def _absolute(workdir: str) -> str:
    """A local workdir made absolute as every other stage output sees it (no `~` expansion); a URL unchanged."""
    return workdir if files.is_url(workdir) else os.path.abspath(workdir)


def check_location(workdir: str, name: str = "--workdir") -> None:
    """Raises WorkdirError when `workdir` (given as `name`) is a URL whose scheme Orbax cannot checkpoint to.

    Local paths and CHECKPOINT_SCHEMES pass. Every other stage output works on any tf.io.gfile URL.
    """
    scheme = workdir.split("://", 1)[0].lower() if files.is_url(workdir) else None
    if scheme is not None and scheme not in CHECKPOINT_SCHEMES:
        raise workdir_lib.WorkdirError(
            f"{name}={workdir}: Orbax writes checkpoints only to local paths and "
            f"{', '.join(s + '://' for s in CHECKPOINT_SCHEMES)} URLs, not {scheme}://. Use such a workdir for "
            "the stages that train (pretrain, clip_pretrain, nmtune without features_npz or pretrained)."
        )


def write_manifest(step_dir: str) -> None:
    """Writes `<step_dir>/nml_checksums.json`: size and sha256 of every other file, atomically (synced to
    the disk before the rename)."""
    digests = {path: _file_digest(os.path.join(step_dir, path)) for path in _files(step_dir)}
    text = json.dumps({"files": digests}, indent=1, sort_keys=True)
    files.write_bytes(os.path.join(step_dir, MANIFEST_FILE), text.encode("utf-8"), fsync=True)


def verify(step_dir: str) -> bool:
    """Checks the files of a step against its manifest.

    Returns:
      True when verified, False when the step has no manifest.

    Raises:
      _Corrupt: the manifest is undecodable, or a file is missing or differs from it.
      OSError: a file cannot be read (transient or not; the caller decides).
    """
    manifest = os.path.join(step_dir, MANIFEST_FILE)
    if not files.exists(manifest):
        return False
    try:
        expected = json.loads(files.read_text(manifest))["files"]
        items = [(str(p), int(d["size"]), str(d["sha256"])) for p, d in expected.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _Corrupt(f"its checksum file {MANIFEST_FILE} is undecodable ({e})") from e
    for path, size, sha256 in items:
        full = os.path.join(step_dir, path)
        if not files.exists(full):
            raise _Corrupt(f"{path} is missing")
        found = _file_digest(full)
        if found["size"] != size:
            raise _Corrupt(f"{path} has {found['size']} bytes, {size} were written")
        if found["sha256"] != sha256:
            raise _Corrupt(f"{path} differs from what was written (sha256 mismatch)")
    return True


def _manager(directory: str, **options) -> ocp.CheckpointManager:
    # A declared single item: otherwise Orbax infers the items from the first step it reads, and an empty step
    # directory makes every other step unreadable.
    return ocp.CheckpointManager(
        directory,
        item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(**options),
    )


def _read_step(
    directory: str,
    step: int,
    read: Callable[[], Any],
    check: Callable[[], None] | None = None,
) -> Any:
    """Verifies, checks and reads one step, retrying transient errors; all processes take the same decision.

    Raises:
      _Corrupt, CheckpointMismatchError, CheckpointReadError.
    """
    step_dir = os.path.join(directory, str(step))
    delays = list(RETRY_DELAYS)
    while True:
        kind, result = _agreed(lambda: verify(step_dir), main_only=True)
        if kind == _OK and result is False:
            logging.warning(
                "Checkpoint %d in %s has no %s (the run stopped before writing it, or an older version "
                "saved it); restoring it unverified.",
                step,
                directory,
                MANIFEST_FILE,
            )
        if kind == _OK and check is not None:
            kind, result = _agreed(check)
        if kind == _OK:
            kind, result = _agreed(read)
        if kind == _OK:
            return result
        if kind == _MISMATCH:
            raise (
                result
                if isinstance(result, CheckpointMismatchError)
                else CheckpointMismatchError(
                    f"Checkpoint {step_dir} does not fit the state of this config (on another process)."
                )
            )
        if kind == _CORRUPT:
            raise _Corrupt(result or "unreadable on another process")
        if not delays:
            raise CheckpointReadError(
                f"Could not read checkpoint {step_dir}: {result}, {len(RETRY_DELAYS) + 1} times. It was "
                "left in place; check the filesystem and run again."
            )
        delay = delays.pop(0)
        logging.warning(
            "Reading checkpoint %s failed (%s); retrying in %g s.", step_dir, result, delay
        )
        time.sleep(delay)


def _agreed(fn: Callable[[], Any], main_only: bool = False) -> tuple[int, Any]:
    """Runs `fn` (on process 0 only if `main_only`) as (outcome, result or reason), the worst over processes."""
    if main_only and not parallel.is_main_process():
        kind, result = _OK, None
    else:
        try:
            kind, result = _OK, fn()
        except CheckpointMismatchError as e:
            kind, result = _MISMATCH, e
        except _Corrupt as e:
            kind, result = _CORRUPT, str(e)
        except Exception as e:  # Orbax and TensorStore raise many types for unreadable files.
            kind, result = (_TRANSIENT if _is_transient(e) else _CORRUPT), _describe(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        worst = int(np.max(multihost_utils.process_allgather(np.int32(kind))))
        if worst != kind:
            kind, result = worst, None
    return kind, result


def _tree_metadata(manager: ocp.CheckpointManager, step: int) -> Any:
    """The tree of array metadata Orbax stored for `step`."""
    metadata = manager.item_metadata(step)
    tree = getattr(metadata, "tree", metadata)
    if tree is None:
        raise _Corrupt("Orbax finds no metadata")
    return tree


def _check_fits(stored: Any, abstract: Any, directory: str, step: int) -> None:
    """Raises CheckpointMismatchError naming the first differing leaves of `stored` and `abstract`."""
    want = _leaf_specs(ocp.tree.serialize_tree(abstract, keep_empty_nodes=True))
    have = _leaf_specs(stored)
    diffs = [f"{k}: missing in the checkpoint" for k in want if k not in have]
    diffs += [f"{k}: in the checkpoint, not in this state" for k in have if k not in want]
    diffs += [
        f"{k}: checkpoint {_spec_str(have[k])}, this state {_spec_str(want[k])}"
        for k in want
        if k in have and not _same_spec(have[k], want[k])
    ]
    if diffs:
        shown = "; ".join(sorted(diffs)[:3])
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise CheckpointMismatchError(
            f"Checkpoint {os.path.join(directory, str(step))} does not fit the state this config builds: "
            f"{shown}{more}. It was saved by another model or optimizer; use another workdir or restore "
            "the config it was saved with."
        )


def _leaf_specs(tree: Any) -> dict[str, tuple[Any, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path): (getattr(leaf, "shape", None), getattr(leaf, "dtype", None))
        for path, leaf in leaves
    }


def _same_spec(have: tuple[Any, Any], want: tuple[Any, Any]) -> bool:
    (have_shape, have_dtype), (want_shape, want_dtype) = have, want
    if have_shape is not None and want_shape is not None and tuple(have_shape) != tuple(want_shape):
        return False
    return have_dtype is None or want_dtype is None or np.dtype(have_dtype) == np.dtype(want_dtype)


def _spec_str(spec: tuple[Any, Any]) -> str:
    shape, dtype = spec
    return f"{np.dtype(dtype).name if dtype is not None else '?'}{list(shape) if shape is not None else ''}"


def _is_transient(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is an I/O error that may pass: EIO, ESTALE, a timeout, ..."""
    texts = tuple(os.strerror(e) for e in TRANSIENT_ERRNOS)
    for e in _chain(error):
        if isinstance(e, TimeoutError) or (isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS):
            return True
        if not isinstance(e, OSError) and (
            str(e).startswith(_TRANSIENT_STATUS) or any(t in str(e) for t in texts)
        ):
            return True
    return False


def _describe(error: BaseException) -> str:
    """One line for `error`: the OS's words for a full disk or another errno, else the first line."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno is not None:
            return os.strerror(e.errno)
        for code in _DISK_FULL_ERRNOS:
            if os.strerror(code) in str(e):
                return os.strerror(code)
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _nothing_restores(directory: str, corrupt: list[tuple[int, str]]) -> CheckpointError:
    why = "; ".join(f"step {step}: {reason}" for step, reason in corrupt)
    return CheckpointError(
        f"No checkpoint in {directory} can be restored ({why}). Nothing was moved: inspect or move "
        "them, or start afresh in another workdir."
    )


def _files(step_dir: str) -> list[str]:
    """Paths of the files under `step_dir` relative to it, the manifest excluded."""
    found = []
    for root, _, names in files.walk(step_dir):
        for name in names:
            path = os.path.relpath(os.path.join(root, name), step_dir)
            if not path.startswith(MANIFEST_FILE):
                found.append(path)
    return sorted(found)


def _file_digest(path: str) -> dict[str, Any]:
    sha256 = hashlib.sha256()
    size = 0
    with files.open_file(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": sha256.hexdigest()}


def _unused_path(path: str) -> str:
    """`path`, or `path.1`, `path.2`, ... : the first that does not exist."""
    candidate, n = path, 0
    while files.exists(candidate):
        n += 1
        candidate = f"{path}.{n}"
    return candidate
