"""classifiers stage: the defender's surrogate and the adversary's target zoo, on Ray Train.

The surrogate (params.classifiers.surrogate) trains on split surrogate_train, each zoo model on
target_train; val is scored every epoch, test once at the end. Outputs (artifacts/classifiers/):
models/<name>.pt (plain state dict, loads with torch.load(weights_only=True)) + models/<name>.json
(config for invisible_face.models.networks.load_classifier), history/<name>.csv (per-epoch metrics, DVC plots),
confusion/<name>_<attribute>.png, metrics.json (test accuracy per model and attribute). One MLflow
run per model in the experiment "classifiers".

Then the embedding adversary (params.classifiers.embedding_adversary, invisible_face.models.embedding_adversary):
attribute heads on dlib's pretrained face embedding of a seeded sample of target_train chips at their
native resolution, scored on a seeded sample of the test chips, saved as models/<name>.safetensors +
models/<name>.json.
"""

from __future__ import annotations

import argparse
import json
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
from invisible_face.evaluate.metrics import accuracy_and_confusion
from invisible_face.models.classifiers import attribute_sizes, classifier_path, evaluate, train_classifier
from invisible_face.models.embedding_adversary import ARCH, EmbeddingAdversary, chip_embeddings
from invisible_face.models.networks import save_classifier
from invisible_face.params import load_params
from invisible_face.tracking import run_tags, setup_mlflow

SCALING_KEYS = ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "keep_checkpoints", "num_cpus")


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


