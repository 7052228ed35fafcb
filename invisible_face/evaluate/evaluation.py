"""Evaluation of protection methods on test chips (paper VI-F): privacy on the surrogate and on the
target zoo, naturalness, identity, robustness, time. Every protected image is quantised to 8 bits
first, as a saved photo would be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from invisible_face.method.recompression import POST_PROCESSING
from invisible_face.method.visibility import box_of, face_ssim, skin_delta_e, texture_ratio
from invisible_face.metrics import fooled_rate, h_pn, mosr, mosr_by_count, mosr_correct, psnr, ssim
from invisible_face.models.embedding_adversary import EmbeddingAdversary
from invisible_face.models.identity import SAME_PERSON
from invisible_face.models.margins import plausible_classes
from invisible_face.models.networks import AttributeClassifier, logits, predict
from invisible_face.models.perceptual import Perceptual


@dataclass
class TestSet:
    images: torch.Tensor                 # N x 3 x H x W in [0, 1]
    labels: dict[str, torch.Tensor]      # attribute -> N
    clean_embeddings: np.ndarray | None = None  # N x 128 face embeddings of the clean chips, once (see score)
    clean_logits: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # model name -> its logits, once
    face_masks: torch.Tensor | None = None  # N x 1 x H x W: the face masks from the chips' landmarks (face pixels)

    def head(self, n: int) -> "TestSet":
        """The first ``n`` chips (their labels and face masks)."""
        masks = self.face_masks[:n] if self.face_masks is not None else None
        return TestSet(self.images[:n], {k: v[:n] for k, v in self.labels.items()}, face_masks=masks)

    def clean_calls(self, name: str, model: AttributeClassifier) -> dict[str, torch.Tensor]:
        """``model``'s logits on the clean chips {attribute: N x C}, computed on first use: every
        method is scored against the same clean calls."""
        if name not in self.clean_logits:
            self.clean_logits[name] = logits(model, self.images)
        return self.clean_logits[name]


def quantise(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def truth_in_cover(clean_logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], cover: float) -> float:
    """Share of faces whose true class lies, for every attribute, inside the set a label-free
    protector steers away from (:func:`invisible_face.method.refine.plausible_classes` on the clean face).

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
          embed: Callable[[torch.Tensor], np.ndarray] | None, adversary: EmbeddingAdversary | None = None,
          perceptual: Perceptual | None = None, members: dict[str, nn.Module] | None = None) -> dict[str, Any]:
    """Privacy, naturalness and identity figures of one method's protected test set, in three tiers.
    White-box: ``surrogate`` (``mosr``) and each other ensemble member in ``members`` (``mosr_<name>``,
    ``fooled_<name>_<attribute>``). Known backbone: the embedding ``adversary``, its own heads on the
    public face embedding the defender also runs (``known_backbone_*``), called on the written images
    only. Black-box: each zoo model's MOSR, and per attribute the share of its right calls on the clean
    chips that protection makes wrong (``fooled_<model>_<attribute>``; MOSR needs all three at once),
    their mean over the zoo's models and attributes (``zoo_fooled_mean``).
    ``embed``: chips -> N x 128 face embeddings (identity kept, and the adversary's input);
    ``perceptual``: the distance reported under its ``metric_name`` (default: surrogate features)."""
    argmax = lambda calls: {k: v.argmax(1) for k, v in calls.items()}
    clean_pred, adv_pred = argmax(data.clean_calls("surrogate", surrogate)), predict(surrogate, protected)
    s = ssim(data.images, protected).mean().item()
    p = psnr(data.images, protected)
    p = p[torch.isfinite(p)].mean().item() if torch.isfinite(p).any() else float("inf")
    m = mosr(adv_pred, data.labels)
    perceptual = perceptual or Perceptual("surrogate", surrogate)
    with torch.no_grad():
        percep = torch.cat([perceptual(data.images[i:i + 64], protected[i:i + 64])
                            for i in range(0, len(protected), 64)]).mean().item()
    row = {"mosr": m, "mosr_correct": mosr_correct(clean_pred, adv_pred, data.labels), "ssim": s, "psnr": p,
           "h_pn": h_pn(m, s, p), perceptual.metric_name: percep, "perceptual": perceptual.name,
           **{f"mosr_{k}_attributes": v for k, v in mosr_by_count(adv_pred, data.labels).items()}}
    if data.face_masks is not None:
        row |= face_naturalness(data.images, protected, data.face_masks)
    for name, model in {**(members or {}), **zoo}.items():
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
        row["zoo_fooled_mean"] = float(np.mean([row[f"fooled_transfer_{a}"] for a in data.labels]))
    if embed is None:
        if adversary is not None:
            raise ValueError("the embedding adversary needs the embeddings: pass embed")
        return row
    if data.clean_embeddings is None:  # the clean chips' embeddings serve every method
        data.clean_embeddings = embed(data.images)
    embeddings = embed(protected)
    d = np.linalg.norm(embeddings - data.clean_embeddings, axis=1)
    row["identity_distance"] = float(d.mean())
    row["identity_kept"] = float((d < SAME_PERSON).mean())
    if adversary is not None:
        adv_pred = adversary.predict_embeddings(embeddings)
        row["known_backbone_mosr"] = mosr(adv_pred, data.labels)
        clean_adv = adversary.predict_embeddings(data.clean_embeddings)
        for attribute, rate in fooled_rate(clean_adv, adv_pred, data.labels).items():
            row[f"known_backbone_fooled_{attribute}"] = rate
        row["known_backbone_fooled_mean"] = float(np.mean([row[f"known_backbone_fooled_{a}"]
                                                                for a in data.labels]))
    return row


