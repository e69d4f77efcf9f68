"""nml-jax: Noisy Model Learning in JAX (Chen et al., ICLR 2024)."""

import setuptools

# Versions installed together with `pip check` clean on Python 3.11 (2026-11); see README.
INSTALL_REQUIRES = [
    "jax[cpu]==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "numpy==2.4.6",
    "protobuf==7.36.2",
    "ml-dtypes==0.6.0",
    "pillow==13.0.0",
    "scipy==1.17.1",
    "scikit-learn==1.9.1",  # UCI digits (load_digits) and sample photos.
    "scikit-image==0.26.0",  # sample photos shipped in the wheel (MNIST-M textures).
    "matplotlib==3.11.2",
    "importlib_resources==7.1.0",  # TFDS looks up catalog builders' code with it (imagenet2012, cifar10, ...).
    "safetensors==0.8.0",  # MiniLM weights.
    "tokenizers==0.23.3",  # MiniLM's WordPiece tokenizer and the CLIP BPE tokenizer, offline.
]

EXTRAS_REQUIRE = {
    # NVIDIA GPUs (launch/slurm_gpu.sbatch): the CUDA 12 plugin of the pinned jax, with CUDA, cuDNN and NCCL from
    # pip wheels (`pip install -e '.[cuda]'`; needs an NVIDIA driver >= 525). Resolved by pip together with the
    # pins above; never run on a GPU here.
    "cuda": ["jax[cuda12]==0.10.2"],
    # benchmarks/torch_compare.py and the converter parity tests (tests/test_convert_parity.py): the CPU wheel
    # (any other spelling pulls a CUDA build of several GB).
    "bench": ["torch==2.13.0"],
    # nbclient + ipykernel execute the quickstart notebook headless in the tests.
    "test": [
        "pytest==9.2.0",
        "ruff==0.17.6",
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
}

setuptools.setup(
    name="nml-jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["nml_jax", "nml_jax.*"]),
    # Class names, prompt templates and class subsets (nml_jax/data/classes.py).
    package_data={"nml_jax.data": ["files/*.txt"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
