"""Bring your own model: PyTorch checkpoints as Flax encoders.

- `reader`: `.pth`/`.pt` (zip and legacy `torch.save` formats) and `.safetensors` files read without PyTorch and
  without executing pickled code.
- `converters`: the PyTorch -> Flax layout rules and the checked name mapping.
- `archs`: the supported architectures (`source:arch`), their resolution and normalisation.
"""
