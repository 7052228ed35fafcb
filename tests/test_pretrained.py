"""Pretrained parts read only from the torch cache, with honest fallbacks (docs/design.md, "Pretrained
parts and fallbacks"): LPIPS (``invisible_face.models.perceptual``) and the classifiers' ImageNet starts
(``invisible_face.models.networks``, params ``classifiers.pretrained``).

The cache is a temporary TORCH_HOME, empty or seeded with randomly initialised state dicts of the right
shapes under the file names torchvision's weight enums give (``load_state_dict_from_url`` checks a hash
only when downloading, so an existing file is loaded as it is). Downloading is made to fail loudly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import AlexNet_Weights, MobileNet_V2_Weights, ResNet18_Weights, VGG11_BN_Weights

from invisible_face.models import perceptual
from invisible_face.models.networks import (
    build_classifier,
    load_classifier,
    resolve_pretrained,
    save_classifier,
)
from invisible_face.models.perceptual import Perceptual, lpips_weights_cached, lpips_weights_path

ATTRS = {"gender": 2, "age_bin": 5}


def _use_hub(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Point the torch hub cache at ``root``/hub (TORCH_HOME; forget any ``torch.hub.set_dir``)."""
    monkeypatch.setenv("TORCH_HOME", str(root))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert Path(torch.hub.get_dir()) == root / "hub"
    return root / "hub"


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture()
def empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return _use_hub(monkeypatch, tmp_path / "torch")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """A torch home whose hub cache holds random alexnet, resnet18, mobilenet_v2 (its V1 file, not the
    DEFAULT V2) and vgg11_bn (feature layers only: all that is read) weights -> (torch home, states)."""
    root = tmp_path_factory.mktemp("torch")
    checkpoints = root / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    models = {AlexNet_Weights.IMAGENET1K_V1: torchvision.models.alexnet(),
              ResNet18_Weights.IMAGENET1K_V1: torchvision.models.resnet18(),
              MobileNet_V2_Weights.IMAGENET1K_V1: torchvision.models.mobilenet_v2(),
              VGG11_BN_Weights.IMAGENET1K_V1: torchvision.models.vgg11_bn().features}
    states = {}
    for weights, model in models.items():
        state = model.state_dict()
        if weights is VGG11_BN_Weights.IMAGENET1K_V1:
            state = {f"features.{k}": v for k, v in state.items()}
        for k, v in state.items():  # every tensor off its fresh-init value, BN statistics included
            if k.endswith("running_var"):
                v.copy_(torch.rand_like(v) + 0.5)
            elif v.is_floating_point():
                v.add_(0.01 * torch.randn_like(v))
        torch.save(state, checkpoints / Path(weights.url).name)
        states[weights.url] = state
    return root, states


@pytest.fixture()
def seeded_cache(monkeypatch: pytest.MonkeyPatch, seeded) -> dict[str, dict[str, torch.Tensor]]:
    _use_hub(monkeypatch, seeded[0])
    return seeded[1]


def test_cache_file_names_come_from_torchvision(empty_cache: Path) -> None:
    assert lpips_weights_path() == empty_cache / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert not lpips_weights_cached()


# (a) auto with an empty cache: the fallbacks -------------------------------------------------------

