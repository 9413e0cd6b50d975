"""CNN encoders: the image side of the captioner, and its one preprocessing.

    backbones.py          Encoder (any torchvision classifier, a small CNN, or EfficientNet-Lite) with the
                          one image -> pixels transform derived from the backbone, freezing, fine-tuning
    efficientnet_lite.py  EfficientNet-Lite0/Lite2, built here, weights from pip packages

May import: captioner.images, captioner.modes.
"""
