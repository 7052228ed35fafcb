"""Multi-task facial-attribute classifiers: the defender's surrogate and the adversary's target zoo.

Every model takes images in [0, 1] of any size (B x 3 x H x W), resizes them differentiably to its
own ``input_size`` and normalises them itself, so the protector can attack it through the resize.
Architectures come from torchvision. ``pretrained`` (params ``classifiers.pretrained``: auto | true | false)
starts resnet18/34, mobilenet_v2 and vgg11_bn from their ImageNet weights, read only from the torch cache
(``$TORCH_HOME/hub/checkpoints``, file names as torchvision's weight enums give them): nothing is ever
downloaded. auto: when the file is there, else from scratch; true: required (an error names the missing
file); false: from scratch. vgg11_bn_small (a custom narrow VGG) has no ImageNet weights. The saved config
records ``pretrained`` as actually used (true/false); rebuilding a saved model never reads the cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import (
    MobileNet_V2_Weights,
    ResNet18_Weights,
    ResNet34_Weights,
    VGG11_BN_Weights,
    WeightsEnum,
)

ARCHS = ("resnet18", "resnet34", "mobilenet_v2", "vgg11_bn", "vgg11_bn_small")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ImageNet weights per arch; vgg11_bn shares torchvision's vgg11_bn feature layers (its
# classifier is not used); vgg11_bn_small has none
IMAGENET_WEIGHTS: dict[str, type[WeightsEnum]] = {
    "resnet18": ResNet18_Weights, "resnet34": ResNet34_Weights, "mobilenet_v2": MobileNet_V2_Weights,
    "vgg11_bn": VGG11_BN_Weights,
}


def cached_weights_path(weights: WeightsEnum) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``weights`` (torch hub cache, honouring
    TORCH_HOME and ``torch.hub.set_dir``): ``<hub dir>/checkpoints/<file name of weights.url>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def imagenet_weights_path(arch: str) -> Path | None:
    """The cached ImageNet weights file of ``arch`` (the enum's DEFAULT preferred, then its other
    ImageNet versions), None when none is cached or ``arch`` has no ImageNet weights."""
    enum = IMAGENET_WEIGHTS.get(arch)
    if enum is None:
        return None
    for weights in [enum.DEFAULT, *(w for w in enum if w != enum.DEFAULT)]:
        if cached_weights_path(weights).is_file():
            return cached_weights_path(weights)
    return None


def _pretrained_flag(pretrained: bool | str) -> bool | str:
    """params value -> True, False or "auto" (YAML gives bools for true/false, a str for auto)."""
    if isinstance(pretrained, bool):
        return pretrained
    value = str(pretrained).strip().lower()
    if value in ("auto", "true", "false"):
        return {"true": True, "false": False}.get(value, "auto")
    raise ValueError(f"pretrained must be auto, true or false, got {pretrained!r}")


def resolve_pretrained(arch: str, pretrained: bool | str) -> bool:
    """Whether ``arch`` starts from ImageNet weights: auto -> when they are in the torch cache;
    true -> they must be (FileNotFoundError naming the file, ValueError for an arch without any);
    false -> never."""
    flag = _pretrained_flag(pretrained)
    if flag == "auto":
        return imagenet_weights_path(arch) is not None
    if not flag:
        return False
    if arch not in IMAGENET_WEIGHTS:
        raise ValueError(f"{arch} has no ImageNet weights (it is not a torchvision architecture): set "
                         "classifiers.pretrained to auto or false, or pick one of " + ", ".join(IMAGENET_WEIGHTS))
    if imagenet_weights_path(arch) is None:
        weights = IMAGENET_WEIGHTS[arch].DEFAULT
        raise FileNotFoundError(
            f"pretrained: true, but the ImageNet weights of {arch} are not in the torch cache: put {weights.url} "
            f"at {cached_weights_path(weights)} (e.g. run torchvision.models.{arch}(weights='DEFAULT') once on a "
            "machine with internet; TORCH_HOME moves the cache), or set classifiers.pretrained to auto or false")
    return True


def _imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """The cached ImageNet state dict of ``arch``, read from the file (no download path at all)."""
    resolve_pretrained(arch, True)  # raises, naming the file, when it is not cached
    return torch.load(imagenet_weights_path(arch), map_location="cpu", weights_only=True)


def _vgg11_bn(width_div: int) -> tuple[nn.Module, int]:
    """VGG-11 (config "A") with batch norm, channels divided by ``width_div``, global-average pooled."""
    cfg: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    cfg = [c if c == "M" else c // width_div for c in cfg]
    features = torchvision.models.vgg.make_layers(cfg, batch_norm=True)
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), int(cfg[-2])


def _backbone(arch: str, pretrained: bool = False) -> tuple[nn.Module, int]:
    """torchvision backbone without its classifier -> (module: B x 3 x h x w -> B x D, D);
    ``pretrained``: loaded with the ImageNet weights from the torch cache (never downloaded)."""
    if arch in ("resnet18", "resnet34", "mobilenet_v2"):
        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained:  # the whole torchvision model, then its classifier goes
            net.load_state_dict(_imagenet_state(arch))
        if arch == "mobilenet_v2":
            dim = net.classifier[-1].in_features
            net.classifier = nn.Identity()
        else:
            dim = net.fc.in_features
            net.fc = nn.Identity()
        return net, dim
    if arch == "vgg11_bn":
        net, dim = _vgg11_bn(width_div=1)
        if pretrained:  # torchvision's vgg11_bn feature layers are ours: net[0]
            net[0].load_state_dict({k[len("features."):]: v for k, v in _imagenet_state(arch).items()
                                    if k.startswith("features.")})
        return net, dim
    if arch == "vgg11_bn_small":
        if pretrained:
            raise ValueError("vgg11_bn_small has no ImageNet weights")
        return _vgg11_bn(width_div=4)
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")


class AttributeClassifier(nn.Module):
    """Shared backbone + one linear head per attribute.

    forward(x: B x 3 x H x W in [0, 1]) -> {attribute: B x n_classes logits}

    ``pretrained`` (auto | True | False, see ``resolve_pretrained``): ImageNet initialisation of the
    backbone from the torch cache; ``self.pretrained`` is what was used. ``load_pretrained=False``
    builds the architecture without reading the cache and only records ``pretrained`` (then a bool):
    for rebuilding a trained model whose saved state replaces the weights anyway.
    """

    def __init__(self, arch: str, attributes: dict[str, int], input_size: int = 64,
                 dropout: float = 0.0, pretrained: bool | str = False, load_pretrained: bool = True) -> None:
        super().__init__()
        self.arch, self.attributes, self.input_size = arch, dict(attributes), int(input_size)
        if load_pretrained:
            self.pretrained = resolve_pretrained(arch, pretrained)
        else:
            flag = _pretrained_flag(pretrained)
            if flag == "auto":
                raise ValueError("load_pretrained=False records pretrained as used: pass true or false, not auto")
            self.pretrained = flag
        self.backbone, dim = _backbone(arch, self.pretrained and load_pretrained)
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
                "dropout": self.dropout.p, "pretrained": self.pretrained}


def build_classifier(arch: str, attributes: dict[str, int], input_size: int = 64, dropout: float = 0.0,
                     pretrained: bool | str = False, load_pretrained: bool = True) -> AttributeClassifier:
    """A new multi-task classifier; ``attributes`` maps name -> number of classes. ``pretrained``
    (auto | True | False): backbone from the cached ImageNet weights (``AttributeClassifier``)."""
    return AttributeClassifier(arch, attributes, input_size=input_size, dropout=dropout, pretrained=pretrained,
                               load_pretrained=load_pretrained)


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
    model = build_classifier(cfg["arch"], cfg["attributes"], cfg["input_size"], cfg.get("dropout", 0.0),
                             pretrained=bool(cfg.get("pretrained", False)), load_pretrained=False)
    model.load_state_dict(state)  # the saved state replaces any ImageNet start: the cache is not read
    return model.eval().to(memory_format=torch.channels_last)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> AttributeClassifier:
    """Rebuild a classifier saved by ``save_classifier`` (weights_only load): see ``classifier_from_state``."""
    path = Path(path)
    cfg = json.loads(path.with_suffix(".json").read_text())
    return classifier_from_state(cfg, torch.load(path, map_location=map_location, weights_only=True))


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch: int = 128) -> dict[str, torch.Tensor]:
    """N x 3 x H x W -> {attribute: N x C}, in batches."""
    chunks = [model(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def predict(model: nn.Module, x: torch.Tensor, batch: int = 128) -> dict[str, torch.Tensor]:
    """N x 3 x H x W -> {attribute: N predicted classes}."""
    return {k: v.argmax(1) for k, v in logits(model, x, batch).items()}
