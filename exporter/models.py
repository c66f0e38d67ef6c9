"""Network architectures. Normalization is the first layer of every network.

Why: noise is added in [0,1]-pixel space (x + N(0, sigma^2 I)) and certified radii are L2
distances in that space; if normalization happened outside the network, noise and radii would
silently live in the normalized space, scaled by 1/std per channel.

- `cnn`: a small VGG-style CNN, CPU-friendly (16-32-64 channels: 145k parameters, ~3,400
  images/s in onnxruntime on 2 CPU cores).
- `resnet110`: the CIFAR ResNet-110 of Cohen et al. (He et al. 2016), for GPU machines.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers saved with the weights."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]


def small_cnn(widths: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """6 conv layers in 3 stages, pooling early so most work runs at 16x16 and 8x8."""
    a, b, c = widths
    stages = [
        [*_conv_bn(3, a), nn.MaxPool2d(2)],
        [*_conv_bn(a, b), *_conv_bn(b, b), nn.MaxPool2d(2)],
        [*_conv_bn(b, c), *_conv_bn(c, c), nn.MaxPool2d(2)],
        [*_conv_bn(c, 2 * c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, num_classes)],
    ]
    # one flat Sequential: the checkpoints' state-dict keys are its layer indices
    return nn.Sequential(*(layer for stage in stages for layer in stage))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def cifar_resnet(depth: int, num_classes: int) -> nn.Sequential:
    """ResNet-(6k+2) for 32x32 inputs: 3 stages of k basic blocks, 16-32-64 channels."""
    k = (depth - 2) // 6
    layers, c_in = list(_conv_bn(3, 16)), 16
    for c_out, stride in [(16, 1), (32, 2), (64, 2)]:
        for i in range(k):
            layers.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
            c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def build(arch: str, widths, num_classes: int, mean, std) -> nn.Sequential:
    """The network named by `arch`, with Normalize(mean, std) as its first layer."""
    if arch == "cnn":
        body = small_cnn(tuple(widths), num_classes)
    elif arch == "resnet110":
        body = cifar_resnet(110, num_classes)
    else:
        raise ValueError(f"unknown arch {arch!r}; expected 'cnn' or 'resnet110'")
    return nn.Sequential(Normalize(mean, std), body)


def from_checkpoint(path: Path) -> nn.Sequential:
    """The network a training stage saved at `path` (base.pt or surrogate.pt), in eval mode."""
    return from_state(torch.load(path, map_location="cpu", weights_only=False))


def from_state(state: dict) -> nn.Sequential:
    """The network of a checkpoint already read (`torch.load` of base.pt or surrogate.pt)."""
    net = build(state["arch"], state["widths"], state["num_classes"], state["mean"], state["std"])
    net.load_state_dict(state["model"])
    return net.eval()


def channel_stats(images_uint8) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 [N,3,H,W] array, in [0,1] units."""
    x = torch.as_tensor(images_uint8[:10_000]).float() / 255.0
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()
