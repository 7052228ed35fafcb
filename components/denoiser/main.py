"""denoiser stage: train RP, the resilient-perturbation module (docs/design.md, "RP").

Outputs (artifacts/denoiser/): rp.pt (plain state dict), metrics.json (held-out PSNR gain),
history.csv (per epoch, a DVC plot). One MLflow run in the experiment "denoiser".
"""

from __future__ import annotations

import mlflow
import pandas as pd
import torch

from invisible_face.data.faces import FaceAttributes
from invisible_face.method.denoiser import train_denoiser
from invisible_face.stage import Stage, stage_parser


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/denoiser")
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    stage = Stage.start(parser, experiment="denoiser")
    args, cfg, out = stage.args, stage.params, stage.out
    rcfg = cfg["denoiser"]
    size = cfg["ldman"]["image_size"]

    def chips(split: str, limit: int) -> torch.Tensor:
        faces = FaceAttributes(args.manifest, cfg["data"]["image_dir"], [split], [], size=size, limit=limit,
                               seed=cfg["seed"])
        return faces.images.float() / 255

    train, val = chips("surrogate_train", rcfg["train_images"]), chips("val", rcfg["val_images"])
    with stage.run("rp", params={f"denoiser.{k}": v for k, v in rcfg.items()}):
        model, history = train_denoiser(train, val, rcfg, cfg["ldman"]["epsilon"], cfg["seed"],
                                        on_epoch=lambda m: mlflow.log_metrics(m, step=m["epoch"]))
        torch.save(model.state_dict(), out / "rp.pt")
        pd.DataFrame(history).to_csv(out / "history.csv", index=False)
        stage.write_metrics({k: v for k, v in history[-1].items() if k != "epoch"})
        mlflow.log_artifact(str(out / "rp.pt"))


if __name__ == "__main__":
    main()
