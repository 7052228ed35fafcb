"""Multi-task facial-attribute classifiers: the defender's surrogate and the adversary's target zoo.

Every model takes images in [0, 1] of any size (B x 3 x H x W), resizes them differentiably to its
own ``input_size`` and normalises them itself, so the protector can attack it through the resize.
Architectures come from torchvision and are trained from scratch (no weights can be downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

ARCHS = ("resnet18", "resnet34", "mobilenet_v2", "vgg11_bn", "vgg11_bn_small")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg11_bn(width_div: int) -> tuple[nn.Module, int]:
    """VGG-11 (config "A") with batch norm, channels divided by ``width_div``, global-average pooled."""
    cfg: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    cfg = [c if c == "M" else c // width_div for c in cfg]
    features = torchvision.models.vgg.make_layers(cfg, batch_norm=True)
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), int(cfg[-2])


def _backbone(arch: str) -> tuple[nn.Module, int]:
    """torchvision backbone without its classifier -> (module: B x 3 x h x w -> B x D, D)."""
    if arch in ("resnet18", "resnet34"):
        net = getattr(torchvision.models, arch)(weights=None)
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim
    if arch == "mobilenet_v2":
        net = torchvision.models.mobilenet_v2(weights=None)
        dim = net.classifier[-1].in_features
        net.classifier = nn.Identity()
        return net, dim
    if arch == "vgg11_bn":
        return _vgg11_bn(width_div=1)
    if arch == "vgg11_bn_small":
        return _vgg11_bn(width_div=4)
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")


class AttributeClassifier(nn.Module):
    """Shared backbone + one linear head per attribute.

    forward(x: B x 3 x H x W in [0, 1]) -> {attribute: B x n_classes logits}
    """

    def __init__(self, arch: str, attributes: dict[str, int], input_size: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.arch, self.attributes, self.input_size = arch, dict(attributes), int(input_size)
        self.backbone, dim = _backbone(arch)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in attributes.items()})
        # constants, not state: keep the state dict to learnable weights and BN statistics
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> B x 3 x S x S normalised (S = input_size), differentiable."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.dropout(self.backbone(self.preprocess(x)))  # B x D
        return {name: head(z) for name, head in self.heads.items()}

    def config(self) -> dict[str, Any]:
        """What ``build_classifier`` needs to rebuild this model (saved beside the weights)."""
        return {"arch": self.arch, "attributes": self.attributes, "input_size": self.input_size,
                "dropout": self.dropout.p}


def build_classifier(arch: str, attributes: dict[str, int], input_size: int = 64,
                     dropout: float = 0.0) -> AttributeClassifier:
    """A freshly initialised multi-task classifier; ``attributes`` maps name -> number of classes."""
    return AttributeClassifier(arch, attributes, input_size=input_size, dropout=dropout)


def save_classifier(model: AttributeClassifier, path: str | Path,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``<path>`` (plain state dict) and ``<path minus .pt>.json`` (config + ``extra``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, path)
    path.with_suffix(".json").write_text(json.dumps({**model.config(), **(extra or {})}, indent=2))
    return path


def classifier_from_state(cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> AttributeClassifier:
    """A trained classifier from its config and state dict, in eval mode and laid out channels-last:
    NHWC convolutions make one face's forward + backward pass through the ResNet-18 surrogate faster
    on a CPU (``benchmarks/protect_speed.py`` times both layouts), and every user of a trained model
    (regions, directions, LD-MAN, protector, evaluation) runs it that way."""
    model = build_classifier(cfg["arch"], cfg["attributes"], cfg["input_size"], cfg.get("dropout", 0.0))
    model.load_state_dict(state)
    return model.eval().to(memory_format=torch.channels_last)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> AttributeClassifier:
    """Rebuild a classifier saved by ``save_classifier`` (weights_only load): see ``classifier_from_state``."""
    path = Path(path)
    cfg = json.loads(path.with_suffix(".json").read_text())
    return classifier_from_state(cfg, torch.load(path, map_location=map_location, weights_only=True))
