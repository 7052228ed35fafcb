"""Training and evaluation of the attribute classifiers (surrogate and target zoo) on Ray Train.

``train_loop`` runs inside each Ray worker; ``train_classifier`` is the driver-side entry point;
``evaluate`` scores a model on a dataset (accuracy and confusion matrix per attribute).
``classifier_specs`` and ``training_config`` turn params ``classifiers`` into what the classifiers
stage trains: the surrogate, then each zoo model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from invisible_face.data.faces import FaceAttributes
from invisible_face.metrics import accuracy_and_confusion
from invisible_face.models import distributed
from invisible_face.models.networks import (
    AttributeClassifier,
    build_classifier,
    load_classifier,
    predict,
    resolve_pretrained,
)

MODELS_DIR = Path("artifacts/classifiers/models")  # the classifiers stage's models out (dvc.yaml)
# params ``classifiers`` keys that say how Ray Train runs (``train_classifier``'s ``scaling``)
SCALING_KEYS = ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "keep_checkpoints", "num_cpus")


def classifier_path(name: str, models: str | Path = MODELS_DIR) -> Path:
    """Where the classifiers stage saves the model called ``name`` (a params ``classifiers``
    surrogate or zoo name): ``<models>/<name>.pt``, its metadata beside it as ``<name>.json``."""
    return Path(models) / f"{name}.pt"


def surrogate_path(params: dict[str, Any], models: str | Path = MODELS_DIR) -> Path:
    """The surrogate's saved model: ``classifier_path`` of params ``classifiers.surrogate.name``."""
    return classifier_path(params["classifiers"]["surrogate"]["name"], models)


def load_surrogate(params: dict[str, Any], models: str | Path = MODELS_DIR) -> torch.nn.Module:
    """The defender's surrogate as the protector attacks it: the ResNet-18 (params
    ``classifiers.surrogate``), with the face-backbone surrogate (``classifiers.face_surrogate``, when
    set) in a :class:`~invisible_face.models.ensemble.SurrogateEnsemble`. Frozen, eval mode."""
    from invisible_face.models.ensemble import SurrogateEnsemble
    from invisible_face.models.face_backbone import FaceBackboneSurrogate

    resnet = load_classifier(surrogate_path(params, models)).requires_grad_(False)
    face = params["classifiers"].get("face_surrogate")
    if not face:
        return resnet
    members = {params["classifiers"]["surrogate"]["name"]: resnet,
               face["name"]: FaceBackboneSurrogate.load(classifier_path(face["name"], models))}
    return SurrogateEnsemble(members).eval().requires_grad_(False)


def models_dir(artifacts: str | Path = "artifacts") -> Path:
    """The classifiers stage's models folder under an artifacts root."""
    return Path(artifacts) / "classifiers" / "models"


def attribute_sizes(params: dict[str, Any]) -> dict[str, int]:
    """params.data.attributes -> {attribute: number of classes}."""
    return {name: len(spec["classes"]) for name, spec in params["data"]["attributes"].items()}


def multitask_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over attributes of the mean cross-entropy."""
    return sum(F.cross_entropy(logits[a].float(), labels[a]) for a in logits)


def augmenter(flip: bool, crop_scale: list[float] | None, size: int) -> torch.nn.Module:
    """Batch augmentation (kornia), B x 3 x S x S -> B x 3 x S x S: horizontal flip and a random
    crop of ``crop_scale`` of the area resized back to S; identity when both are off."""
    ops = [K.RandomHorizontalFlip()] if flip else []
    if crop_scale:
        ops.append(K.RandomResizedCrop((size, size), scale=tuple(crop_scale), ratio=(0.9, 1.1)))
    return K.AugmentationSequential(*ops) if ops else torch.nn.Identity()


@torch.no_grad()
def _validate(model: torch.nn.Module, data: FaceAttributes, device: torch.device, batch_size: int,
              rank: int, world: int) -> dict[str, float]:
    """Exact global validation loss and accuracy: each worker scores its own strided shard."""
    shard = Subset(data, range(rank, len(data), world))
    names = list(data.attributes)
    totals = torch.zeros(len(names) + 2, device=device)  # correct per attribute, loss sum, count
    model.eval()
    for x, y in DataLoader(shard, batch_size=batch_size):
        x, y = x.to(device), {a: v.to(device) for a, v in y.items()}
        with distributed.autocast(device):
            logits = model(x)
        for i, a in enumerate(names):
            totals[i] += (logits[a].argmax(1) == y[a]).sum()
        totals[-2] += multitask_loss(logits, y) * len(x)
        totals[-1] += len(x)
    model.train()
    totals = distributed.all_reduce_sum(totals).cpu()
    n = totals[-1].clamp(min=1)
    metrics = {f"val_acc_{a}": float(totals[i] / n) for i, a in enumerate(names)}
    metrics["val_acc_mean"] = float(np.mean(list(metrics.values())))
    metrics["val_loss"] = float(totals[-2] / n)
    return metrics


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: DDP training with a checkpoint per epoch, resuming from the last one.

    ``config``: arch, attributes {name: n}, input_size, image_size, manifest, image_dir (absolute),
    train_splits, val_splits, epochs, batch_size (global), lr, weight_decay, flip, crop_scale,
    channels_last, seed, optional pretrained (True/False, resolved by ``train_classifier``: ImageNet
    weights from the torch cache, ``models.resolve_pretrained``), optional limit (rows per dataset, a
    seeded sample), and for the fault-tolerance test only: fail_at_epoch + fail_marker (see
    ``distributed.maybe_inject_failure``).
    """
    rank, world, device = distributed.worker_context(config)

    def dataset(splits: list[str]) -> FaceAttributes:
        return FaceAttributes(config["manifest"], config["image_dir"], splits,
                              list(config["attributes"]), size=config["image_size"],
                              limit=config.get("limit"), seed=config["seed"])

    train_data, val_data = dataset(config["train_splits"]), dataset(config["val_splits"])
    loader = distributed.shard_loader(train_data, config["batch_size"], world)
    val_batch = 2 * distributed.per_worker_batch(config["batch_size"], world)

    model = build_classifier(config["arch"], config["attributes"], config["input_size"],
                             config.get("dropout", 0.0), pretrained=config.get("pretrained", False))
    if config.get("channels_last"):  # NHWC: faster CPU training for some architectures (params)
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    epochs = config["epochs"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config["lr"], total_steps=epochs * len(loader), pct_start=0.15)
    augment = augmenter(config.get("flip", True), config.get("crop_scale"), config["image_size"])

    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    history, start = distributed.resume(stateful)  # a restarted worker group continues after the last epoch
    model = ray.train.torch.prepare_model(model)  # DDP wraps the same module: ``stateful`` stays valid
    resumed_at = start

    for epoch in range(start, epochs + 1):
        distributed.maybe_inject_failure(config, epoch, rank, world)
        distributed.set_epoch(loader, epoch)
        t0, loss_sum, steps = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"{config['arch']} epoch {epoch}/{epochs}", disable=rank != 0,
                   mininterval=10, leave=False)
        for x, y in bar:
            x = augment(x)
            with distributed.autocast(device):
                loss = multitask_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum, steps = loss_sum + loss.item(), steps + 1
        train_loss = float(distributed.all_reduce_sum(torch.tensor([loss_sum / max(steps, 1)], device=device))) / world
        metrics = {"epoch": epoch, "resumed_at": resumed_at, "train_loss": train_loss,
                   **_validate(model, val_data, device, val_batch, rank, world),
                   "epoch_time_s": time.time() - t0}
        history.append(metrics)
        distributed.report_epoch(metrics, stateful, epoch=epoch, history=history, config=config)


