"""train stage: LD-MAN on Ray Train.

Outputs (artifacts/train/): generator.pt (G's plain state dict; the export stage packs it into the
protector), history.csv (per epoch: G's validation protected share, MOSR, SSIM, PSNR; a DVC plot),
grid.png (validation chips before / after / perturbation x10, at 2x zoom), metrics.json. One MLflow
run in the experiment "ldman", with every step's losses.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from invisible_face.data.faces import FaceAttributes
from invisible_face.method.ldman import generator_protect, psnr_to_rms
from invisible_face.method.ldman_training import chip_masks, ldman_config, ldman_scaling, train_ldman
from invisible_face.models.networks import load_classifier
from invisible_face.params import with_tuned_weights
from invisible_face.protect.protector import protection_grid
from invisible_face.stage import Stage, stage_parser


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/train")
    parser.add_argument("--weights", default=None, help="JSON file with the tuned loss_weights (tune stage)")
    parser.add_argument("--run-name", default="ldman")
    parser.add_argument("--without", metavar="LOSS", action="append", default=[],
                        help="an ablation: this loss term's weight set to 0, everything else the same (repeatable)")
    stage = Stage.start(parser, experiment="ldman")
    args, out = stage.args, stage.out
    cfg = with_tuned_weights(stage.params, args.weights)
    for name in args.without:
        if name not in cfg["ldman"]["loss_weights"]:
            parser.error(f"--without {name}: no such loss; choose from {sorted(cfg['ldman']['loss_weights'])}")
        cfg["ldman"]["loss_weights"][name] = 0.0
    config = ldman_config(cfg)
    with stage.run(args.run_name, params={k: v for k, v in cfg["ldman"].items()}) as run:
        generator, history = train_ldman(config, name=f"{args.run_name}-{run.info.run_id[:8]}",
                                         storage_path=Path(cfg["classifiers"]["storage_path"]).resolve(),
                                         scaling=ldman_scaling(cfg["ldman"]))
        step = 0
        for epoch in history:
            for s in epoch["step_losses"]:
                mlflow.log_metrics({f"step_{k}": v for k, v in s.items()}, step=step)
                step += 1
            mlflow.log_metrics({k: v for k, v in epoch.items() if k not in ("step_losses", "epoch")},
                               step=epoch["epoch"])
        pd.DataFrame([{k: v for k, v in e.items() if k != "step_losses"} for e in history]).to_csv(
            out / "history.csv", index=False)

        surrogate = load_classifier(config["surrogate"])
        val = FaceAttributes(config["manifest"], config["image_dir"], ["val"], list(config["attributes"]),
                             size=config["chip_size"], limit=6, seed=config["seed"])
        images = val.images.float() / 255
        masks = chip_masks(val.table["file"].tolist(), dict(np.load(config["landmarks"])), config["chip_size"],
                           config["chip_size"], config["mask"])
        delta, _ = generator_protect(generator, surrogate, images, masks, config["cover"], config["kappa"],
                                     psnr_to_rms(config["min_psnr"]))
        protection_grid(images, images + delta, out / "grid.png")
        mlflow.log_artifact(str(out / "grid.png"))

        torch.save(generator.state_dict(), out / "generator.pt")
        last = {k: v for k, v in history[-1].items() if k.startswith("val_") or k in ("epoch_time_s", "steps")}
        stage.write_metrics(last)
        mlflow.log_artifact(str(out / "generator.pt"))


if __name__ == "__main__":
    main()
