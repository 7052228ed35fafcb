"""How far can any attack made on the defender's side move the adversary's zoo at the 8/255 budget?

    python benchmarks/transfer_ceiling.py [--faces 100] [--split test] [--steps 20]

The evaluation finds every method's transfer MOSR near zero. This asks whether a stronger
transfer recipe would change that: on the same faces, with the true labels, full chip, the
evaluation's MI-FGSM (and TI-FGSM) baselines on the surrogate alone, with input diversity (DI: each
step averages 4 randomly resized and padded views), with DI and translation invariance (TI), on an
ensemble of the surrogate and copies of the zoo's architectures trained on the defender's own split
(the defender can guess architectures, not weights), a feature-level attack (PGD pushing the
surrogate's layer-2 features of the face away from the clean ones, no labels), and white-box on each
of those copies and on each zoo model itself. It prints each model's error rate per attribute and
the share with every attribute wrong (MOSR), clean first; the embedding adversary (heads on dlib's
face embedding, never attacked) is scored as a black box beside the zoo.

The copies train once on Ray Train with the classifiers stage's recipe (it prints how long) and
are kept in artifacts/transfer_ceiling/. Run it after `dvc repro classifiers`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from invisible_face.data.faces import FaceAttributes
from invisible_face.evaluate.attacks import baseline_attack
from invisible_face.metrics import mosr
from invisible_face.models.classifiers import attribute_sizes, classifier_path, train_classifier
from invisible_face.models.embedding_adversary import EmbeddingAdversary
from invisible_face.models.networks import AttributeClassifier, load_classifier, predict, save_classifier
from invisible_face.models.perceptual import SurrogateFeatures
from invisible_face.params import PROJECT_ROOT, load_params

SCALING_KEYS = ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "keep_checkpoints", "num_cpus")


def mean_logits(outs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([o[k] for o in outs]).mean(0) for k in outs[0]}


class Ensemble(nn.Module):
    """Several models as one: the mean of their logits per attribute."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return mean_logits([m(x) for m in self.members])