def train_classifier(config: dict[str, Any], *, name: str, storage_path: str | Path,
                     scaling: dict[str, Any]) -> tuple[AttributeClassifier, list[dict[str, Any]]]:
    """Driver: fit ``config`` on Ray Train -> (trained model in eval mode, per-epoch metrics).

    ``config["pretrained"]`` (auto | true | false, default false) is resolved here, once, against this
    machine's torch cache, and the workers get the answer (true: they load the cached ImageNet weights);
    the returned model's ``pretrained`` (and so its saved config) says whether they were used.
    ``scaling``: num_workers, use_gpu, cpus_per_worker, max_failures, keep_checkpoints, num_cpus
    (keys of ``distributed.fit``).
    """
    config = {**config, "pretrained": resolve_pretrained(config["arch"], config.get("pretrained", False))}
    state = distributed.fit_state(train_loop, config, name=name, storage_path=storage_path, **scaling)
    model = build_classifier(config["arch"], config["attributes"], config["input_size"],
                             config.get("dropout", 0.0), pretrained=config["pretrained"], load_pretrained=False)
    model.load_state_dict(state["model"])
    return model.eval(), state["history"]


def evaluate(model: torch.nn.Module, data: FaceAttributes, n_classes: dict[str, int],
             batch_size: int = 256) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """-> ({attribute: accuracy}, {attribute: n x n confusion matrix, rows true, columns predicted})."""
    model.eval()
    preds = {a: [] for a in data.attributes}
    for start in range(0, len(data), batch_size):
        for a, p in predict(model, data.images[start:start + batch_size].float() / 255).items():
            preds[a].append(p)
    return accuracy_and_confusion({a: torch.cat(p) for a, p in preds.items()}, data.labels, n_classes)


def classifier_specs(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The classifiers the stage trains on Ray Train, in order: the surrogate (``role`` surrogate, on
    surrogate_train), then each zoo model (``role`` target, on target_train). Each is its params
    ``classifiers`` entry (name, arch, epochs, optional batch_size, lr, channels_last) plus ``role``
    and ``splits``."""
    cfg = params["classifiers"]
    return ([{**cfg["surrogate"], "role": "surrogate", "splits": ["surrogate_train"]}]
            + [{**m, "role": "target", "splits": ["target_train"]} for m in cfg["zoo"]])


def training_config(params: dict[str, Any], spec: dict[str, Any], manifest: Path, image_dir: Path) -> dict[str, Any]:
    """The ``train_loop`` config of one of :func:`classifier_specs`: the spec's own batch size, lr and
    channels_last where it sets them, else params ``classifiers``'; ``manifest`` and ``image_dir``
    absolute (Ray workers change directory)."""
    cfg = params["classifiers"]
    return {
        "arch": spec["arch"], "attributes": attribute_sizes(params), "input_size": cfg["input_size"],
        "image_size": cfg["image_size"], "manifest": str(manifest), "image_dir": str(image_dir),
        "train_splits": spec["splits"], "val_splits": ["val"], "epochs": spec["epochs"],
        "batch_size": spec.get("batch_size", cfg["batch_size"]), "lr": spec.get("lr", cfg["lr"]),
        "weight_decay": cfg["weight_decay"], "dropout": cfg["dropout"], "flip": cfg["flip"],
        "crop_scale": cfg.get("crop_scale"), "channels_last": spec.get("channels_last", False),
        "seed": params["seed"], "pretrained": cfg["pretrained"],
    }


def accuracy_summary(accuracy: dict[str, float]) -> dict[str, float]:
    """{attribute: test accuracy} -> the metrics.json figures: ``test_acc_<attribute>`` and their mean
    ``test_acc_mean``."""
    return {**{f"test_acc_{a}": acc for a, acc in accuracy.items()},
            "test_acc_mean": float(np.mean(list(accuracy.values())))}
