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
from invisible_face.models.embedding_adversary import ARCH as ADVERSARY_ARCH
from invisible_face.models.embedding_adversary import EmbeddingAdversary, chip_embeddings
from invisible_face.models.face_backbone import ARCH as FACE_ARCH
from invisible_face.models.face_backbone import FaceBackboneSurrogate, embed_in_batches
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


def embedding_heads(params: dict, role: str, manifest: Path, image_dir: Path, out: Path, tags: dict[str, str]
                    ) -> dict[str, object]:
    """Train, score and save attribute heads on dlib's face embedding (one MLflow run) -> its metrics.json entry.

    ``role`` target: the embedding adversary (params ``classifiers.embedding_adversary``), on
    target_train, embedded by dlib itself as a scraper would. ``role`` surrogate: the defender's
    face-backbone surrogate (``classifiers.face_surrogate``), on surrogate_train, embedded by the
    PyTorch copy of the same network it attacks through. Chips load at the 200 px the evaluation
    protects them at (params ``ldman.image_size``); the test split is a seeded sample."""
    cfg = params["classifiers"]["embedding_adversary" if role == "target" else "face_surrogate"]
    seed, split = params["seed"], "target_train" if role == "target" else "surrogate_train"
    attributes = attribute_sizes(params)
    classes = {a: spec["classes"] for a, spec in params["data"]["attributes"].items()}
    size, box = int(params["ldman"]["image_size"]), params["landmarks"]["fallback_box"]
    name, test_images = cfg["name"], params["classifiers"]["embedding_adversary"]["test_images"]
    if role == "target":
        model, arch = EmbeddingAdversary(attributes, cfg["hidden"]), ADVERSARY_ARCH
        embed = lambda images: chip_embeddings(images, box)
    else:
        model, arch = FaceBackboneSurrogate(attributes, cfg["hidden"], box), FACE_ARCH
        embed = lambda images: embed_in_batches(model, images)

    def chips(split: str, limit: int | None) -> FaceAttributes:
        return FaceAttributes(manifest, image_dir, [split], list(attributes), size=size, limit=limit, seed=seed)

    with mlflow.start_run(run_name=name, tags={**tags, "role": role, "arch": arch}):
        run_params = {k: cfg[k] for k in ("train_images", "hidden", "epochs", "lr", "weight_decay")}
        mlflow.log_params({**run_params, "image_size": size, "box": ",".join(map(str, box)), "seed": seed,
                           "attributes": ",".join(attributes), "split": split})
        t0 = time.time()
        train = chips(split, cfg["train_images"])
        t_embed = time.time()
        embeddings = embed(train.images)
        ms_per_chip = 1000 * (time.time() - t_embed) / len(train)
        heads = model if role == "target" else model.heads
        losses = heads.fit(embeddings, train.labels, cfg["epochs"], cfg["lr"], cfg["weight_decay"], seed)
        train_s = time.time() - t0
        for step in range(0, len(losses), max(1, len(losses) // 50)):
            mlflow.log_metric("train_loss", losses[step], step=step)

        test = chips("test", test_images)
        accuracy, confusion = accuracy_and_confusion(heads.predict_embeddings(embed(test.images)), test.labels,
                                                     attributes)
        log_confusion(name, confusion, classes, out)
        result: dict[str, object] = {f"test_acc_{a}": acc for a, acc in accuracy.items()}
        result["test_acc_mean"] = float(np.mean(list(accuracy.values())))
        result |= {"train_time_s": round(train_s, 1), "train_images": len(train), "test_images": len(test),
                   "embed_ms_per_chip": round(ms_per_chip, 1), "train_loss": round(losses[-1], 4)}
        mlflow.log_metrics({k: float(v) for k, v in result.items()})
        path = model.save(classifier_path(name, out / "models"),
                          extra={"name": name, "role": role, "train_splits": [split], "image_size": size,
                                 "test_accuracy": accuracy, **tags})
        mlflow.log_artifact(str(path), "model")
        mlflow.log_artifact(str(path.with_suffix(".json")), "model")
        print(f"{name} ({arch}, {role}): " + ", ".join(f"{a} {acc:.3f}" for a, acc in accuracy.items())
              + f"  [{train_s:.0f} s, {ms_per_chip:.0f} ms/chip, {len(test)} test chips]", flush=True)
        return {"role": role, "arch": arch, **result}


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

    if cfg.get("face_surrogate"):
        metrics[cfg["face_surrogate"]["name"]] = embedding_heads(params, "surrogate", manifest, image_dir, out, tags)
    metrics[cfg["embedding_adversary"]["name"]] = embedding_heads(params, "target", manifest, image_dir, out, tags)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
