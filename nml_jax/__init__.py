"""nml-jax: Noisy Model Learning in JAX.

Reproduces and extends Chen et al., "Understanding and Mitigating the Label Noise in Pre-training on
Downstream Tasks" (ICLR 2024): noise injection, noisy pre-training, feature-space analysis, transfer by
linear probing, and NMTune.
"""

__version__ = "0.1.0"
