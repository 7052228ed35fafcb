"""denoiser stage: train RP, the resilient-perturbation module (docs/design.md, "RP").

Outputs (artifacts/denoiser/): rp.pt (plain state dict), metrics.json (held-out PSNR gain),
history.csv (per epoch, a DVC plot). One MLflow run in the experiment "denoiser".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mlflow
import pandas as pd
import torch

from invisible_face.data.faces import FaceAttributes
from invisible_face.method.denoiser import train_denoiser
from invisible_face.params import load_params
from invisible_face.tracking import run_tags, setup_mlflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    parser.add_argument("--out", default="artifacts/denoiser")
    args = parser.parse_args()

    cfg = load_params(args.params)
    rcfg = cfg["denoiser"]
    size = cfg["ldman"]["image_size"]

    def chips(split: str, limit: int) -> torch.Tensor:
        faces = FaceAttributes(args.manifest, cfg["data"]["image_dir"], [split], [], size=size, limit=limit,
                               seed=cfg["seed"])
        return faces.images.float() / 255

    train, val = chips("surrogate_train", rcfg["train_images"]), chips("val", rcfg["val_images"])
    setup_mlflow("denoiser")
    with mlflow.start_run(run_name="rp", tags=run_tags()):
        mlflow.log_params({f"denoiser.{k}": v for k, v in rcfg.items()})
        model, history = train_denoiser(train, val, rcfg, cfg["ldman"]["epsilon"], cfg["seed"],
                                        on_epoch=lambda m: mlflow.log_metrics(m, step=m["epoch"]))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "rp.pt")
        pd.DataFrame(history).to_csv(out / "history.csv", index=False)
        final = {k: v for k, v in history[-1].items() if k != "epoch"}
        (out / "metrics.json").write_text(json.dumps(final, indent=2))
        mlflow.log_artifact(str(out / "rp.pt"))
    print(json.dumps(final, indent=2))


if __name__ == "__main__":
    main()
