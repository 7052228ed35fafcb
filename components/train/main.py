"""train stage: LD-MAN on Ray Train, from the refinement's answers (invisible_face.method.ldman_training).

Outputs (artifacts/train/): generator.pt (G's plain state dict; the export stage packs it into the
protector), history.csv (per epoch: the losses and the training minutes; every ``ldman.val_every`` epochs G
checked as the protector's start on the answers' validation faces: its share protected alone, the steps
it saves against the refinement from zero, ms a face: G's learning curve, a DVC plot), grid.png
(validation chips before / after G alone / G's change x10, at 2x zoom), metrics.json (the last check, the
same faces protected from zero in this process, and ``g_start_pays``: whether G's start saves time at
the same protected share, what ``protector.start: auto`` follows). One MLflow run in the experiment
"ldman", with every step's losses.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import torch

from invisible_face.data.images import to_tensor
from invisible_face.method.ldman_training import ldman_config, ldman_scaling, train_ldman
from invisible_face.params import with_tuned
from invisible_face.protect.answers import params_protector, start_check, start_pays
from invisible_face.protect.protector import protection_grid
from invisible_face.stage import Stage, stage_parser


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/train")
    parser.add_argument("--tuned", default=None, help="the tune stage's best.json (loss weights, step schedule)")
    parser.add_argument("--run-name", default="ldman")
    parser.add_argument("--without", metavar="LOSS", action="append", default=[],
                        help="an ablation: this loss term's weight set to 0, everything else the same (repeatable)")
    stage = Stage.start(parser, experiment="ldman")
    args, out = stage.args, stage.out
    cfg = with_tuned(stage.params, args.tuned)
    for name in args.without:
        if name not in cfg["ldman"]["loss_weights"]:
            parser.error(f"--without {name}: no such loss; choose from {sorted(cfg['ldman']['loss_weights'])}")
        cfg["ldman"]["loss_weights"][name] = 0.0
    check = start_check(cfg)
    config = {**ldman_config(cfg), "check": check}
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

        # G alone (no step) on the first validation faces, as the protector runs it
        images = check.images()[:6]
        alone = params_protector(cfg, generator).variant({"refine": {"steps": 0}})
        protected = [rgb for rgb, _ in alone.protect_chips(images)]
        protection_grid(torch.stack([to_tensor(x) for x in images]), torch.stack([to_tensor(x) for x in protected]),
                        out / "grid.png")
        mlflow.log_artifact(str(out / "grid.png"))

        torch.save(generator.state_dict(), out / "generator.pt")
        last = {k: v for k, v in history[-1].items() if k.startswith("val_") or k in ("train_minutes", "steps")}
        zero = check.from_zero()  # the same faces from zero, in this process: what G's start is weighed against
        pays = start_pays(last, zero, cfg["protector"]["start_tolerance"])
        stage.write_metrics({**last, **zero, "g_start_pays": int(pays)}, log=True)
        mlflow.log_artifact(str(out / "generator.pt"))


if __name__ == "__main__":
    main()
