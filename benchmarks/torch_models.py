"""PyTorch references of our models, written here: torchvision does not import beside the pinned torch wheel
(and timm needs torchvision).

`TorchResNet` has torchvision's (and timm's) parameter names and forward pass (conv1, bn1, layerS.J.convK/bnK,
downsample.{0,1}, fc), so the converter parity tests load its state dict as they would torchvision's; with
`stem='small'` it is `models.get('resnet18', stem='small')`'s architecture (one 3x3/1 conv, no pool) for the
speed comparisons. Strided 3x3 convs pad (1, 1) where Flax's SAME pads (0, 1) on even sizes: the same shapes and
FLOPs (the converters use `padding='symmetric'` for exact parity).
"""

from __future__ import annotations

import torch
from torch import nn

from nml_jax.models import resnet


class TorchBlock(nn.Module):
    """A basic block (two 3x3 convs) or a bottleneck (1x1, 3x3 with the stride, 1x1 to 4x width), each conv
    followed by batch norm, and a 1x1 projection with batch norm when the shape changes."""

    def __init__(self, cin: int, width: int, stride: int, bottleneck: bool):
        super().__init__()
        cout = width * 4 if bottleneck else width
        kernels = (1, 3, 1) if bottleneck else (3, 3)
        chans = (cin, width, width, cout) if bottleneck else (cin, width, cout)
        self.convs = len(kernels)
        for i, k in enumerate(kernels):
            s = stride if k == 3 and (bottleneck or i == 0) else 1
            setattr(
                self, f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], k, s, k // 2, bias=False)
            )
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(chans[i + 1]))
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = x
        for i in range(1, self.convs + 1):
            y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
            y = torch.relu(y) if i < self.convs else y
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    """ResNet-`depth` (NCHW); `features` is the globally average-pooled last stage."""

    def __init__(self, depth: int = 18, num_classes: int = 1000, stem: str = "imagenet"):
        super().__init__()
        stage_sizes, bottleneck = resnet.STAGE_SIZES[depth]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, size in enumerate(stage_sizes):
            blocks = []
            for j in range(size):
                blocks.append(TorchBlock(cin, 64 * 2**i, 2 if i > 0 and j == 0 else 1, bottleneck))
                cin = 64 * 2**i * (4 if bottleneck else 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))