class InputDiversity(nn.Module):
    """DI-FGSM: the model's mean logits over ``views`` random resizes (``low``..1 of the side), each
    padded back to size at a random offset. B x 3 x H x W -> {attribute: B x C}."""

    def __init__(self, model: nn.Module, views: int = 4, low: float = 0.85, seed: int = 0) -> None:
        super().__init__()
        self.model, self.views, self.low = model, views, low
        self.generator = torch.Generator().manual_seed(seed)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        side = int(min(h, w) * (self.low + (1 - self.low) * torch.rand(1, generator=self.generator).item()))
        left, top = (int(torch.randint(0, n - side + 1, (1,), generator=self.generator)) for n in (w, h))
        small = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return F.pad(small, (left, w - side - left, top, h - side - top), value=0.5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return mean_logits([self.model(self.view(x)) for _ in range(self.views)])


class FeatureDistance(nn.Module):
    """A feature-level attack as a one-class "model" for the attack loop: logits (-d, d) with d the
    relative distance of the surrogate's layer-2 features of x from those of the clean batch, so
    that pushing class 0 down (label 0) pushes the features away. No attribute labels are used."""

    def __init__(self, surrogate: AttributeClassifier, clean: torch.Tensor) -> None:
        super().__init__()
        self.features = SurrogateFeatures(surrogate)
        with torch.no_grad():
            self.reference = self.features(clean)[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)[-1]
        d = (f - self.reference).pow(2).flatten(1).mean(1) / self.reference.pow(2).flatten(1).mean(1)
        return {"feature": torch.stack([-d, d], 1)}


def defender_copies(params: dict, folder: Path) -> dict[str, AttributeClassifier]:
    """Each zoo architecture trained with its zoo entry's recipe on the defender's split
    (surrogate_train), cached in ``folder``."""
    cfg, attributes = params["classifiers"], attribute_sizes(params)
    copies = {}
    for spec in cfg["zoo"]:
        path = folder / f"defender_{spec['arch']}.pt"
        if not path.exists():
            config = {"arch": spec["arch"], "attributes": attributes, "input_size": cfg["input_size"],
                      "image_size": cfg["image_size"],
                      "manifest": str(PROJECT_ROOT / "artifacts/validate/manifest.csv"),
                      "image_dir": str(PROJECT_ROOT / params["data"]["image_dir"]), "train_splits": ["surrogate_train"],
                      "val_splits": ["val"], "epochs": spec["epochs"],
                      "batch_size": spec.get("batch_size", cfg["batch_size"]),
                      "lr": spec.get("lr", cfg["lr"]), "weight_decay": cfg["weight_decay"], "dropout": cfg["dropout"],
                      "flip": cfg["flip"], "crop_scale": cfg.get("crop_scale"),
                      "channels_last": spec.get("channels_last", False), "seed": params["seed"]}
            start = time.perf_counter()
            model, _ = train_classifier(config,
                                        name=f"transfer-ceiling-{spec['arch']}-{time.strftime('%Y%m%d-%H%M%S')}",
                                        storage_path=(PROJECT_ROOT / cfg["storage_path"]).resolve(),
                                        scaling={k: cfg[k] for k in SCALING_KEYS})
            folder.mkdir(parents=True, exist_ok=True)
            save_classifier(model, path, extra={"name": path.stem, "train_splits": ["surrogate_train"]})
            print(f"{path.stem}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        copies[path.stem] = load_classifier(path)
    return copies


def error_rates(calls: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> list[float]:
    """Error rate per attribute, then the share with every attribute wrong (MOSR)."""
    return [*((calls[k] != labels[k]).float().mean().item() for k in labels), mosr(calls, labels)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=100)
    parser.add_argument("--split", default="test")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    params = load_params(PROJECT_ROOT / "params.yaml")
    cfg = params["classifiers"]
    models_dir = PROJECT_ROOT / "artifacts/classifiers/models"
    surrogate = load_classifier(models_dir / f"{cfg['surrogate']['name']}.pt")
    zoo = {m["name"]: load_classifier(models_dir / f"{m['name']}.pt") for m in cfg["zoo"]}
    copies = defender_copies(params, PROJECT_ROOT / "artifacts/transfer_ceiling")
    faces = FaceAttributes(PROJECT_ROOT / "artifacts/validate/manifest.csv", PROJECT_ROOT / params["data"]["image_dir"],
                           [args.split], list(attribute_sizes(params)), size=params["ldman"]["image_size"],
                           limit=args.faces, seed=params["seed"])
    clean, labels = faces.images.float() / 255, dict(faces.labels)
    epsilon = params["ldman"]["epsilon"]

    attacks = {  # name -> (the evaluation's baseline: MI-FGSM, or TI-FGSM with it, model attacked)
        "MI-FGSM on the surrogate": ("mifgsm", surrogate),
        "DI-MI-FGSM": ("mifgsm", InputDiversity(surrogate)),
        "DI-TI-MI-FGSM": ("tifgsm", InputDiversity(surrogate)),
        "MI-FGSM, surrogate + copies": ("mifgsm", Ensemble([surrogate, *copies.values()])),
        # PGD's random start: at the clean image the squared feature distance has no gradient
        "feature-level PGD": ("pgd", FeatureDistance(surrogate, clean)),
        **{f"white-box on {n}": ("mifgsm", m) for n, m in {**copies, **zoo}.items()},
    }
    emb = cfg["embedding_adversary"]
    adversary = EmbeddingAdversary.load(classifier_path(emb["name"], models_dir))
    box = params["landmarks"]["fallback_box"]
    scored = {**{n: (lambda x, m=m: predict(m, x)) for n, m in {"surrogate": surrogate, **copies, **zoo}.items()},
              emb["name"]: lambda x: adversary.predict_images(x, box)}
    names = list(labels)
    print(f"{len(clean)} {args.split} chips, true labels, full chip, L-inf {epsilon * 255:.0f}/255, "
          f"{args.steps} steps, momentum 1. "
          f"Error rate per attribute ({' / '.join(names)}) and MOSR (all wrong) of each model.")
    print(f"{'attack':34s} {'s':>5s} " + " ".join(f"{n[:24]:>26s}" for n in scored))

    def row(name: str, x: torch.Tensor, seconds: float) -> None:
        cells = [" / ".join(f"{v:.2f}" for v in error_rates(calls(x), labels)) for calls in scored.values()]
        print(f"{name:34s} {seconds:5.0f} " + " ".join(f"{c:>26s}" for c in cells), flush=True)

    row("clean", clean, 0.0)
    for name, (baseline, model) in attacks.items():
        start = time.perf_counter()
        if isinstance(model, FeatureDistance):  # no labels: push the features away, uncapped
            target, kappa = {"feature": torch.zeros(len(clean), dtype=torch.long)}, 1e9
        else:
            target, kappa = labels, params["ldman"]["kappa"]
        adversarial = baseline_attack(baseline, model, clean, target, epsilon, args.steps, kappa)
        row(name, (adversarial * 255).round() / 255, time.perf_counter() - start)


if __name__ == "__main__":
    main()
