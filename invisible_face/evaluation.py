"""Evaluation of protection methods on test chips (paper VI-F): privacy on the surrogate and on the
target zoo, naturalness, identity, robustness, time. Every protected image is quantised to 8 bits
first, as a saved photo would be.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from invisible_face.identity import SAME_PERSON, IdentityEmbedder
from invisible_face.ldman_training import SurrogateFeatures
from invisible_face.losses import perceptual_distance
from invisible_face.metrics import fooled_rate, h_pn, mosr, mosr_by_count, mosr_correct, psnr, ssim
from invisible_face.models import AttributeClassifier
from invisible_face.protector import to_uint8
from invisible_face.refine import plausible_classes


@dataclass
class TestSet:
    images: torch.Tensor                 # N x 3 x H x W in [0, 1]
    labels: dict[str, torch.Tensor]      # attribute -> N
    boxes: list[tuple[float, ...]]       # face box per chip (identity embeddings)
    identity: list[np.ndarray] | None = None  # the clean chips' embeddings, computed once (see score)
    clean_logits: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # model name -> its logits, once

    def clean_calls(self, name: str, model: AttributeClassifier) -> dict[str, torch.Tensor]:
        """``model``'s logits on the clean chips {attribute: N x C}, computed on first use: every
        method is scored against the same clean calls."""
        if name not in self.clean_logits:
            self.clean_logits[name] = logits(model, self.images)
        return self.clean_logits[name]


def quantise(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


@torch.no_grad()
def logits(model: AttributeClassifier, x: torch.Tensor, batch: int = 128) -> dict[str, torch.Tensor]:
    """N x 3 x H x W -> {attribute: N x C}, in batches."""
    chunks = [model(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def predict(model: AttributeClassifier, x: torch.Tensor, batch: int = 128) -> dict[str, torch.Tensor]:
    """N x 3 x H x W -> {attribute: N predicted classes}."""
    return {k: v.argmax(1) for k, v in logits(model, x, batch).items()}


def truth_in_cover(clean_logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], cover: float) -> float:
    """Share of faces whose true class lies, for every attribute, inside the set a label-free
    protector steers away from (:func:`invisible_face.refine.plausible_classes` on the clean face).

    Steering a call out of that set fools such a face. Any other face is fooled only if its call
    lands on a third, wrong class, never on a binary attribute: this share roughly caps
    label-free MOSR. clean_logits: the surrogate's, {attribute: N x C}; labels: {attribute: N}."""
    inside = torch.stack([plausible_classes(clean_logits[k], cover).gather(1, labels[k].view(-1, 1))[:, 0]
                          for k in labels])
    return inside.all(0).float().mean().item()


def run_method(protect: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor], data: TestSet,
               batch: int = 16) -> tuple[torch.Tensor, float]:
    """Apply ``protect(images, labels)`` in batches -> (quantised protected images, ms per image)."""
    outs, start = [], time.perf_counter()
    for i in range(0, len(data.images), batch):
        outs.append(protect(data.images[i:i + batch], {k: v[i:i + batch] for k, v in data.labels.items()}))
    ms = 1000 * (time.perf_counter() - start) / len(data.images)
    return quantise(torch.cat(outs)), ms


