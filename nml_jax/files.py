"""Small file helpers every stage uses: atomic writes of text, JSON and .npz, and JSON reads that name the file.

A file written here is complete or absent: the content goes to a temporary file in the same directory, which is
then renamed over the target (atomic on POSIX file systems).
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Any

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


def _replace(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically."""
    _replace(path, text.encode("utf-8"))


def write_json(path: str, value: Any) -> None:
    """Writes `value` as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=repr) + "\n")


def read_json(path: str, default: Any = None) -> Any:
    """The JSON value in `path`; `default` when the file does not exist.

    Raises:
      FileFormatError: the path exists but is not a UTF-8 JSON file (the message names the file).
    """
    if not os.path.exists(path):
        return default
    if os.path.isdir(path):
        raise FileFormatError(f"{path} is a directory; expected a JSON file.")
    with open(path, "rb") as f:
        raw = f.read()
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
    _replace(path, buffer.getvalue())