def test_auto_empty_cache_falls_back(empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(perceptual, "_announced", set())
    surrogate = build_classifier("resnet18", ATTRS, input_size=32).eval()
    p = Perceptual("auto", surrogate)
    assert (p.name, p.metric_name) == ("surrogate_features", "percep_surrogate")
    assert "surrogate_features" in capsys.readouterr().err
    Perceptual("auto", surrogate)
    assert capsys.readouterr().err == ""  # said once
    with pytest.raises(ValueError, match="surrogate"):
        Perceptual("auto")  # the fallback needs the surrogate
    for arch in ("resnet18", "mobilenet_v2", "vgg11_bn_small"):
        model = build_classifier(arch, ATTRS, input_size=32, pretrained="auto")
        assert model.pretrained is False and model.config()["pretrained"] is False


# (b) auto with the seeded cache: the pretrained parts ----------------------------------------------

def test_auto_seeded_cache_runs_lpips_on_the_cached_backbone(seeded_cache, monkeypatch, capsys) -> None:
    monkeypatch.setattr(perceptual, "_announced", set())
    p = Perceptual("auto")  # no surrogate needed
    assert (p.name, p.metric_name) == ("lpips_alex", "lpips")
    assert "lpips_alex" in capsys.readouterr().err
    seeded = seeded_cache[AlexNet_Weights.IMAGENET1K_V1.url]
    for key, value in p.lpips.net.state_dict().items():  # slice<i>.<features index>.<param>
        assert torch.equal(value, seeded["features." + key.split(".", 1)[1]]), key
    assert not any(t.requires_grad for t in p.parameters())
    # the package's own linear heads, and [0, 1] inputs scaled to lpips's [-1, 1]
    assert all(lin.model[-1].weight.abs().sum() > 0 for lin in p.lpips.lins)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    d = p(x, y)
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
    torch.testing.assert_close(d, p.lpips(2 * x - 1, 2 * y - 1).flatten())


@pytest.mark.parametrize("arch, weights, drop", [
    ("resnet18", ResNet18_Weights.IMAGENET1K_V1, "fc."),
    ("mobilenet_v2", MobileNet_V2_Weights.IMAGENET1K_V1, "classifier."),  # a non-DEFAULT version is found too
    ("vgg11_bn", VGG11_BN_Weights.IMAGENET1K_V1, None),
])
def test_auto_seeded_cache_starts_classifier_from_imagenet(seeded_cache, arch, weights, drop) -> None:
    assert resolve_pretrained(arch, "auto") and resolve_pretrained(arch, "true") and not resolve_pretrained(arch, False)
    model = build_classifier(arch, ATTRS, input_size=32, pretrained="auto")
    assert model.pretrained is True and model.config()["pretrained"] is True
    backbone = model.backbone.state_dict()
    seeded = seeded_cache[weights.url]
    if arch == "vgg11_bn":
        seeded = {"0." + k[len("features."):]: v for k, v in seeded.items()}
    kept = {k: v for k, v in seeded.items() if drop is None or not k.startswith(drop)}
    assert set(kept) == set(backbone)
    for key, value in kept.items():
        assert torch.equal(backbone[key], value), key
    assert not build_classifier(arch, ATTRS, input_size=32, pretrained=False).pretrained
    # vgg11_bn_small stays a scratch model whatever is cached
    assert build_classifier("vgg11_bn_small", ATTRS, input_size=32, pretrained="auto").pretrained is False


# (c) forced with an empty cache: clear errors ------------------------------------------------------

def test_forced_without_weights_is_a_clear_error(empty_cache: Path) -> None:
    surrogate = build_classifier("resnet18", ATTRS, input_size=32).eval()
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth") as err:
        Perceptual("lpips", surrogate)
    assert str(empty_cache / "checkpoints") in str(err.value)
    file = Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    for flag in (True, "true"):
        with pytest.raises(FileNotFoundError, match=file):
            build_classifier("resnet18", ATTRS, input_size=32, pretrained=flag)
    with pytest.raises(ValueError, match="vgg11_bn_small has no ImageNet weights"):
        build_classifier("vgg11_bn_small", ATTRS, input_size=32, pretrained=True)
    with pytest.raises(ValueError, match="auto, true or false"):
        build_classifier("resnet18", ATTRS, input_size=32, pretrained="maybe")
    with pytest.raises(ValueError, match="unknown perceptual backend"):
        Perceptual("vgg", surrogate)


# (d) differentiable, and 0 for identical images ----------------------------------------------------

@pytest.mark.parametrize("backend", ["surrogate", "lpips"])
def test_perceptual_differentiable_and_zero_on_identical(seeded_cache, backend: str) -> None:
    surrogate = build_classifier("resnet18", ATTRS, input_size=32).eval().requires_grad_(False)
    p = Perceptual(backend, surrogate)
    assert p.name == {"surrogate": "surrogate_features", "lpips": "lpips_alex"}[backend]
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    assert p(x, x.clone()).abs().max().item() < 1e-6
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    d = p(x, x_adv)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert x_adv.grad is not None and x_adv.grad.abs().sum() > 0
    p.train()  # a fixed distance: its networks keep their modes
    assert not surrogate.training and (p.lpips is None or not p.lpips.training)


# (e) a saved pretrained classifier loads with an empty cache --------------------------------------

def test_saved_pretrained_classifier_loads_without_the_cache(seeded, monkeypatch, tmp_path: Path) -> None:
    _use_hub(monkeypatch, seeded[0])
    model = build_classifier("resnet18", ATTRS, input_size=32, pretrained=True).eval()
    path = save_classifier(model, tmp_path / "models" / "m.pt")
    assert json.loads(path.with_suffix(".json").read_text())["pretrained"] is True

    _use_hub(monkeypatch, tmp_path / "empty")  # the weights are gone: loading must not need them
    loaded = load_classifier(path)
    assert loaded.pretrained is True and loaded.config() == model.config()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # a config saved before ``pretrained`` was recorded loads as a scratch model
    legacy = {k: v for k, v in model.config().items() if k != "pretrained"}
    path.with_suffix(".json").write_text(json.dumps(legacy))
    assert load_classifier(path).pretrained is False