def embedding_adversary(params: dict, manifest: Path, image_dir: Path, out: Path, tags: dict[str, str]
                        ) -> dict[str, object]:
    """Train, score and save the embedding adversary (one MLflow run) -> its metrics.json entry.

    Chips load at the 200 px the evaluation protects them at (params ``ldman.image_size``), not at
    the zoo's 64 px: dlib embeds a 150 px aligned face (about 70 ms a chip on one core, so the test
    split is a seeded sample of ``test_images`` chips)."""
    cfg, seed = params["classifiers"]["embedding_adversary"], params["seed"]
    attributes = attribute_sizes(params)
    classes = {a: spec["classes"] for a, spec in params["data"]["attributes"].items()}
    size, box = int(params["ldman"]["image_size"]), params["landmarks"]["fallback_box"]
    name = cfg["name"]

    def chips(split: str, limit: int | None) -> FaceAttributes:
        return FaceAttributes(manifest, image_dir, [split], list(attributes), size=size, limit=limit, seed=seed)

    with mlflow.start_run(run_name=name, tags={**tags, "role": "target", "arch": ARCH}):
        run_params = {k: cfg[k] for k in ("train_images", "hidden", "epochs", "lr", "weight_decay")}
        mlflow.log_params({**run_params, "image_size": size, "box": ",".join(map(str, box)), "seed": seed,
                           "attributes": ",".join(attributes)})
        t0 = time.time()
        train = chips("target_train", cfg["train_images"])
        t_embed = time.time()
        embeddings = chip_embeddings(train.images, box)
        ms_per_chip = 1000 * (time.time() - t_embed) / len(train)
        model = EmbeddingAdversary(attributes, cfg["hidden"])
        losses = model.fit(embeddings, train.labels, cfg["epochs"], cfg["lr"], cfg["weight_decay"], seed)
        train_s = time.time() - t0
        for step in range(0, len(losses), max(1, len(losses) // 50)):
            mlflow.log_metric("train_loss", losses[step], step=step)

        test = chips("test", cfg["test_images"])
        accuracy, confusion = accuracy_and_confusion(model.predict_images(test.images, box), test.labels, attributes)
        log_confusion(name, confusion, classes, out)
        result: dict[str, object] = {f"test_acc_{a}": acc for a, acc in accuracy.items()}
        result["test_acc_mean"] = float(np.mean(list(accuracy.values())))
        result |= {"train_time_s": round(train_s, 1), "train_images": len(train), "test_images": len(test),
                   "embed_ms_per_chip": round(ms_per_chip, 1),
                   "train_loss": round(losses[-1], 4)}
        mlflow.log_metrics({k: float(v) for k, v in result.items()})
        path = model.save(classifier_path(name, out / "models"),
                          extra={"name": name, "role": "target", "train_splits": ["target_train"],
                                 "image_size": size, "box_fractions": list(box), "test_accuracy": accuracy, **tags})
        mlflow.log_artifact(str(path), "model")
        mlflow.log_artifact(str(path.with_suffix(".json")), "model")
        print(f"{name} ({ARCH}, target): " + ", ".join(f"{a} {acc:.3f}" for a, acc in accuracy.items())
              + f"  [{train_s:.0f} s, {ms_per_chip:.0f} ms/chip, {len(test)} test chips]", flush=True)
        return {"role": "target", "arch": ARCH, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    parser.add_argument("--out", default="artifacts/classifiers")
    args = parser.parse_args()

    params = load_params(args.params)
    cfg = params["classifiers"]
    attributes = attribute_sizes(params)
    classes = {a: spec["classes"] for a, spec in params["data"]["attributes"].items()}
    out = Path(args.out).resolve()
    for sub in ("models", "history", "confusion"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest, image_dir = Path(args.manifest).resolve(), Path(params["data"]["image_dir"]).resolve()
    scaling = {k: cfg[k] for k in SCALING_KEYS}
    models = [{**cfg["surrogate"], "role": "surrogate", "splits": ["surrogate_train"]}]
    models += [{**m, "role": "target", "splits": ["target_train"]} for m in cfg["zoo"]]

    setup_mlflow("classifiers")
    tags = run_tags()
    test_data = FaceAttributes(manifest, image_dir, ["test"], list(attributes), size=cfg["image_size"])
    metrics: dict[str, dict] = {}
    for spec in tqdm(models, desc="classifiers", unit="model"):
        name = spec["name"]
        config = {
            "arch": spec["arch"], "attributes": attributes, "input_size": cfg["input_size"],
            "image_size": cfg["image_size"], "manifest": str(manifest), "image_dir": str(image_dir),
            "train_splits": spec["splits"], "val_splits": ["val"], "epochs": spec["epochs"],
            "batch_size": spec.get("batch_size", cfg["batch_size"]), "lr": spec.get("lr", cfg["lr"]),
            "weight_decay": cfg["weight_decay"], "dropout": cfg["dropout"], "flip": cfg["flip"],
            "crop_scale": cfg.get("crop_scale"), "channels_last": spec.get("channels_last", False),
            "seed": params["seed"], "pretrained": params["classifiers"]["pretrained"],
        }
        with mlflow.start_run(run_name=name, tags={**tags, "role": spec["role"], "arch": spec["arch"]}):
            mlflow.log_params({k: v for k, v in config.items() if k not in ("manifest", "image_dir", "attributes")}
                              | {"attributes": ",".join(attributes), **scaling})
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
            result = {f"test_acc_{a}": acc for a, acc in accuracy.items()}
            result["test_acc_mean"] = float(np.mean(list(accuracy.values())))
            result["train_time_s"] = round(train_s, 1)
            mlflow.log_metrics(result)
            path = save_classifier(model, classifier_path(name, out / "models"),
                                   extra={"name": name, "role": spec["role"], "train_splits": spec["splits"],
                                          "test_accuracy": accuracy, **tags})
            mlflow.log_artifact(str(path), "model")
            mlflow.log_artifact(str(path.with_suffix(".json")), "model")
            metrics[name] = {"role": spec["role"], "arch": spec["arch"], "pretrained": model.pretrained, **result}
            print(f"{name} ({spec['arch']}, {spec['role']}): " + ", ".join(
                f"{a} {acc:.3f}" for a, acc in accuracy.items()) + f"  [{train_s:.0f} s]", flush=True)

    metrics[cfg["embedding_adversary"]["name"]] = embedding_adversary(params, manifest, image_dir, out, tags)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
