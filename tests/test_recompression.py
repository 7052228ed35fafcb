"""What platforms do to uploads: the codecs, the differentiable JPEG, the survive-JPEG stop rule,
the shaped refinement steps and the strength presets."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from invisible_face.method.recompression import POST_PROCESSING, jpeg, jpeg_differentiable, random_recompression
from invisible_face.method.refine import RefineSettings, refine_perturbation, shape_step
from invisible_face.models.margins import attribute_margins, plausible_classes
from invisible_face.protect.protector import Protector


def smooth_images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Photo-like test images: smooth colour fields with a little grain."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_differentiable_jpeg_is_close_to_pillow_and_gives_gradients(quality):
    x = smooth_images().requires_grad_(True)
    out = jpeg_differentiable(x, quality)
    # mean absolute difference to Pillow's codec at the same quality, in 8-bit levels
    assert (out.detach() - jpeg(x.detach(), quality)).abs().mean() * 255 < 3.0
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_random_recompression_keeps_shape_range_and_gradients():
    cfg = {"quality": [50, 95], "p_rescale": 1.0, "scale": [0.5, 1.0], "p_blur": 1.0, "sigma": [0.3, 1.0]}
    x = smooth_images().requires_grad_(True)
    out = random_recompression(x, cfg, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1e-4 and out.max() <= 1 + 1e-4
    out.mean().backward()
    assert x.grad.abs().sum() > 0


def test_every_post_processing_keeps_the_shape():
    x = smooth_images(2)
    for name, transform in POST_PROCESSING.items():
        out = transform(x)
        assert out.shape == x.shape, name
        assert 0 < (out - x).abs().mean() < 0.1, name  # it changes the image, not beyond recognition


def test_shape_step_damps_chroma_and_fine_grain():
    grad = torch.randn(2, 3, 100, 100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shape_step(grad), grad)  # defaults: unchanged
    grey = shape_step(grad, chroma_weight=0.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    half = shape_step(grad, chroma_weight=0.5)
    chroma = lambda g: (g - g.mean(1, keepdim=True)).pow(2).sum()
    assert torch.isclose(chroma(half), 0.25 * chroma(grad), rtol=1e-4)
    smooth = shape_step(grad, smooth=0.01)  # sigma 1 px on 100 px
    fine = lambda g: (g[..., 1:] - g[..., :-1]).pow(2).mean()
    assert fine(smooth) < 0.2 * fine(grad)


class Toy(nn.Module):
    """A linear attribute model on 2x2-pooled pixels: fooled within the budget in a few steps, and
    sensitive to the fine detail JPEG removes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads = nn.ModuleDict({"gender": nn.Linear(3 * 32 * 32, 2), "race": nn.Linear(3 * 32 * 32, 5)})
        for head in self.heads.values():
            head.weight.data *= 10
            head.bias.data.zero_()

    def forward(self, x):
        z = (F.avg_pool2d(x, 2) - 0.5).flatten(1)
        return {k: h(z) for k, h in self.heads.items()}


@pytest.mark.parametrize("quality", [None, 60])
def test_with_survive_jpeg_every_face_called_protected_survives_a_pillow_round_trip(quality):
    """The stop rule checks the real codec: whatever the refinement calls fooled stays fooled (every
    attribute out of its set by the stop margin) after a Pillow JPEG at that quality. Without the
    check, some faces it calls fooled are not fooled after the round trip: the check is what holds it."""
    model = Toy().eval()
    images = smooth_images(8, 64, seed=1)
    with torch.no_grad():
        classes = {k: plausible_classes(v, 0.95) for k, v in model(images).items()}
    # the survive round trip is a Pillow JPEG at that quality, and the steps follow a differentiable one
    settings = RefineSettings(8 / 255, steps=30, step_size=0.3, stop_margin=1.0, shrink=(0.6, 0.8),
                              survive_jpeg_quality=quality, jpeg_gradient=quality is not None)
    delta, fooled, _, _ = refine_perturbation(model, images, torch.zeros_like(images), torch.ones(8, 1, 64, 64),
                                              classes, settings)
    assert fooled.sum() >= 6
    written = ((images + delta) * 255).round() / 255
    with torch.no_grad():
        survived = (attribute_margins(model(jpeg(written, 60)), classes) < -1.0).all(1)
    if quality is None:
        assert not survived[fooled].all()
    else:
        assert survived[fooled].all()


def test_strength_presets_change_the_settings_and_unknown_ones_are_refused(tiny_protector):
    protector = Protector.load(tiny_protector)
    presets = protector.settings["strengths"]
    assert set(presets) == {"light", "standard", "strong"}
    assert protector.with_strength("standard").config == protector.config
    assert protector.with_strength("standard").settings == protector.settings
    strong = protector.with_strength("strong")
    # the presets are points on the perceptual budget's line: face-SSIM targets, lower for strong
    strong_target = strong.settings["visibility"]["face_ssim"]
    assert strong_target == presets["strong"]["visibility"]["face_ssim"]
    assert strong_target < protector.settings["visibility"]["face_ssim"]
    assert strong.settings["visibility"]["budget"] == protector.settings["visibility"]["budget"]
    assert strong.surrogate is protector.surrogate and strong.landmarks is protector.landmarks  # nothing reloaded
    assert protector.with_strength("light").settings["visibility"]["face_ssim"] > strong_target
    with pytest.raises(ValueError, match="unknown strength 'max'"):
        protector.with_strength("max")
