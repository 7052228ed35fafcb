"""The perceptual budget against the uniform one at matched visibility (docs/design.md, "The perceptual
budget"): the protector run with each budget at several face-SSIM targets, a table and a figure of
reach against the face SSIM reached, and 2x crops of forehead, cheek and hair where a change would show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from invisible_face.method.visibility import grey_levels, local_std

# the figures each frontier point reports (the evaluation's score keys); ms_per_image is ms per face
FRONTIER_FIGURES = ("face_ssim", "ssim", "face_psnr", "texture_ratio", "skin_delta_e", "known_backbone_fooled_mean",
                    "mosr", "zoo_fooled_mean", "identity_kept", "ms_per_image")
PANELS = {"known_backbone_fooled_mean": "known backbone: right calls made wrong",
          "mosr": "ResNet-18 MOSR (white box)", "zoo_fooled_mean": "zoo: right calls made wrong"}


def point_name(budget: str, target: float) -> str:
    """The method name of one frontier point, e.g. ``invisible_face_perceptual_ssim95``."""
    return f"invisible_face_{budget}_ssim{round(100 * target)}"


def budget_override(budget: str, target: float) -> dict[str, Any]:
    """The protector settings' override (params ``protector``'s keys) of one frontier point. The uniform
    budget is the L-inf epsilon everywhere with no separate colour bound, held to the same face-SSIM target."""
    visibility: dict[str, Any] = {"budget": budget, "face_ssim": target}
    if budget == "uniform":
        visibility["chroma_share"] = None
    return {"visibility": visibility}


def budget_frontier_table(results: dict[str, dict], points: dict[tuple[str, float], str]) -> pd.DataFrame:
    """One row per (budget, target): the method that ran it and its :data:`FRONTIER_FIGURES`.
    points: {(budget, target): method name in ``results``}."""
    rows = [{"budget": budget, "target": target, "method": name,
             **{k: results[name].get(k) for k in FRONTIER_FIGURES}}
            for (budget, target), name in points.items() if name in results]
    return pd.DataFrame(rows).rename(columns={"ms_per_image": "ms_per_face"})


def budget_frontier_metrics(table: pd.DataFrame) -> dict[str, float | None]:
    """The frontier flat for metrics.json: ``frontier_<budget>_ssim<target x 100>_<figure>``."""
    out = {}
    for _, row in table.iterrows():
        prefix = f"frontier_{row['budget']}_ssim{round(100 * row['target'])}"
        for k, v in row.drop(["budget", "target", "method"]).items():
            out[f"{prefix}_{k}"] = None if v is None or not np.isfinite(v) else float(v)
    return out


def budget_frontier_figure(table: pd.DataFrame, path: str | Path) -> None:
    """Reach against the face SSIM each point reached, one line per budget, one panel per reach figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6), squeeze=False)
    for ax, (y, label) in zip(axes[0], PANELS.items()):
        for budget, rows in table.groupby("budget", sort=False):
            rows = rows.sort_values("face_ssim")
            ax.plot(rows["face_ssim"], rows[y], marker="o", label=budget)
            for _, r in rows.iterrows():
                ax.annotate(f"{r['target']:.2f}", (r["face_ssim"], r[y]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.set(xlabel="face SSIM reached", ylabel=label, ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title="budget (target beside each point)", title_fontsize=7)
    fig.suptitle("Reach at matched visibility: perceptual against uniform budget (further right and higher is "
                 "better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def region_boxes(image: torch.Tensor, points: np.ndarray, side: int) -> dict[str, tuple[int, int, int, int]]:
    """Square ``side`` px boxes (x0, y0, x1, y1) of a face's forehead (above the brows), left cheek
    (between the jaw and the nose, under the eye) and hair: the most textured window above the eyes (local
    contrast of the clean chip, :func:`invisible_face.method.visibility.local_std`), hair where the chip
    shows it, else the hairline or an edge, where the perceptual budget allows the most change.
    image: 3 x S x S clean chip in [0, 1]; points: its 68 landmarks (chip pixels)."""
    size = image.shape[-1]
    brows, eyes = points[17:27], points[36:42]
    half = side // 2
    clamp = lambda c: int(np.clip(round(c), half, size - half))
    forehead = (brows[:, 0].mean(), brows[:, 1].min() - 0.6 * side)
    cheek = ((points[2, 0] + points[31, 0]) / 2, (eyes[:, 1].max() + points[3, 1]) / 2 + 0.1 * side)
    boxes = {name: (clamp(x) - half, clamp(y) - half, clamp(x) + half, clamp(y) + half)
             for name, (x, y) in (("forehead", forehead), ("cheek", cheek))}
    stride = 4
    texture = F.avg_pool2d(local_std(grey_levels(image[None])), side, stride)[0, 0]  # mean contrast per window
    above = max(1, min(texture.shape[0], int((eyes[:, 1].min() - side) // stride) + 1))  # windows above the eyes
    row, col = divmod(int(texture[:above].argmax()), texture.shape[1])
    boxes["hair"] = (col * stride, row * stride, col * stride + side, row * stride + side)
    return boxes


def region_crops(clean: torch.Tensor, versions: dict[str, torch.Tensor], points: np.ndarray, path: str | Path,
                 side: int = 40, zoom: int = 2) -> None:
    """PNG of forehead, cheek and hair crops at ``zoom`` x (nearest: nothing smooths a pattern away), one
    row per face and region, one column for the clean chip and one per protected version.
    clean: N x 3 x S x S; versions: {name: N x 3 x S x S}; points: N x 68 x 2 (chip pixels)."""
    import torchvision

    tiles = []
    for i, p in enumerate(points):
        for x0, y0, x1, y1 in region_boxes(clean[i], p, side).values():
            for image in [clean, *versions.values()]:
                tiles.append(F.interpolate(image[i:i + 1, :, y0:y1, x0:x1], scale_factor=zoom, mode="nearest"))
    grid = torchvision.utils.make_grid(torch.cat(tiles), nrow=1 + len(versions), padding=4, pad_value=1.0)
    torchvision.utils.save_image(grid, str(path))
