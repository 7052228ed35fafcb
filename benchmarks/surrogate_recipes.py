"""Test-split accuracy of surrogate recipes: the classifiers stage's recipe and its variants
(training share, label smoothing, epochs, input size, stem, optimiser, architecture).

    python benchmarks/surrogate_recipes.py [--only base,share_70,...] [--image-dir DIR]

Each recipe trains a fresh multi-task classifier on one device (a GPU when there is one: about 5-15 s
per recipe on an H100; hours on 2 CPU cores) with the stage's loss, optimiser and schedule, data held
on the device, and prints gender / age bin / race accuracy on the test split. Extra training rows
for the larger shares come from target_train, seeded; a smaller share a seeded subset of surrogate_train.
Run it after `dvc repro validate`. ``--image-dir``: a copy of the chips (same names) to read instead, for
example downscaled to 96 px so that it travels to a GPU machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from invisible_face.data.faces import FaceAttributes
from invisible_face.models.networks import build_classifier
from invisible_face.params import PROJECT_ROOT, load_params

RECIPES: dict[str, dict] = {  # overrides of BASE
    "base": {},
    "base_seed1": {"seed": 1},
    "label_smoothing_0.1": {"label_smoothing": 0.1},
    "6_epochs": {"epochs": 6},
    "20_epochs": {"epochs": 20},
    "input_96": {"size": 96},
    "input_80": {"size": 96, "input_size": 80},
    "no_maxpool": {"maxpool": False},
    "resnet34": {"arch": "resnet34"},
    "sgd_nesterov": {"opt": "sgd", "lr": 0.05, "weight_decay": 5e-4},
    "random_crop_15_epochs": {"crop": (0.7, 1.0), "epochs": 15},
    "batch_32": {"batch_size": 32},
    "lr_0.004": {"lr": 4e-3},
    "lr_0.001": {"lr": 1e-3},
    "wd_0.1_dropout_0.4": {"weight_decay": 0.1, "dropout": 0.4},
    "share_40": {"share": 0.40},
    "share_55": {"share": 0.55},
    "share_70": {"share": 0.70},
    "share_70_6_epochs": {"share": 0.70, "epochs": 6},
    "share_55_input_96": {"share": 0.55, "size": 96},
    "share_55_no_maxpool": {"share": 0.55, "maxpool": False},
    "share_55_ls_15_epochs": {"share": 0.55, "label_smoothing": 0.1, "epochs": 15},
    "share_70_input_96_ls": {"share": 0.70, "size": 96, "label_smoothing": 0.1},
}


def train_and_test(data: dict, recipe: dict, base: dict, device: torch.device) -> dict[str, float]:
    r = {**base, **recipe}
    torch.manual_seed(r["seed"])
    images, labels = data[r["size"]], data["labels"]
    train = data["train"][r["share"]].to(device)
    model = build_classifier(r["arch"], data["attributes"], r.get("input_size", r["size"]), r["dropout"])
    if not r.get("maxpool", True):
        model.backbone.maxpool = torch.nn.Identity()
    model = model.to(device).to(memory_format=torch.channels_last)
    if r.get("opt", "adamw") == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=r["lr"], momentum=0.9, nesterov=True,
                              weight_decay=r["weight_decay"])
    steps = len(train) // r["batch_size"]
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=r["epochs"] * steps, pct_start=0.15)
    size = r["size"]
    for _ in range(r["epochs"]):
        model.train()
        order = train[torch.randperm(len(train), device=device)]
        for i in range(steps):
            b = order[i * r["batch_size"]:(i + 1) * r["batch_size"]]
            x = images[b].float() / 255
            x = torch.where(torch.rand(len(b), 1, 1, 1, device=device) < 0.5, x.flip(3), x)
            if r.get("crop"):
                side = int(round(size * float(np.sqrt(np.random.uniform(*r["crop"])))))
                ox, oy = np.random.randint(0, size - side + 1, 2)
                x = F.interpolate(x[:, :, oy:oy + side, ox:ox + side], size=(size, size), mode="bilinear",
                                  antialias=True, align_corners=False)
            out = model(x)
            loss = sum(F.cross_entropy(out[a], labels[a][b], label_smoothing=r.get("label_smoothing", 0.0))
                       for a in data["attributes"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()
    test, correct = data["test"].to(device), {a: 0 for a in data["attributes"]}
    with torch.no_grad():
        for i in range(0, len(test), 512):
            b = test[i:i + 512]
            out = model(images[b].float() / 255)
            for a in correct:
                correct[a] += int((out[a].argmax(1) == labels[a][b]).sum())
    return {a: c / len(test) for a, c in correct.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    parser.add_argument("--image-dir", default=None, help="read the chips from here (default: params data.image_dir)")
    args = parser.parse_args()
    params = load_params(PROJECT_ROOT / "params.yaml")
    ccfg, splits = params["classifiers"], params["validate"]["splits"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = {"arch": ccfg["surrogate"]["arch"], "size": ccfg["image_size"], "epochs": ccfg["surrogate"]["epochs"],
            "lr": ccfg["lr"], "weight_decay": ccfg["weight_decay"], "dropout": ccfg["dropout"],
            "batch_size": ccfg["batch_size"], "share": splits["surrogate_train"], "seed": params["seed"]}
    manifest = PROJECT_ROOT / "artifacts/validate/manifest.csv"
    image_dir = args.image_dir or PROJECT_ROOT / params["data"]["image_dir"]
    attributes = {name: len(spec["classes"]) for name, spec in params["data"]["attributes"].items()}
    every = ["surrogate_train", "target_train", "test"]
    data: dict = {"attributes": attributes}
    for size in (64, 96):
        chips = FaceAttributes(manifest, image_dir, every, list(attributes), size=size)
        data[size] = chips.images.to(device)
    split = chips.table["split"].to_numpy()
    data["labels"] = {a: v.to(device) for a, v in chips.labels.items()}
    data["test"] = torch.from_numpy(np.where(split == "test")[0])
    own, extra = np.where(split == "surrogate_train")[0], np.where(split == "target_train")[0]
    rng = np.random.default_rng(0)  # rows in file order start with the age: shuffle before taking a share
    rng.shuffle(own)
    rng.shuffle(extra)
    n_rows = len(split) / (splits["surrogate_train"] + splits["target_train"] + splits["test"])
    recipes = {k: v for k, v in RECIPES.items() if not args.only or k in args.only.split(",")}
    shares = {base["share"], *(r.get("share", base["share"]) for r in recipes.values())}
    data["train"] = {s: torch.from_numpy(np.concatenate([own, extra])[:round(s * n_rows)]) for s in shares}
    print(f"device {device}; test chips {len(data['test'])}; base recipe {base}")
    print(f"{'recipe':26s} {'rows':>5s} " + " ".join(f"{a:>8s}" for a in attributes) + f" {'s':>6s}")
    for name, recipe in recipes.items():
        t0 = time.time()
        acc = train_and_test(data, recipe, base, device)
        rows = len(data["train"][recipe.get("share", base["share"])])
        print(f"{name:26s} {rows:5d} " + " ".join(f"{acc[a]:8.3f}" for a in attributes) + f" {time.time() - t0:6.1f}",
              flush=True)


if __name__ == "__main__":
    main()
