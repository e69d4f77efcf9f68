"""PyTorch state dicts -> the Flax variables of our models, one name map per architecture family.

Every Flax leaf is named by its module path; an architecture's `module_map` turns that path into the PyTorch
module prefix (e.g. ('block3', 'expand_norm') -> '_blocks.3._bn0'), and the leaf name into the tensor name:
  conv kernel  <- weight, OIHW -> HWIO (depthwise: (C, 1, k, k) -> (k, k, 1, C));
  dense kernel <- weight, (out, in) -> (in, out);       bias <- bias;
  batch norm   scale <- weight, bias <- bias, batch_stats mean <- running_mean, var <- running_var
               (the epsilon is the model's: 1e-5 for ResNets, 1e-3 for EfficientNet-Lite, as the sources);
  other parameters (positional embeddings) are copied as they are.
`map_state_dict` checks the whole state dict against the model before anything is returned: missing tensors,
unexpected tensors and tensors of the wrong shape are listed together in one error.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from nml_jax.convert.reader import StateDictError

# Buffers PyTorch stores that our models do not need.
IGNORED_SUFFIXES = (".num_batches_tracked",)
_LEAF = {
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_MAX_LISTED = 12


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch OIHW conv weight -> Flax HWIO kernel."""
    return np.transpose(weight, (2, 3, 1, 0))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch Linear (out, in) weight -> Flax Dense (in, out) kernel."""
    return np.transpose(weight)


def torch_name(
    collection: str, path: tuple[str, ...], module_map: Callable
) -> tuple[str, Callable]:
    """The PyTorch tensor name of the Flax leaf `collection`/`path`, and the transform of its value."""
    prefix = module_map(path[:-1])
    leaf = path[-1]
    if (collection, leaf) in _LEAF:
        return f"{prefix}.{_LEAF[(collection, leaf)]}", np.asarray
    if leaf == "kernel":
        return f"{prefix}.weight", None  # The transform depends on the rank; see map_state_dict.
    return (f"{prefix}.{leaf}" if prefix else leaf), np.asarray


def _listed(names: list[str]) -> str:
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def map_state_dict(
    state_dict: dict[str, np.ndarray], abstract: dict, module_map: Callable, what: str
) -> dict:
    """The Flax variables (shaped as `abstract`, a tree of ShapeDtypeStructs) filled from `state_dict`.

    Raises:
      StateDictError: one message listing every missing, unexpected and mis-shaped tensor of `what`.
    """
    leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
    values, expected, missing, misshaped = {}, set(), [], []
    for key_path, spec in leaves:
        path = tuple(k.key for k in key_path)
        name, transform = torch_name(path[0], path[1:], module_map)
        expected.add(name)
        if name not in state_dict:
            missing.append(name)
            continue
        tensor = np.asarray(state_dict[name])
        if transform is None:
            transform = conv_kernel if tensor.ndim == 4 else dense_kernel
        value = transform(tensor) if tensor.ndim == len(spec.shape) else tensor
        if value.shape != tuple(spec.shape):
            misshaped.append(f"{name} {tuple(tensor.shape)} (expected {_torch_shape(spec.shape)})")
            continue
        values[path] = value.astype(spec.dtype)
    unexpected = sorted(
        k for k in state_dict if k not in expected and not k.endswith(IGNORED_SUFFIXES)
    )
    problems = [
        f"{label} {len(items)}: {_listed(sorted(items))}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        )
        if items
    ]
    if problems:
        raise StateDictError(f"The state dict does not fit {what}: " + "; ".join(problems) + ".")
    return jax.tree_util.tree_map_with_path(
        lambda key_path, _: values[tuple(k.key for k in key_path)], abstract
    )


def _torch_shape(flax_shape) -> tuple[int, ...]:
    """The PyTorch layout of a Flax shape, for error messages."""
    shape = tuple(flax_shape)
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def efficientnet_lite_names(path: tuple[str, ...]) -> str:
    """Our EfficientNet-Lite module path -> the `efficientnet_pytorch` / `efficientnet_lite_pytorch` prefix."""
    top = {
        "stem_conv": "_conv_stem",
        "stem_norm": "_bn0",
        "head_conv": "_conv_head",
        "head_norm": "_bn1",
        "head": "_fc",
    }
    if path[0] in top:
        return top[path[0]]
    inner = {
        "expand_conv": "_expand_conv",
        "expand_norm": "_bn0",
        "depthwise_conv": "_depthwise_conv",
        "depthwise_norm": "_bn1",
        "project_conv": "_project_conv",
        "project_norm": "_bn2",
    }
    return f"_blocks.{int(path[0][len('block') :])}.{inner[path[1]]}"


def resnet_names(
    stage_sizes: tuple[int, ...], bottleneck: bool
) -> Callable[[tuple[str, ...]], str]:
    """Our ResNet module path -> the torchvision / timm prefix (`conv1`, `bn1`, `layerS.J.convK`, `fc`)."""
    stages = [(i + 1, j) for i, size in enumerate(stage_sizes) for j in range(size)]
    block = "BottleneckBlock_" if bottleneck else "BasicBlock_"
    inner = {"proj": "downsample.0", "proj_norm": "downsample.1"}
    inner.update({f"Conv_{k}": f"conv{k + 1}" for k in range(3)})
    inner.update({f"BatchNorm_{k}": f"bn{k + 1}" for k in range(3)})

    def names(path: tuple[str, ...]) -> str:
        top = {"stem_conv": "conv1", "stem_norm": "bn1", "head": "fc"}
        if path[0] in top:
            return top[path[0]]
        stage, j = stages[int(path[0][len(block) :])]
        return f"layer{stage}.{j}.{inner[path[1]]}"

    return names


def modified_resnet_names(path: tuple[str, ...]) -> str:
    """Our ModifiedResNet module path -> OpenAI CLIP / open_clip's `visual` prefix (`layer1.0.conv1`, ...)."""
    inner = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
    if path[0].startswith("layer"):
        stage, j = path[0].split("_")
        return f"{stage}.{j}.{inner.get(path[1], path[1])}"
    return ".".join(path)
