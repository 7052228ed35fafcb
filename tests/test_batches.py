"""The batched refinement and the batched protector give what one face at a time gives."""

import numpy as np
import torch
from torch import nn

from invisible_face.method.refine import RefineSettings, refine_perturbation, worst_margins
from invisible_face.models.margins import attribute_margins


class Heads(nn.Module):
    """Two attribute heads on a small conv trunk (autocast runs its conv in bfloat16)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.heads = nn.ModuleDict({"a": nn.Linear(32, 2), "b": nn.Linear(32, 3)})

    def forward(self, x):
        z = self.trunk(x - 0.5)
        return {k: 20 * h(z) for k, h in self.heads.items()}


def _faces(n: int, seed: int = 1):
    model = Heads().requires_grad_(False)
    torch.manual_seed(seed)
    x = 0.4 + 0.2 * torch.rand(n, 3, 16, 16)
    with torch.no_grad():
        logits = model(x)
    classes = {k: nn.functional.one_hot(v.argmax(1), v.shape[1]).bool() for k, v in logits.items()}
    return model, x, classes


def test_a_batch_steps_each_face_as_it_would_alone():
    model, x, classes = _faces(6)
    settings = RefineSettings(0.15, steps=30, step_size=0.3, stop_margin=0.5, push_margin=1.0, momentum=0.5)
    mask = torch.ones(6, 1, 16, 16)
    delta, fooled, logits, taken = refine_perturbation(model, x, torch.zeros_like(x), mask, classes, settings)
    assert fooled.any() and len(set(taken.tolist())) > 1  # faces leave the batch at different steps
    for i in range(6):
        one = {k: c[i:i + 1] for k, c in classes.items()}
        d, f, lg, t = refine_perturbation(model, x[i:i + 1], torch.zeros_like(x[i:i + 1]), mask[i:i + 1], one,
                                          settings)
        assert int(t) == int(taken[i]) and bool(f) == bool(fooled[i])
        assert torch.allclose(d[0], delta[i], atol=1e-4)
        assert torch.allclose(lg["a"][0], logits["a"][i], atol=1e-3)


def test_bfloat16_steps_declare_protected_in_float32_only():
    model, x, classes = _faces(12, seed=3)
    settings = RefineSettings(0.15, steps=30, step_size=0.3, stop_margin=0.5, bf16_min_batch=4)
    delta, fooled, logits, _ = refine_perturbation(model, x, torch.zeros_like(x), torch.ones(12, 1, 16, 16),
                                                   classes, settings)
    assert fooled.any()
    with torch.no_grad():
        exact = model(x + delta)
    margins = attribute_margins(exact, classes)
    assert (margins[fooled] < -0.5).all()  # every face it calls protected is, in float32
    assert torch.allclose(exact["a"], logits["a"], atol=1e-4)  # and the logits it returns are float32 ones


def test_the_recheck_replaces_a_bfloat16_call_with_the_float32_one():
    model, x, classes = _faces(4)
    with torch.no_grad():
        exact = model(x)
    # logits that claim every face is far past its set: only the float32 answer may count
    claimed = {k: torch.where(c, -50.0, 50.0) for k, c in classes.items()}
    margins, logits = worst_margins(model, x, claimed, classes, None, 0.5, recheck=True)
    assert torch.allclose(margins, attribute_margins(exact, classes))
    assert torch.allclose(logits["b"], exact["b"])
    # a face at its last check is asked again even where the bfloat16 pass called it not fooled
    denied = {k: torch.where(c, 50.0, -50.0) for k, c in classes.items()}
    last = torch.tensor([True, False, False, True])
    margins, logits = worst_margins(model, x, denied, classes, None, 0.5, recheck=last)
    assert torch.allclose(margins[last], attribute_margins(exact, classes)[last])
    assert torch.equal(logits["b"][~last], denied["b"][~last])


def test_protect_photos_batches_faces_of_several_photos(tiny_protector, photos):
    from PIL import Image

    from invisible_face.protect.protector import Protector

    protector = Protector.load(tiny_protector)
    images = [np.array(Image.open(photos / name).convert("RGB")) for name in ("portrait.jpg", "two_faces.jpg")]
    together = protector.protect_photos(images)
    assert [len(records) for _, records in together] == [1, 2]
    for image, (out, records) in zip(images, together):
        alone, alone_records = protector.protect(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert [r.path for r in records] == [r.path for r in alone_records]
        assert np.abs(out.astype(int) - alone.astype(int)).max() <= 2  # the same change, batched or not
        changed = np.abs(out.astype(int) - image.astype(int)).max(2) > 0
        for r in records:  # the change stays around its face
            x0, y0, x1, y1 = (int(v) for v in r.region)
            inside = changed[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2].sum()
            assert inside > 0


def test_protect_chips_at_the_frame_size_is_the_chip_path(tiny_protector, utkface_dir):
    from PIL import Image

    from invisible_face.protect.protector import Protector

    protector = Protector.load(tiny_protector)
    chips = [np.array(Image.open(p).convert("RGB")) for p in sorted(utkface_dir.glob("*.jpg"))[:3]]
    batched = protector.protect_chips(chips)
    for chip, (out, records) in zip(chips, batched):
        alone, _ = protector.protect_chip(chip)
        assert out.shape == chip.shape
        assert np.abs(out.astype(int) - alone.astype(int)).max() <= 2
        assert records[0].steps >= 0 and records[0].ms > 0