def score(protected: torch.Tensor, data: TestSet, surrogate: AttributeClassifier, zoo: dict[str, AttributeClassifier],
          embedder: IdentityEmbedder | None) -> dict[str, Any]:
    """Privacy, naturalness and identity figures of one method's protected test set. Transfer: each
    zoo model's MOSR, and per attribute the share of its right calls on the clean chips that
    protection makes wrong (``fooled_<model>_<attribute>``; MOSR needs all three at once)."""
    argmax = lambda calls: {k: v.argmax(1) for k, v in calls.items()}
    clean_pred, adv_pred = argmax(data.clean_calls("surrogate", surrogate)), predict(surrogate, protected)
    s = ssim(data.images, protected).mean().item()
    p = psnr(data.images, protected)
    p = p[torch.isfinite(p)].mean().item() if torch.isfinite(p).any() else float("inf")
    m = mosr(adv_pred, data.labels)
    features = SurrogateFeatures(surrogate)
    with torch.no_grad():
        percep = torch.cat([perceptual_distance(features(data.images[i:i + 64]), features(protected[i:i + 64]))
                            for i in range(0, len(protected), 64)]).mean().item()
    row = {"mosr": m, "mosr_correct": mosr_correct(clean_pred, adv_pred, data.labels), "ssim": s, "psnr": p,
           "h_pn": h_pn(m, s, p), "percep_surrogate": percep,
           **{f"mosr_{k}_attributes": v for k, v in mosr_by_count(adv_pred, data.labels).items()}}
    for name, model in zoo.items():
        zoo_pred = predict(model, protected)
        row[f"mosr_{name}"] = mosr(zoo_pred, data.labels)
        for attribute, rate in fooled_rate(argmax(data.clean_calls(name, model)), zoo_pred, data.labels).items():
            row[f"fooled_{name}_{attribute}"] = rate
    if zoo:
        transfer = float(np.mean([row[f"mosr_{n}"] for n in zoo]))
        row["mosr_transfer_mean"] = transfer
        row["transfer_drop"] = (m - transfer) / m if m > 0 else float("nan")
        for attribute in data.labels:
            row[f"fooled_transfer_{attribute}"] = float(np.mean([row[f"fooled_{n}_{attribute}"] for n in zoo]))
    if embedder is not None:
        if data.identity is None:  # the clean chips' embeddings serve every method
            data.identity = [embedder.embed(to_uint8(a), box) for a, box in zip(data.images, data.boxes)]
        d = [float(np.linalg.norm(embedder.embed(to_uint8(b), box) - e))
             for b, box, e in zip(protected, data.boxes, data.identity)]
        row["identity_distance"] = float(np.mean(d))
        row["identity_kept"] = float(np.mean(np.array(d) < SAME_PERSON))
    return row


# ------------------------------------------------------------------ robustness


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip through PIL (4:2:0, as photo sites store)."""
    out = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            buf, "JPEG", quality=quality)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "jpeg90": lambda x: jpeg(x, 90),
    "jpeg75": lambda x: jpeg(x, 75),
    "jpeg50": lambda x: jpeg(x, 50),
    "blur": lambda x: kornia.filters.gaussian_blur2d(x, (5, 5), (1.0, 1.0)),
    "resize_half": lambda x: F.interpolate(F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True),
                                           size=x.shape[-2:], mode="bilinear"),
}


def robustness(protected: torch.Tensor, data: TestSet, surrogate: AttributeClassifier) -> dict[str, float]:
    """Surrogate MOSR after each post-processing an image meets on its way to a platform."""
    return {f"mosr_after_{name}": mosr(predict(surrogate, quantise(t(protected))), data.labels)
            for name, t in TRANSFORMS.items()}


def perturbation_kde(deltas: dict[str, torch.Tensor], epsilon: float, path) -> None:
    """Fig. 9 style: density of the perturbation values of each method (inside +-epsilon)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    grid = np.linspace(-epsilon * 1.05, epsilon * 1.05, 200)
    for name, d in deltas.items():
        values = d.flatten().numpy()
        values = values[np.random.default_rng(0).integers(0, len(values), 20000)]
        bw = 0.1 * epsilon
        density = np.exp(-((grid[:, None] - values[None]) ** 2) / (2 * bw**2)).mean(1) / (bw * np.sqrt(2 * np.pi))
        ax.plot(grid * 255, density, label=name)
    ax.set(xlabel="perturbation value (x255)", ylabel="density", title="Perturbation distribution (Fig. 9 style)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ adaptive attacker (Table IX)


class DnCNN(nn.Module):
    """The adversary's purifier: a DnCNN-style residual denoiser (conv-BN-ReLU stack predicting the
    perturbation, subtracted from the input). B x 3 x H x W in [0, 1] -> same."""

    def __init__(self, depth: int = 8, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.net(x)).clamp(0, 1)


def train_purifier(protected: torch.Tensor, clean: torch.Tensor, cfg: dict[str, Any], seed: int) -> DnCNN:
    """Fit a DnCNN on (protected -> clean) pairs (N x 3 x H x W each) with an L1 loss on paired
    random crops of ``cfg['crop']`` px -> the purifier in eval mode."""
    from tqdm import tqdm

    from invisible_face.denoiser import random_crops

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DnCNN(cfg["depth"], cfg["width"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    pairs = torch.cat([protected, clean], 1)  # crop both with the same window
    for epoch in range(cfg["epochs"]):
        order = torch.randperm(len(pairs), generator=g)
        for start in tqdm(range(0, len(pairs), cfg["batch_size"]), desc=f"DnCNN epoch {epoch + 1}", leave=False):
            crops = random_crops(pairs[order[start:start + cfg["batch_size"]]], cfg["crop"], g)
            loss = (model(crops[:, :3]) - crops[:, 3:]).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def purify(model: DnCNN, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
