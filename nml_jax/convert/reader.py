"""Reading PyTorch state dicts without PyTorch and without running pickled code.

`torch.save` writes one of two layouts: the zip format (PyTorch >= 1.6: `<name>/data.pkl` plus one raw file per
storage, `<name>/data/<key>`) or the legacy stream (pickles of a magic number, the protocol and system info, then
the object, then the list of storage keys, then each storage as int64 element count + raw bytes). Both pickles
are read by an unpickler that resolves only the globals a tensor state dict needs (`collections.OrderedDict`,
torch's tensor and parameter rebuild functions and the typed storage classes); any other global, as a malicious
or non-state-dict pickle would name, stops the read with an error naming it. Each tensor is rebuilt as a numpy
view (offset, shape, strides) of its storage, bounds-checked, then copied. `.safetensors` files are read with
the `safetensors` package (no pickle at all).
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from nml_jax import config_lib

# torch storage class -> numpy dtype (bfloat16 through ml_dtypes).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Keys under which training scripts commonly nest the state dict itself.
_WRAPPER_KEYS = ("state_dict", "model", "module")


class StateDictError(config_lib.UserError, ValueError):
    """A weights file cannot be read as a state dict, or does not fit the model; the message says why."""


class UnsafePickleError(StateDictError):
    """The pickle names a global other than those of a tensor state dict; nothing of it was run."""


class _StorageType:
    """Stands in for torch.<X>Storage in the pickle: only its dtype matters."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage named in the pickle; its flat array is filled in once its bytes are read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, int(numel)
        self.array: np.ndarray | None = None


class _Tensor:
    """torch._utils._rebuild_tensor_v2's arguments, materialised once the storages are read."""

    def __init__(self, storage, offset, size, stride, *unused):
        if not isinstance(storage, _Storage):
            raise StateDictError(f"a tensor is built on {type(storage).__name__}, not a storage.")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def materialise(self) -> np.ndarray:
        flat, size, stride = self.storage.array, self.size, self.stride
        if 0 in size:
            return np.zeros(size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(size, stride))
        if self.offset < 0 or min(stride, default=0) < 0 or last >= flat.size:
            raise StateDictError(
                f"a tensor of shape {size} (offset {self.offset}, strides {stride}) does not fit its "
                f"storage of {flat.size} elements."
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], size, tuple(s * flat.itemsize for s in stride), writeable=False
        )
        return np.array(view)


def _rebuild_parameter(data, *unused):
    return data


# (module, name) -> the object the restricted unpickler hands out; nothing else resolves.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED`; collects the storages the pickle names."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"{self.path}: refusing to load the global {module}.{name}; only tensor state dicts "
                "(OrderedDict of tensors) are read, no other pickled object."
            )
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy: the same plus view metadata (None).
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise StateDictError(f"{self.path}: unexpected persistent id {pid!r} in the pickle.")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if len(pid) == 6 and pid[5] is not None:
            raise StateDictError(f"{self.path}: storage views (legacy format) are not supported.")
        if not isinstance(storage_type, _StorageType):
            raise StateDictError(f"{self.path}: storage {key!r} has no known dtype.")
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, numel)
        return self.storages[key]


def _load_pickle(unpickler: _Unpickler) -> Any:
    try:
        return unpickler.load()
    except StateDictError:
        raise
    except Exception as e:  # A damaged pickle raises anything from EOFError to UnpicklingError.
        raise StateDictError(f"{unpickler.path}: the pickle cannot be read: {e}") from None


def _fill(storage: _Storage, raw: bytes, byteorder: str, path: str) -> None:
    dtype = storage.dtype.newbyteorder(byteorder)
    if len(raw) < storage.numel * dtype.itemsize:
        raise StateDictError(
            f"{path}: storage {storage.key} holds {len(raw)} bytes; expected "
            f"{storage.numel * dtype.itemsize} (a truncated file?)."
        )
    storage.array = np.frombuffer(raw, dtype, count=storage.numel).astype(storage.dtype)


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise StateDictError(f"{path}: expected one data.pkl in the zip; found {pickles}.")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        order = "little"
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode().strip()
        with archive.open(pickles[0]) as f:
            unpickler = _Unpickler(f, path)
            obj = _load_pickle(unpickler)
        for key, storage in unpickler.storages.items():
            if f"{prefix}data/{key}" not in names:
                raise StateDictError(f"{path}: storage data/{key} is missing from the zip.")
            _fill(
                storage,
                archive.read(f"{prefix}data/{key}"),
                "<" if order == "little" else ">",
                path,
            )
    return obj


def _read_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        not_torch = StateDictError(
            f"{path} is not a PyTorch checkpoint (neither torch.save's zip nor its legacy format) nor a "
            ".safetensors file."
        )
        try:
            header = [_load_pickle(_Unpickler(f, path)) for _ in range(3)]
        except UnsafePickleError:
            raise
        except StateDictError:
            raise not_torch from None
        if header[0] != _LEGACY_MAGIC or not isinstance(header[2], dict):
            raise not_torch
        order = "<" if header[2].get("little_endian", True) else ">"
        unpickler = _Unpickler(f, path)
        obj = _load_pickle(unpickler)
        keys = _load_pickle(_Unpickler(f, path))
        for key in keys if isinstance(keys, list) else []:
            storage = unpickler.storages.get(str(key))
            if storage is None:
                raise StateDictError(f"{path}: storage {key} is listed but never used.")
            numel = int(np.frombuffer(f.read(8), order + "i8", count=1)[0])
            if numel != storage.numel:
                raise StateDictError(
                    f"{path}: storage {key} has {numel} elements; expected {storage.numel}."
                )
            _fill(storage, f.read(numel * storage.dtype.itemsize), order, path)
    missing = [k for k, s in unpickler.storages.items() if s.array is None]
    if missing:
        raise StateDictError(f"{path}: storages {missing[:5]} have no data (a truncated file?).")
    return obj


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.materialise()
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
    """The flat {name: array} state dict inside `obj` (itself, or under 'state_dict' / 'model' / 'module')."""
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                return _unwrap(obj[key], path)
        bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
        if not bad:
            return dict(obj)
        raise StateDictError(
            f"{path} is not a state dict of tensors: entries {bad[:5]} are not named tensors."
        )
    raise StateDictError(f"{path} holds a {type(obj).__name__}; expected a state dict of tensors.")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a `.safetensors` or PyTorch `.pth`/`.pt`/`.bin` file as {name: numpy array}.

    Raises:
      StateDictError: no such file, not a state dict, a damaged file, or a pickled global other than tensors.
    """
    if not os.path.isfile(path):
        raise StateDictError(f"weights file {path} does not exist.")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except (SafetensorError, ValueError, OSError) as e:
            raise StateDictError(f"{path}: not a readable .safetensors file: {e}") from None
    try:
        obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise StateDictError(f"{path} cannot be read: {e}") from None
    return _unwrap(_materialise(obj), path)
