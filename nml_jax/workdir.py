"""The workdir's guards: one run at a time, and no output reused or overwritten under another config.

- `lock(workdir)`: a run holds `<workdir>/.lock` (host and pid) while it works; a second run in the same
  workdir stops at once with a message naming the holder. A lock left by a dead process of this host is
  taken over.

A workdir may be a local path or a URL (`gs://bucket/run`; every read and write goes through `files`). Object
stores have no exclusive create, so on a URL the lock is a check and then a write: a second run started
while the first is running is stopped, but two runs started within the same moment may both get through.
- `check_fingerprint(...)`: a stage whose workdir holds output made under another config refuses to start and
  names every differing key (old -> new); `--config.overwrite=True` moves that output aside (into
  `<workdir>/overwritten/<time>/`, never deleted) and starts afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from absl import logging

from nml_jax import config_lib, files, parallel

LOCK_FILE = ".lock"
OVERWRITTEN_DIR = "overwritten"


class WorkdirError(config_lib.UserError, RuntimeError):
    """The workdir is busy, or holds output of another config; the message says what and the way out."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(files.read_text(path))
    except (OSError, ValueError):
        return None


def _take(path: str) -> bool:
    """Creates the lock file with this process's host and pid; False if it already exists (on a URL: a check,
    then a write; see the module docstring)."""
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    if files.is_url(path):
        if files.exists(path):
            return False
        files.write_text(path, json.dumps(holder))
        return True
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(holder, f)
    return True


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
    """Holds `<workdir>/.lock` for the duration (process 0 only; the other processes follow it).

    Raises:
      WorkdirError: another live run holds the lock.
    """
    if not parallel.is_main_process():
        yield
        return
    files.makedirs(workdir)
    path = os.path.join(workdir, LOCK_FILE)
    if not _take(path):
        holder = _holder(path) or {}
        same_host = holder.get("host") == socket.gethostname()
        if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
            logging.warning(
                "Taking over the lock of dead process %d in %s.", holder["pid"], workdir
            )
            files.remove(path)
        if not _take(path):
            raise WorkdirError(
                f"{workdir} is in use by another run (host {holder.get('host')}, pid {holder.get('pid')}); "
                f"wait for it, or use another --workdir. If that run is gone, delete {path}."
            )
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            files.remove(path)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _plain(config: Any) -> dict:
    """A config (ConfigDict or dict) as plain JSON values, as it reads back from a JSON file."""
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(as_dict, sort_keys=True, default=repr))


def differing_keys(old: Any, new: Any) -> list[str]:
    """'key: old -> new' for every fingerprinted leaf that differs (config_lib.NOT_FINGERPRINTED ignored)."""
    old_flat, new_flat = _flatten(_plain(old)), _flatten(_plain(new))
    ignored = lambda key: any(part in config_lib.NOT_FINGERPRINTED for part in key.split("."))
    return [
        f"{key}: {old_flat.get(key, '(absent)')!r} -> {new_flat.get(key, '(absent)')!r}"
        for key in sorted(set(old_flat) | set(new_flat))
        if not ignored(key) and old_flat.get(key) != new_flat.get(key)
    ]


def set_aside(workdir: str, names: Iterable[str]) -> str | None:
    """Moves the `names` that exist in `workdir` into `<workdir>/overwritten/<time>/`; returns that folder."""
    present = [n for n in names if files.lexists(os.path.join(workdir, n))]
    if not present or not parallel.is_main_process():
        return None
    target = os.path.join(workdir, OVERWRITTEN_DIR, time.strftime("%Y%m%d-%H%M%S"))
    while files.exists(target):
        target += "_"
    files.makedirs(target)
    for name in present:
        files.move(os.path.join(workdir, name), os.path.join(target, name))
    logging.warning("--config.overwrite=True: moved %s of %s to %s.", present, workdir, target)
    return target


def check_fingerprint(
    workdir: str,
    what: str,
    old: Any,
    new: Any,
    outputs: Iterable[str],
    overwrite: bool,
) -> None:
    """Refuses to reuse `outputs` of `workdir` made under the config `old` when `new` differs in a key that
    decides them; with `overwrite` the outputs are set aside instead.

    Raises:
      WorkdirError: naming every differing key and the ways out.
    """
    outputs = list(outputs)
    if old is None or config_lib.fingerprint(_plain(old)) == config_lib.fingerprint(_plain(new)):
        return
    if not any(files.lexists(os.path.join(workdir, n)) for n in outputs):
        return
    if overwrite:
        set_aside(workdir, outputs)
        return
    changes = differing_keys(old, new)
    raise WorkdirError(
        f"{workdir} holds {what} made under another config ({'; '.join(changes) or 'other fields'}). "
        "Use another --workdir, or pass --config.overwrite=True to move that output aside and start afresh."
    )