def face_naturalness(clean: torch.Tensor, protected: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Naturalness on the face itself: SSIM and PSNR over the face mask's bounding box
    (:func:`invisible_face.method.visibility.face_ssim`), the texture ratio (mean |change| on the 40 %
    smoothest face pixels over the rest, :func:`invisible_face.method.visibility.texture_ratio`) and the
    colour change on those smooth pixels (CIEDE2000, :func:`invisible_face.method.visibility.skin_delta_e`);
    means over the chips that changed. clean, protected: N x 3 x H x W; masks: N x 1 x H x W."""
    psnrs = []
    for c, x, m in zip(clean, protected, masks):
        rows, cols = box_of(m)
        psnrs.append(psnr(c[:, rows, cols][None], x[:, rows, cols][None])[0])
    finite_mean = lambda v: v[torch.isfinite(v)].mean().item() if torch.isfinite(v).any() else float("nan")
    p = torch.stack(psnrs)
    return {"face_ssim": face_ssim(clean, protected, masks).mean().item(),
            "face_psnr": finite_mean(p) if torch.isfinite(p).any() else float("inf"),
            "texture_ratio": finite_mean(texture_ratio(clean, protected, masks)),
            "skin_delta_e": finite_mean(skin_delta_e(clean, protected, masks))}


# ------------------------------------------------------------------ robustness


def robustness(protected: torch.Tensor, data: TestSet, surrogate: AttributeClassifier) -> dict[str, float]:
    """Surrogate MOSR after each post-processing an image meets on its way to a platform
    (:data:`invisible_face.method.recompression.POST_PROCESSING`)."""
    return {f"mosr_after_{name}": mosr(predict(surrogate, quantise(t(protected))), data.labels)
            for name, t in POST_PROCESSING.items()}


def robustness_table(results: dict[str, dict], robust: dict[str, dict]) -> pd.DataFrame:
    """Surrogate MOSR before and after each post-processing, one row per method (the DnCNN column
    where that method faced the adaptive attacker)."""
    return pd.DataFrame({name: {"before": results[name]["mosr"],
                                **{k.removeprefix("mosr_after_"): v for k, v in robust[name].items()
                                   if k.startswith("mosr_after_")}}
                         for name in robust}).T.rename_axis("method")


def robustness_figure(table: pd.DataFrame, path) -> None:
    """Grouped bars: per method, MOSR before and after each post-processing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(table)), 4))
    width = 0.8 / len(table.columns)
    for i, column in enumerate(table.columns):
        ax.bar(np.arange(len(table)) + i * width, table[column].fillna(0), width, label=column)
    ax.set_xticks(np.arange(len(table)) + 0.4 - width / 2, table.index, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="surrogate MOSR", ylim=(0, 1), title="MOSR before and after what platforms do to uploads")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


FRONTIER_Y = {"known_backbone_mosr": "known backbone (embedding adversary) MOSR",
              "known_backbone_fooled_mean": "known backbone: right calls made wrong",
              "zoo_fooled_mean": "zoo: right calls made wrong", "mosr": "surrogate MOSR (white box)"}


def frontier_table(results: dict[str, dict], families: dict[str, list[str]]) -> pd.DataFrame:
    """One row per (method family, strength): PSNR, SSIM and the privacy figures of
    :data:`FRONTIER_Y` that ``results`` holds. families: {family: [method names, weakest first]}."""
    rows = [{"family": family, "method": name, "psnr": results[name]["psnr"], "ssim": results[name]["ssim"],
             **{k: results[name].get(k) for k in FRONTIER_Y}}
            for family, names in families.items() for name in names if name in results]
    return pd.DataFrame(rows)


def frontier_figure(table: pd.DataFrame, path) -> dict[str, list[str]]:
    """Privacy against PSNR, one curve per method family, one panel per privacy figure present
    -> {privacy figure: the families drawn in its panel}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ys = [k for k in FRONTIER_Y if k in table and table[k].notna().any()]
    fig, axes = plt.subplots(1, len(ys), figsize=(4.2 * len(ys), 3.6), squeeze=False)
    drawn: dict[str, list[str]] = {}
    for ax, y in zip(axes[0], ys):
        for family, rows in table.groupby("family", sort=False):
            rows = rows.sort_values("psnr")
            ax.plot(rows["psnr"], rows[y], marker="o", label=family)
            drawn.setdefault(y, []).append(family)
        ax.set(xlabel="PSNR (dB)", ylabel=FRONTIER_Y[y], ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Protection against visibility (higher and further right is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


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

    from invisible_face.method.denoiser import random_crops

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
