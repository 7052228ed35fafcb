"""LD-MAN training on Ray Train (paper V-C, Eq. 20; docs/design.md, "The generator").

G is the refinement's start: it trains on the faces of the ``answers`` stage, where the deployed
protector without G has protected each face from zero, at G's work size (``work_size``). One step on
a batch of faces x with the bound A G may use (mask times perceptual budget), every ensemble member's
plausible-class sets and DP (G's inputs as the protector computes them) and the refinement's final
change t:

    eps_l   = cap_rms(epsilon * up(G(x, sets, DP)) * A)                         Eq. 6, budget
    x^A     = clip(x + eps_l, 0, 1)                                            Eq. 7
    L_total = sum_name Lambda[name] * L_name + lambda_gan * L_GAN               Eq. 20, 5

with L_distill the distance of eps_l from t (in units of epsilon, faces the refinement protected only:
the dense signal of what the whole ensemble needed, where the adversarial loss alone gave G nothing),
L_adv the capped set margin of the primary surrogate (the ResNet-18 at its input size), L_per the
perturbation's L2 norm, L_nat MMD + TV, L_sem the surrogate-feature LPIPS when its weights are
cached, else the surrogate-feature distance (invisible_face.models.perceptual), + the contextual
loss on the surrogate's features, L_robust L_adv after a random recompression of x^A (differentiable
JPEG, resize, blur), and L'_adv L_adv after RP (Eq. 19; off by default, see docs/design.md, "RP").
Every ``val_every`` epochs, G is checked as the deployed protector's start on validation faces
(a ``check`` callable, :class:`invisible_face.protect.answers.StartCheck`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train.torch
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from invisible_face.method.denoiser import Denoiser, blend_through_rp
from invisible_face.method.directions import unpack_signs
from invisible_face.method.ldman import (
    Discriminator,
    Generator,
    face_mask,
    generator_perturbation,
    psnr_to_rms,
)
from invisible_face.method.losses import (
    contextual_loss,
    discriminator_loss,
    generator_gan_loss,
    mmd,
    perturbation_loss,
    total_variation,
)
from invisible_face.method.recompression import random_recompression
from invisible_face.models import distributed
from invisible_face.models.margins import set_margin_loss
from invisible_face.models.networks import AttributeClassifier, load_classifier
from invisible_face.models.perceptual import Perceptual, SurrogateFeatures

LOSS_NAMES = ("distill", "adv", "robust", "per", "nat", "sem", "adv_rp")


def chip_points(files: list[str], landmarks: dict[str, np.ndarray], chip_size: int, size: int) -> np.ndarray:
    """The 68 landmarks of chips (found on ``chip_size`` px chips) in ``size`` px -> N x 68 x 2."""
    index = {f: i for i, f in enumerate(landmarks["files"].tolist())}
    missing = [f for f in files if f not in index]
    if missing:
        raise ValueError(f"{len(missing)} chips have no landmarks (e.g. {missing[0]})")
    return np.stack([landmarks["points"][index[f]] for f in files]) * (size / chip_size)


def chip_masks(files: list[str], landmarks: dict[str, np.ndarray], chip_size: int, size: int,
               mcfg: dict[str, float]) -> torch.Tensor:
    """Face masks of chips (landmarks found on ``chip_size`` px chips) at ``size`` px -> N x 1 x size x size."""
    return torch.stack([face_mask(p, size, size, mcfg["forehead"], mcfg["feather"])
                        for p in chip_points(files, landmarks, chip_size, size)])


class GeneratorSet(Dataset):
    """G's training faces from the ``answers`` stage, at G's work size.

    item -> (image 3 x S x S in [0, 1], bound 1 x S x S (G's mask times the budget, in epsilon),
    sets K bool (every ensemble member's), direction 3 x S x S of +-1 (DP), target 3 x S x S (the
    refinement's final change; zeros where it did not protect the face), protected () bool)
    """

    def __init__(self, answers: dict[str, np.ndarray], split: str = "train", limit: int | None = None) -> None:
        rows = np.flatnonzero(answers["split"] == split)[:limit]
        if not len(rows):
            raise ValueError(f"the answers hold no {split!r} faces")
        self.image = torch.from_numpy(answers["image"][rows])
        self.bound = torch.from_numpy(answers["bound"][rows])
        self.target = torch.from_numpy(answers["target"][rows])
        self.sets = torch.from_numpy(answers["sets"][rows])
        self.protected = torch.from_numpy(answers["protected"][rows])
        self.bits, self.shape = answers["bits"][rows], tuple(int(v) for v in answers["shape"])

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int):
        return (self.image[i].float() / 255, self.bound[i].float(), self.sets[i],
                unpack_signs(self.bits[i].tobytes(), self.shape), self.target[i].float(), self.protected[i])


def split_sets(sets: torch.Tensor, attributes: dict[str, int]) -> dict[str, torch.Tensor]:
    """B x K side-by-side sets -> {attribute: B x C bool} of the first member (the primary, whose sets
    come first: ``sets_vector`` of an ensemble's sets)."""
    return dict(zip(attributes, sets.bool()[:, :sum(attributes.values())].split(list(attributes.values()), 1)))


def distill_loss(delta: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, epsilon: float) -> torch.Tensor:
    """How far G's change is from the refinement's answer, in units of epsilon: mean squared
    difference per face, weighted (0 for a face the refinement did not protect). B x 3 x H x W -> ()."""
    per_face = ((delta - target) / epsilon).pow(2).flatten(1).mean(1)
    return (per_face * weight).sum() / weight.sum().clamp_min(1)


def step_losses(generator: Generator, discriminator: Discriminator, surrogate: AttributeClassifier,
                features: SurrogateFeatures, perceptual: Perceptual, rp: nn.Module | None, images: torch.Tensor,
                masks: torch.Tensor, sets: torch.Tensor, direction: torch.Tensor, target: torch.Tensor,
                protected: torch.Tensor, cfg: dict[str, Any]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """-> (G's total loss, each term, the protected images for D's step). The adversarial terms ask
    the primary surrogate at G's work size; ``distill`` pulls G's change to the refinement's answer
    (``target``), which carries every ensemble member."""
    classes = split_sets(sets, cfg["attributes"])
    delta = generator_perturbation(generator, images, masks, sets, direction if cfg["use_dp"] else None,
                                   psnr_to_rms(cfg["min_psnr"]))
    x_adv = images + delta
    weights = cfg["loss_weights"]
    zero = images.new_zeros(())
    terms = {"distill": distill_loss(delta, target, protected.float(), cfg["epsilon"])
             if weights["distill"] else zero,
             "adv": set_margin_loss(surrogate(x_adv), classes, cfg["kappa"]).mean() if weights["adv"] else zero,
             "robust": set_margin_loss(surrogate(random_recompression(x_adv, cfg["recompression"])), classes,
                                       cfg["kappa"]).mean() if weights["robust"] else zero,
             "per": perturbation_loss(delta) if weights["per"] else zero,
             "nat": cfg["lambda_mmd"] * mmd(images, x_adv) + cfg["lambda_tv"] * total_variation(delta)
             if weights["nat"] else zero,
             "adv_rp": set_margin_loss(surrogate(blend_through_rp(rp, x_adv)), classes, cfg["kappa"]).mean()
             if rp is not None and weights["adv_rp"] else zero,
             "gan": generator_gan_loss(discriminator(x_adv)) if cfg["lambda_gan"] else zero}
    if weights["sem"]:
        f_clean, f_adv = features(images), features(x_adv)
        terms["sem"] = cfg["lambda_percep"] * perceptual(images, x_adv).mean() + \
            cfg["lambda_cx"] * contextual_loss(f_clean[-1], f_adv[-1], h=cfg["cx_bandwidth"])
    else:
        terms["sem"] = zero
    total = sum(weights[k] * terms[k] for k in LOSS_NAMES) + cfg["lambda_gan"] * terms["gan"]
    return total, terms, x_adv


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker for LD-MAN: DDP over G and D, a checkpoint per epoch, resume on restart.

    ``config``: the ``ldman`` params plus absolute paths (surrogate, rp, answers), attributes,
    set_size, seed; ``check``: a callable G -> figures, run on rank 0 every ``val_every`` epochs and at
    the last (:class:`invisible_face.protect.answers.StartCheck`: G as the deployed protector's start);
    optional fail_at_epoch + fail_marker for fault tests.
    """
    rank, world, device = distributed.worker_context(config, seed_per_rank=True)

    surrogate = load_classifier(config["surrogate"]).to(device).requires_grad_(False)
    features = SurrogateFeatures(surrogate)
    perceptual = Perceptual(config["perceptual"], features).to(device)
    rp = None
    if config["use_rp"]:
        rp = Denoiser(config["rp_width"])
        rp.load_state_dict(torch.load(config["rp"], map_location="cpu", weights_only=True))
        rp = rp.to(device).eval().requires_grad_(False)
    train = GeneratorSet(dict(np.load(config["answers"])), "train", config["train_images"])
    loader = distributed.shard_loader(train, config["batch_size"], world, drop_last=True)

    generator = new_generator(config)
    discriminator = Discriminator(config["d_width"])
    opt_g = torch.optim.Adam(generator.parameters(), lr=config["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config["lr"], betas=(0.5, 0.999))
    stateful = {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d}
    history, start = distributed.resume(stateful)  # a restarted worker group continues after the last epoch
    generator = ray.train.torch.prepare_model(generator)
    discriminator = ray.train.torch.prepare_model(discriminator)
    check = config.get("check") if rank == 0 else None
    began = time.time() - (history[-1]["train_minutes"] * 60 if history else 0)

    for epoch in range(start, config["epochs"] + 1):
        distributed.maybe_inject_failure(config, epoch, rank, world)
        distributed.set_epoch(loader, epoch)
        t0, steps = time.time(), []
        for images, bound, sets, direction, target, protected in tqdm(
                loader, desc=f"LD-MAN epoch {epoch}", disable=rank != 0, mininterval=10, leave=False):
            with distributed.autocast(device):
                total, terms, x_adv = step_losses(generator, discriminator, surrogate, features, perceptual, rp,
                                                  images, bound, sets, direction, target, protected, config)
            opt_g.zero_grad(set_to_none=True)
            total.backward()
            opt_g.step()
            d_loss = torch.zeros(())
            if config["lambda_gan"]:
                d_loss = discriminator_loss(discriminator(images), discriminator(x_adv.detach()))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            steps.append({"total": total.item(), "d": d_loss.item(), **{k: v.item() for k, v in terms.items()}})
        metrics = {"epoch": epoch, "epoch_time_s": time.time() - t0, "steps": epoch * len(loader),
                   "train_minutes": (time.time() - began) / 60,
                   **{f"train_{k}": float(np.mean([s[k] for s in steps])) for k in steps[0]}}
        if check is not None and (epoch % config["val_every"] == 0 or epoch == config["epochs"]):
            metrics.update(check(distributed.unwrap(generator)))
        history.append({**metrics, "step_losses": steps})
        distributed.report_epoch(metrics, stateful | {"generator": generator, "discriminator": discriminator},
                                 epoch=epoch, history=history)  # the DDP-wrapped ones: unwrapped there


def new_generator(config: dict[str, Any]) -> Generator:
    """A G shaped by the ``ldman`` settings (``config`` as from :func:`ldman_config`)."""
    return Generator(config["epsilon"], config["set_size"], config["g_width"], config["g_blocks"],
                     config["work_size"], config["out_size"], use_sets=config["use_sets"],
                     use_direction=config["use_dp"])


def train_ldman(config: dict[str, Any], *, name: str, storage_path: str | Path,
                scaling: dict[str, Any]) -> tuple[Generator, list[dict[str, Any]]]:
    """Driver: fit LD-MAN on Ray Train -> (trained G in eval mode, per-epoch history)."""
    state = distributed.fit_state(train_loop, config, name=name, storage_path=storage_path, **scaling)
    generator = new_generator(config)
    generator.load_state_dict(state["generator"])
    return generator.eval(), state["history"]


def ldman_config(cfg: dict[str, Any], artifacts: str | Path = "artifacts") -> dict[str, Any]:
    """The worker config from params: the ``ldman`` section plus absolute paths of its inputs
    (Ray workers change directory) and the settings it shares with other stages."""
    from invisible_face.models.classifiers import attribute_sizes, models_dir, surrogate_path

    art = Path(artifacts).resolve()
    attributes = attribute_sizes(cfg)
    members = 2 if cfg["classifiers"].get("face_surrogate") else 1  # G is told every member's sets
    return {
        **cfg["ldman"], "seed": cfg["seed"], "attributes": attributes,
        "set_size": members * sum(attributes.values()),
        "surrogate": str(surrogate_path(cfg, models_dir(art))),
        "rp": str(art / "denoiser/rp.pt"), "rp_width": cfg["denoiser"]["width"],
        "answers": str(art / "answers/answers.npz"),
    }


def ldman_scaling(lcfg: dict[str, Any]) -> dict[str, Any]:
    """The Ray Train scaling keys of the ``ldman`` params (arguments of ``distributed.fit``)."""
    return {k: lcfg[k] for k in ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "keep_checkpoints")}
