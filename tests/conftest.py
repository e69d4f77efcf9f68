"""Test set-up: 8 fake CPU devices before JAX starts, quiet TensorFlow, TF kept off accelerators."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault(
    "OPENBLAS_NUM_THREADS", "1"
)  # As nml_jax.main does: OpenBLAS threads fight XLA's.
# jax_num_cpu_devices rather than XLA_FLAGS: TensorFlow also parses XLA_FLAGS and aborts on JAX-only flags.
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)
