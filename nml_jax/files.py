"""File I/O every stage uses, for local paths and URLs alike: whole-file reads and writes of bytes, text, JSON
and .npz, and the few directory operations a workdir needs.

A local path goes through `os`; a URL (`gs://bucket/run`, `s3://...`, any file system `tf.io.gfile` knows,
including TensorFlow's in-memory `ram://` that the tests use) goes through `tf.io.gfile`, imported only then.

A file written here is complete or absent. Locally the content goes to a temporary file in the same directory,
which is then renamed over the target (atomic on POSIX file systems). On an object store (GCS, S3) the write of a
whole object is already all-or-nothing: readers see the old object or the new one, never a part, so a URL is
written in place; a rename there is a copy and a delete, neither atomic nor cheap, and is only used to move
output aside.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from nml_jax import config_lib


class FileFormatError(config_lib.UserError, ValueError):
    """A file the project reads back (model card, summary, done-marker) cannot be parsed."""


# A URL of a file system TensorFlow / TFDS (tf.io.gfile, etils.epath) or fsspec reads: gs://, s3://, hdfs://, ...
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str) -> bool:
    """True for `scheme://...` paths (gs://bucket/dir), which os.path must not touch."""
    return bool(_URL.match(path))


def absolute(path: str) -> str:
    """A local path made absolute (`~` expanded); a URL unchanged (os.path.abspath would turn `gs://b/x` into
    `<cwd>/gs:/b/x`)."""
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def _gfile():
    """`tf.io.gfile`, imported on first use: TensorFlow takes seconds to import and local runs need none of it."""
    import tensorflow as tf

    return tf.io.gfile


def open_file(path: str, mode: str = "r", **options) -> IO:
    """`open(path, mode)` for a local path (`options` such as `newline` pass through); a `tf.io.gfile.GFile`
    for a URL (text modes read and write UTF-8)."""
    if is_url(path):
        return _gfile().GFile(path, mode)
    return open(path, mode, **options)


def exists(path: str) -> bool:
    """Whether a file or directory `path` exists (os.path.exists for a local path)."""
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def lexists(path: str) -> bool:
    """`exists`, except that a dangling local symlink counts (os.path.lexists); URLs have no links."""
    return _gfile().exists(path) if is_url(path) else os.path.lexists(path)


def isdir(path: str) -> bool:
    """Whether `path` is a directory (on an object store: a prefix other objects share)."""
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    """Whether `path` is a file (os.path.isfile for a local path: a link to a file counts)."""
    return exists(path) and not isdir(path) if is_url(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
    """Creates `path` and its parents; nothing when it exists (object stores have no real directories)."""
    if is_url(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names of the entries of directory `path`, sorted (gfile marks URL subdirectories with a trailing '/',
    which is dropped)."""
    names = _gfile().listdir(path) if is_url(path) else os.listdir(path)
    return sorted(name.rstrip("/") for name in names)


def glob(pattern: str) -> list[str]:
    """Paths matching `pattern` (wildcards in the last component), sorted."""
    if not is_url(pattern):
        import glob as glob_lib

        return sorted(glob_lib.glob(pattern))
    directory, name = pattern.rsplit("/", 1)
    if not isdir(directory):
        return []
    return [f"{directory}/{n}" for n in listdir(directory) if fnmatch.fnmatchcase(n, name)]


def walk(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(directory, subdirectory names, file names) for `top` and every directory below it, like os.walk."""
    if not is_url(top):
        yield from os.walk(top)
        return
    for directory, subdirs, names in _gfile().walk(top):
        yield directory, [d.rstrip("/") for d in subdirs], list(names)


def remove(path: str) -> None:
    """Deletes the file `path`; FileNotFoundError when there is none (for URLs too)."""
    if not is_url(path):
        os.remove(path)
    elif not _gfile().exists(path):
        raise FileNotFoundError(f"No file {path}")
    else:
        _gfile().remove(path)


def rmtree(path: str) -> None:
    """Deletes the directory `path` and everything below it; nothing when it does not exist."""
    if is_url(path):
        if _gfile().exists(path):
            _gfile().rmtree(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def move(source: str, target: str) -> None:
    """Moves the file or directory `source` to `target` (which must not exist), like shutil.move.

    A URL directory is moved file by file (an object store has no directory to rename); a crash midway leaves
    both parts, each file complete.
    """
    if is_url(source) != is_url(target):
        raise ValueError(
            f"Cannot move {source} to {target}: both must be local paths or both URLs."
        )
    if not is_url(source):
        shutil.move(source, target)
        return
    if not isdir(source):
        _gfile().rename(source, target, overwrite=False)
        return
    for directory, _, names in walk(source):
        relative = directory[len(source) :].strip("/")
        makedirs(os.path.join(target, relative) if relative else target)
        for name in names:
            _gfile().rename(
                os.path.join(directory, name), os.path.join(target, relative, name), overwrite=False
            )
    rmtree(source)


def read_bytes(path: str) -> bytes:
    """The whole content of the file `path`."""
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    """The whole content of the UTF-8 text file `path`."""
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes, *, fsync: bool = False) -> None:
    """Writes `data` to `path`, complete or not at all (module docstring); parents are created.

    Args:
      fsync: locally, flush the temporary file to the disk before the rename (for files a crash must not
        leave empty, such as checkpoint manifests).
    """
    if is_url(path):
        makedirs(path.rsplit("/", 1)[0])
        if path.startswith("ram://") and _gfile().exists(path):
            # TensorFlow's in-memory file system (the tests') appends to an existing file even in "wb" mode.
            _gfile().remove(path)
        with _gfile().GFile(path, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value: Any) -> None:
    """Writes `value` as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=repr) + "\n")


def read_json(path: str, default: Any = None) -> Any:
    """The JSON value in `path`; `default` when the file does not exist.

    Raises:
      FileFormatError: the path exists but is not a UTF-8 JSON file (the message names the file).
    """
    if not exists(path):
        return default
    if isdir(path):
        raise FileFormatError(f"{path} is a directory; expected a JSON file.")
    raw = read_bytes(path)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FileFormatError(
            f"{path} is not valid JSON (not UTF-8 text: {e}); delete or repair it."
        ) from None
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path} is not valid JSON ({e}); delete or repair it.") from None


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes `arrays` as an uncompressed .npz, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def load_npz(path: str) -> Any:
    """`np.load(path, allow_pickle=False)` of an .npz (use it as a context manager); a URL is read whole into
    memory first (np.load seeks, which is slow on object stores)."""
    if is_url(path):
        return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
    return np.load(path, allow_pickle=False)


def save_figure(figure: Any, path: str, **options) -> None:
    """`figure.savefig(path, **options)` to a local path or a URL (matplotlib writes only local files, so the
    image is rendered into memory and written whole); the format follows the path's extension."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=os.path.splitext(path)[1][1:] or None, **options)
    write_bytes(path, buffer.getvalue())
