"""ms per 200x200 face for the protector (landmarks, region, DP, G, paste) next to a PGD-50
baseline (full image, same surrogate, same faces) in the same run, with both methods' MOSR and
SSIM on the surrogate.

    python benchmarks/protect_speed.py [--model artifacts/export/protector] [--faces 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from PIL import Image

from invisible_face.attacks import baseline_attack
from invisible_face.metrics import mosr, psnr, ssim
from invisible_face.params import PROJECT_ROOT, load_params
from invisible_face.protector import Protector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(PROJECT_ROOT / "artifacts/export/protector"))
    parser.add_argument("--faces", type=int, default=50)
    args = parser.parse_args()
    cfg = load_params(PROJECT_ROOT / "params.yaml")
    protector = Protector.load(args.model)
    manifest = pd.read_csv(PROJECT_ROOT / "artifacts/validate/manifest.csv")
    test = manifest[manifest["split"] == "test"].sort_values("file").head(args.faces)
    chips = [np.asarray(Image.open(PROJECT_ROOT / cfg["data"]["image_dir"] / f).convert("RGB")) for f in test["file"]]
    labels = {k: torch.tensor(test[k].to_numpy()) for k in protector.config["attributes"]}
    clean = torch.stack([torch.from_numpy(c).permute(2, 0, 1).float() / 255 for c in chips])
    print(f"{len(chips)} test faces (200x200), torch threads {torch.get_num_threads()}, "
          f"landmarks {protector.landmarks.name}")

    protector.protect_chip(chips[0])  # warm-up
    start = time.perf_counter()
    protected = [protector.protect_chip(c)[0] for c in chips]
    ours_ms = 1000 * (time.perf_counter() - start) / len(chips)
    ours = torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p in protected])

    start = time.perf_counter()
    pgd = torch.cat([baseline_attack("pgd", protector.surrogate, clean[i:i + 1], {k: v[i:i + 1] for k, v in labels.items()},
                                     protector.config["protect"]["epsilon"], steps=50) for i in range(len(chips))])
    pgd_ms = 1000 * (time.perf_counter() - start) / len(chips)
    pgd = (pgd * 255).round() / 255  # both saved as 8-bit images

    with torch.no_grad():
        def scores(x):
            preds = {k: v.argmax(1) for k, v in protector.surrogate(x).items()}
            p = psnr(clean, x)
            return mosr(preds, labels), ssim(clean, x).mean().item(), p[torch.isfinite(p)].mean().item()
        rows = {"Invisible-Face": (ours_ms, *scores(ours)), "PGD-50 (full)": (pgd_ms, *scores(pgd))}
    print(f"{'method':14s} {'ms/face':>8s} {'MOSR':>6s} {'SSIM':>6s} {'PSNR':>6s}")
    for name, (ms, m, s_, p_) in rows.items():
        print(f"{name:14s} {ms:8.1f} {m:6.3f} {s_:6.3f} {p_:6.2f}")
    print("(the protector is not told the true labels; PGD attacks them)")
    print(f"speed ratio PGD-50 / ours: {pgd_ms / ours_ms:.1f}x")


if __name__ == "__main__":
    main()
