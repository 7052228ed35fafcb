"""directions stage: eps_d (Algorithm 2) for every chip LD-MAN trains on, cached as packed signs.

Outputs (artifacts/directions/): directions.npz (files, bits N x bytes, shape), metrics.json
(ms per image, and how far a plain budget-sized step along eps_d already fools the surrogate).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from invisible_face.classifiers import attribute_sizes
from invisible_face.data import FaceAttributes
from invisible_face.directions import directional_perturbation, pack_signs
from invisible_face.metrics import fooled_all
from invisible_face.models import load_classifier
from invisible_face.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    parser.add_argument("--classifiers", default="artifacts/classifiers/models")
    parser.add_argument("--out", default="artifacts/directions")
    args = parser.parse_args()

    cfg = load_params(args.params)
    dcfg, lcfg = cfg["directions"], cfg["ldman"]
    surrogate = load_classifier(Path(args.classifiers) / f"{cfg['classifiers']['surrogate']['name']}.pt")
    faces = FaceAttributes(args.manifest, cfg["data"]["image_dir"], lcfg["train_splits"],
                           list(attribute_sizes(cfg)), size=lcfg["image_size"], limit=lcfg["train_images"],
                           seed=cfg["seed"])
    generator = torch.Generator().manual_seed(cfg["seed"])
    bits, fooled, start = [], [], time.perf_counter()
    for images, labels in tqdm(DataLoader(faces, batch_size=dcfg["batch_size"]), desc="directions", unit="batch"):
        eps_d = directional_perturbation(surrogate, images, labels, dcfg["n_neighbours"],
                                         dcfg["neighbourhood_radius"], generator)
        bits.extend(np.frombuffer(pack_signs(d)[0], dtype=np.uint8) for d in eps_d)
        with torch.no_grad():
            stepped = (images + lcfg["epsilon"] * eps_d).clamp(0, 1)
            preds = {k: v.argmax(1) for k, v in surrogate(stepped).items()}
        fooled.append(fooled_all(preds, labels))
    elapsed = time.perf_counter() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "directions.npz", files=faces.table["file"].to_numpy().astype(str), bits=np.stack(bits),
                        shape=np.array(faces.images.shape[1:]))
    metrics = {"images": len(faces), "ms_per_image": 1000 * elapsed / len(faces),
               "full_image_step_mosr": torch.cat(fooled).float().mean().item()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
