"""classifiers stage: the defender's surrogate and the adversary's target zoo, on Ray Train.

The surrogate (params.classifiers.surrogate) trains on split surrogate_train, each zoo model on
target_train; val is scored every epoch, test once at the end. Outputs (artifacts/classifiers/):
models/<name>.pt (plain state dict, loads with torch.load(weights_only=True)) + models/<name>.json
(config for invisible_face.models.networks.load_classifier), history/<name>.csv (per-epoch metrics, DVC plots),
confusion/<name>_<attribute>.png, metrics.json (test accuracy per model and attribute). One MLflow
run per model in the experiment "classifiers".

Then attribute heads on dlib's pretrained face embedding (invisible_face.models.face_backbone), chips at
their native resolution, scored on a seeded sample of the test chips, saved as models/<name>.safetensors +
models/<name>.json: the defender's face-backbone surrogate (params.classifiers.face_surrogate, on
surrogate_train, through the PyTorch copy of the network) and the embedding adversary
(params.classifiers.embedding_adversary, on target_train, through dlib itself).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from tqdm import tqdm

from invisible_face.data.faces import FaceAttributes
from invisible_face.models.classifiers import (
    SCALING_KEYS,
    accuracy_summary,
    attribute_sizes,
    classifier_path,
    classifier_specs,
    evaluate,
    train_classifier,
    training_config,
)
from invisible_face.models.embedding_training import fit_heads, heads_spec
from invisible_face.models.networks import save_classifier
from invisible_face.stage import Stage, stage_parser


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=45, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def log_confusion(name: str, confusion: dict[str, np.ndarray], classes: dict[str, list[str]], out: Path) -> None:
    """confusion/<name>_<attribute>.png per attribute, and the same figures in the active MLflow run."""
    for a, matrix in confusion.items():
        fig = confusion_figure(matrix, classes[a], f"{name}: {a} (test)")
        fig.savefig(out / "confusion" / f"{name}_{a}.png", dpi=100)
        mlflow.log_figure(fig, f"confusion/{a}.png")
        plt.close(fig)


def log_model(path: Path) -> None:
    """A saved model (weights + its .json) into the active run's ``model`` folder."""
    mlflow.log_artifact(str(path), "model")
    mlflow.log_artifact(str(path.with_suffix(".json")), "model")


def embedding_heads(stage: Stage, role: str, manifest: Path, image_dir: Path, out: Path,
                    classes: dict[str, list[str]]) -> dict[str, object]:
    """Train, score and save one role's heads on dlib's face embedding (invisible_face.models.embedding_training)
    in one MLflow run -> its metrics.json entry."""
    spec = heads_spec(stage.params, role)
    with stage.run(spec.name, params=spec.run_params(stage.params), tags={"role": role, "arch": spec.arch}):
        fit = fit_heads(stage.params, spec, manifest, image_dir)
        for step in range(0, len(fit.losses), max(1, len(fit.losses) // 50)):
            mlflow.log_metric("train_loss", fit.losses[step], step=step)
        log_confusion(spec.name, fit.confusion, classes, out)
        result = fit.metrics()
        mlflow.log_metrics({k: float(v) for k, v in result.items()})
        log_model(fit.model.save(classifier_path(spec.name, out / "models"),
                                 extra={"name": spec.name, "role": role, "train_splits": [spec.split],
                                        "image_size": spec.size, "test_accuracy": fit.accuracy, **stage.tags}))
        print(f"{spec.name} ({spec.arch}, {role}): " + ", ".join(f"{a} {acc:.3f}" for a, acc in fit.accuracy.items())
              + f"  [{fit.train_s:.0f} s, {fit.embed_ms_per_chip:.0f} ms/chip, {fit.test_images} test chips]",
              flush=True)
    return {"role": role, "arch": spec.arch, **result}


def main() -> int:
    parser = stage_parser(__doc__, "artifacts/classifiers", raw=True)
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    stage = Stage.start(parser, experiment="classifiers")
    params = stage.params
    cfg = params["classifiers"]
    attributes = attribute_sizes(params)
    classes = {a: spec["classes"] for a, spec in params["data"]["attributes"].items()}
    out = stage.out.resolve()
    for sub in ("models", "history", "confusion"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest, image_dir = Path(stage.args.manifest).resolve(), Path(params["data"]["image_dir"]).resolve()
    scaling = {k: cfg[k] for k in SCALING_KEYS}

    test_data = FaceAttributes(manifest, image_dir, ["test"], list(attributes), size=cfg["image_size"])
    metrics: dict[str, dict] = {}
    for spec in tqdm(classifier_specs(params), desc="classifiers", unit="model"):
        name, config = spec["name"], training_config(params, spec, manifest, image_dir)
        run_params = ({k: v for k, v in config.items() if k not in ("manifest", "image_dir", "attributes")}
                      | {"attributes": ",".join(attributes), **scaling})
        with stage.run(name, params=run_params, tags={"role": spec["role"], "arch": spec["arch"]}):
            t0 = time.time()
            model, history = train_classifier(config, name=f"classifiers-{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                              storage_path=Path(cfg["storage_path"]).resolve(), scaling=scaling)
            train_s = time.time() - t0
            for row in history:
                mlflow.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "resumed_at")},
                                   step=row["epoch"])
            pd.DataFrame(history).to_csv(out / "history" / f"{name}.csv", index=False)

            accuracy, confusion = evaluate(model, test_data, attributes)
            log_confusion(name, confusion, classes, out)
            result = {**accuracy_summary(accuracy), "train_time_s": round(train_s, 1)}
            mlflow.log_metrics(result)
            log_model(save_classifier(model, classifier_path(name, out / "models"),
                                      extra={"name": name, "role": spec["role"], "train_splits": spec["splits"],
                                             "test_accuracy": accuracy, **stage.tags}))
            metrics[name] = {"role": spec["role"], "arch": spec["arch"], "pretrained": model.pretrained, **result}
            print(f"{name} ({spec['arch']}, {spec['role']}): " + ", ".join(
                f"{a} {acc:.3f}" for a, acc in accuracy.items()) + f"  [{train_s:.0f} s]", flush=True)

    if cfg.get("face_surrogate"):
        metrics[cfg["face_surrogate"]["name"]] = embedding_heads(stage, "surrogate", manifest, image_dir, out, classes)
    metrics[cfg["embedding_adversary"]["name"]] = embedding_heads(stage, "target", manifest, image_dir, out, classes)
    stage.write_metrics(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
