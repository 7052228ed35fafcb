"""The perceptual distance of L_sem and of the evaluation: LPIPS when its weights are at hand, else an
LPIPS-style distance on the surrogate's own features (docs/design.md, "Pretrained parts and fallbacks").

- ``lpips``: the ``lpips`` package's LPIPS v0.1 (AlexNet). Its linear heads ship inside the package; its
  torchvision AlexNet backbone is read only from the torch cache (``$TORCH_HOME/hub/checkpoints``, the file
  name of ``AlexNet_Weights.IMAGENET1K_V1.url``): nothing is downloaded.
- ``surrogate``: :func:`perceptual_distance` on :class:`SurrogateFeatures` (the
  surrogate ResNet's layer1 and layer2), the project's fallback, reported as ``percep_surrogate``.
- ``auto``: lpips when its backbone is cached, else surrogate; says once which ran.

A random-weight network is never reported as LPIPS: forcing ``lpips`` without the cached backbone is an error.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights, WeightsEnum

from invisible_face.models.networks import AttributeClassifier, cached_weights_path

BACKENDS = ("auto", "lpips", "surrogate")
# lpips's net name -> (the torchvision builder lpips.pretrained_networks calls, the weights it loads then)
LPIPS_BACKBONES: dict[str, tuple[str, WeightsEnum]] = {
    "alex": ("alexnet", AlexNet_Weights.IMAGENET1K_V1), "vgg": ("vgg16", VGG16_Weights.IMAGENET1K_V1),
    "squeeze": ("squeezenet1_1", SqueezeNet1_1_Weights.IMAGENET1K_V1),
}
METRIC_NAMES = {"lpips_alex": "lpips", "surrogate_features": "percep_surrogate"}
_announced: set[str] = set()  # backends ``auto`` has already said it picked (once per process)


class SurrogateFeatures(nn.Module):
    """Early feature maps of a ResNet surrogate at the input's own resolution (for L_sem).

    forward(x: B x 3 x H x W in [0, 1]) -> [layer1 B x 64 x H/4 x W/4, layer2 B x 128 x H/8 x W/8]
    """

    def __init__(self, model: AttributeClassifier) -> None:
        super().__init__()
        if not hasattr(model.backbone, "layer2"):
            raise ValueError(f"L_sem needs a ResNet surrogate, got {model.arch}")
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = self.model.backbone
        h = (x - self.model.mean) / self.model.std
        h = b.maxpool(b.relu(b.bn1(b.conv1(h))))
        f1 = b.layer1(h)
        return [f1, b.layer2(f1)]


def perceptual_distance(fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS-style distance with unit layer weights: channel-normalised features, squared
    difference, averaged over space and summed over layers. lists of B x C x H x W -> B."""
    total = 0
    for a, b in zip(fx, fy):
        total = total + (F.normalize(a, dim=1) - F.normalize(b, dim=1)).pow(2).sum(1).mean(dim=(1, 2))
    return total


def lpips_weights_path(net: str = "alex") -> Path:
    """Where torchvision keeps the ImageNet backbone lpips's ``net`` needs (torch hub cache)."""
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"unknown lpips net {net!r}: use one of {', '.join(LPIPS_BACKBONES)}")
    return cached_weights_path(LPIPS_BACKBONES[net][1])


def lpips_weights_cached(net: str = "alex") -> bool:
    """Whether the torchvision backbone weights of lpips's ``net`` are in the torch cache (the
    lpips package ships its own linear-layer weights)."""
    return lpips_weights_path(net).is_file()


def _missing_message(net: str) -> str:
    builder, weights = LPIPS_BACKBONES[net]
    return (f"LPIPS ({net}) needs torchvision's ImageNet backbone in the torch cache; missing file: "
            f"{lpips_weights_path(net)}. Put {weights.url} there (e.g. run "
            f"torchvision.models.{builder}(weights='IMAGENET1K_V1') once on a machine with internet; TORCH_HOME "
            "moves the cache), or use the perceptual backend auto or surrogate")


def _lpips_from_cache(net: str = "alex") -> nn.Module:
    """``lpips.LPIPS(net, pretrained=True)`` with its backbone loaded from the cached torchvision file.

    LPIPS builds its backbone with ``tv.<net>(pretrained=...)``; ``pnet_rand=True`` makes that an
    untrained network (no download path), then the cached weights are copied into its slices, whose
    children keep their ``features`` indices as names (``slice2.3`` is ``features.3``). Strict loading
    checks every backbone tensor came from the file."""
    import lpips

    path = lpips_weights_path(net)
    if not path.is_file():
        raise FileNotFoundError(_missing_message(net))
    with warnings.catch_warnings():  # torchvision's deprecation warning for the legacy ``pretrained`` argument
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, pnet_tune=False, verbose=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = {}
    for slice_name, block in model.net.named_children():
        for index, layer in block.named_children():
            for key in layer.state_dict():
                backbone[f"{slice_name}.{index}.{key}"] = state[f"features.{index}.{key}"]
    model.net.load_state_dict(backbone, strict=True)
    return model.eval().requires_grad_(False)


class Perceptual(nn.Module):
    """Perceptual distance between two image batches.

    forward(x, y: B x 3 x H x W in [0, 1]) -> B distances, differentiable in x and y (the networks
    themselves are frozen), 0 for identical images. ``name``: which ran, "lpips_alex" or
    "surrogate_features"; ``metric_name``: the key to report it under, "lpips" or "percep_surrogate".

    ``backend``: auto | lpips | surrogate (module docstring). ``surrogate``: the trained ResNet
    surrogate (an ``AttributeClassifier``), or its ``SurrogateFeatures``; needed when the surrogate
    branch runs (ignored by lpips). LPIPS's AlexNet needs H, W >= 32 or so. ``train()``/``eval()`` leave
    the wrapped networks' modes alone: a distance keeps its networks as they are (LPIPS in eval mode).
    """

    def __init__(self, backend: str = "auto", surrogate: AttributeClassifier | nn.Module | None = None,
                 net: str = "alex") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown perceptual backend {backend!r}: use {', '.join(BACKENDS)}")
        chosen = backend
        if backend == "auto":
            chosen = "lpips" if lpips_weights_cached(net) else "surrogate"
        if chosen == "lpips":
            self.lpips, self.features = _lpips_from_cache(net), None
            self.name = f"lpips_{net}"
        else:
            if surrogate is None:
                raise ValueError("the surrogate perceptual distance needs the surrogate model (surrogate=...)"
                                 + ("" if backend == "surrogate" else f"; LPIPS's backbone is not cached: "
                                    f"{lpips_weights_path(net)}"))
            if isinstance(surrogate, AttributeClassifier):
                surrogate = SurrogateFeatures(surrogate)
            self.lpips, self.features = None, surrogate
            self.name = "surrogate_features"
        self.metric_name = METRIC_NAMES.get(self.name, self.name)
        if backend == "auto" and self.name not in _announced:
            _announced.add(self.name)
            why = (f"its backbone is cached ({lpips_weights_path(net)})" if chosen == "lpips"
                   else f"LPIPS's backbone is not cached ({lpips_weights_path(net)})")
            print(f"perceptual distance: {self.name} ({why})", file=sys.stderr, flush=True)

    def train(self, mode: bool = True) -> Perceptual:
        self.training = mode  # not recursive: see the class docstring
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.lpips is not None:
            return self.lpips(x, y, normalize=True).flatten()  # normalize: [0, 1] -> [-1, 1], lpips's input range
        return perceptual_distance(self.features(x), self.features(y))
