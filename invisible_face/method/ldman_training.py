"""LD-MAN training on Ray Train (paper V-C, Eq. 20; docs/design.md, "The generator").

G trains at the surrogate's input size (``work_size``, 64 px) on every chip of its training
splits, for thousands of steps. One step on a batch of chips x with their face masks A, the
plausible-class sets of the surrogate's clean call and DP (both cached by the ``directions``
stage, so a step costs no extra backward pass):

    eps_l   = cap_rms(epsilon * up(G(x, sets, DP)) * A)                         Eq. 6, budget
    x^A     = clip(x + eps_l, 0, 1)                                            Eq. 7
    L_total = sum_name Lambda[name] * L_name + lambda_gan * L_GAN               Eq. 20, 5

with L_adv the capped set margin the refinement also uses (no labels: G learns what the deployed
protector does), L_per the perturbation's L2 norm, L_nat MMD + TV, L_sem the surrogate-feature
LPIPS when its weights are cached, else the surrogate-feature distance (invisible_face.models.perceptual),
+ the contextual loss on the surrogate's features, L_robust
L_adv after a random recompression of x^A (differentiable JPEG, resize, blur: expectation over
the transformations an upload meets), and L'_adv L_adv after RP (Eq. 19; off by default, see
docs/design.md, "RP"). Each epoch ends with the deployed path on validation chips at their own
resolution (``validate_generator``).
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

from invisible_face.data.faces import FaceAttributes
from invisible_face.method.denoiser import Denoiser, blend_through_rp
from invisible_face.method.directions import unpack_signs
from invisible_face.method.ldman import (
    Discriminator,
    Generator,
    face_mask,
    generator_perturbation,
    generator_protect,
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
from invisible_face.metrics import fooled_all, h_pn, psnr, ssim
from invisible_face.models import distributed
from invisible_face.models.margins import attribute_margins, protected, set_margin_loss
from invisible_face.models.networks import AttributeClassifier, load_classifier
from invisible_face.models.perceptual import Perceptual, SurrogateFeatures

LOSS_NAMES = ("adv", "robust", "per", "nat", "sem", "adv_rp")


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
    """Chips at G's work size with their face masks and cached sets and DP.

    item -> (image 3 x S x S in [0, 1], mask 1 x S x S, sets K bool, direction 3 x S x S of +-1)
    """

    def __init__(self, faces: FaceAttributes, masks: torch.Tensor, directions: dict[str, np.ndarray]) -> None:
        files = faces.table["file"].tolist()
        index = {f: i for i, f in enumerate(directions["files"].tolist())}
        missing = [f for f in files if f not in index]
        if missing:
            raise ValueError(f"{len(missing)} chips have no cached direction (e.g. {missing[0]}): the directions "
                             "stage must cover LD-MAN's training chips")
        rows = [index[f] for f in files]
        self.faces, self.masks = faces, masks
        self.sets = torch.from_numpy(directions["sets"][rows])
        self.bits, self.shape = directions["bits"][rows], tuple(int(v) for v in directions["shape"])

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, i: int):
        return (self.faces[i][0], self.masks[i], self.sets[i],
                unpack_signs(self.bits[i].tobytes(), self.shape))


def split_sets(sets: torch.Tensor, attributes: dict[str, int]) -> dict[str, torch.Tensor]:
    """B x K side-by-side sets -> {attribute: B x C bool} (inverse of ``sets_vector``)."""
    return dict(zip(attributes, sets.bool().split(list(attributes.values()), 1)))


def step_losses(generator: Generator, discriminator: Discriminator, surrogate: AttributeClassifier,
                features: SurrogateFeatures, perceptual: Perceptual, rp: nn.Module | None, images: torch.Tensor,
                masks: torch.Tensor, sets: torch.Tensor, direction: torch.Tensor, cfg: dict[str, Any]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """-> (G's total loss, each term, the protected images for D's step)."""
    classes = split_sets(sets, cfg["attributes"])
    delta = generator_perturbation(generator, images, masks, sets, direction if cfg["use_dp"] else None,
                                   psnr_to_rms(cfg["min_psnr"]))
    x_adv = images + delta
    weights = cfg["loss_weights"]
    zero = images.new_zeros(())
    terms = {"adv": set_margin_loss(surrogate(x_adv), classes, cfg["kappa"]).mean(),
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


@torch.no_grad()
def validate_generator(generator: Generator, surrogate: AttributeClassifier, images: torch.Tensor,
                       masks: torch.Tensor, labels: dict[str, torch.Tensor], cfg: dict[str, Any],
                       batch_size: int = 32) -> dict[str, float]:
    """G as the protector runs it, on chips at their own resolution, quantised to 8 bits:
    label-free protected share (every attribute called outside its set by ``stop_margin``),
    MOSR against the true labels, SSIM, PSNR, H-PN of MOSR, and H-PN of the protected share (the
    tuning objective, which does not depend on how often the surrogate's clean call is wrong)."""
    was_training = generator.training
    generator.eval()
    shares, fooled, ssims, psnrs = [], [], [], []
    for i in range(0, len(images), batch_size):
        x, m = images[i:i + batch_size], masks[i:i + batch_size]
        delta, classes = generator_protect(generator, surrogate, x, m, cfg["cover"], cfg["kappa"],
                                           psnr_to_rms(cfg["min_psnr"]))
        x_adv = ((x + delta) * 255).round() / 255
        logits = surrogate(x_adv)
        shares.append(protected(attribute_margins(logits, classes), cfg["stop_margin"]))
        fooled.append(fooled_all({k: v.argmax(1) for k, v in logits.items()},
                                 {k: v[i:i + batch_size] for k, v in labels.items()}))
        ssims.append(ssim(x, x_adv))
        psnrs.append(psnr(x, x_adv))
    generator.train(was_training)
    p = torch.cat(psnrs)
    out = {"val_protected_share": torch.cat(shares).float().mean().item(),
           "val_mosr": torch.cat(fooled).float().mean().item(), "val_ssim": torch.cat(ssims).mean().item(),
           "val_psnr": p[torch.isfinite(p)].mean().item()}
    out["val_hpn"] = h_pn(out["val_mosr"], out["val_ssim"], out["val_psnr"])
    out["val_hpn_protected"] = h_pn(out["val_protected_share"], out["val_ssim"], out["val_psnr"])
    return out


def _chips(config: dict[str, Any], splits: list[str], limit: int | None, size: int) -> FaceAttributes:
    return FaceAttributes(config["manifest"], config["image_dir"], splits, list(config["attributes"]), size=size,
                          limit=limit, seed=config["seed"])


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker for LD-MAN: DDP over G and D, a checkpoint per epoch, resume on restart.

    ``config``: the ``ldman`` params plus absolute paths (manifest, image_dir, surrogate, rp,
    landmarks, directions), attributes, seed; optional fail_at_epoch + fail_marker for fault tests.
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
    landmarks = dict(np.load(config["landmarks"]))
    faces = _chips(config, config["train_splits"], config["train_images"], config["work_size"])
    masks = chip_masks(faces.table["file"].tolist(), landmarks, config["chip_size"], config["work_size"],
                       config["mask"])
    train = GeneratorSet(faces, masks, dict(np.load(config["directions"])))
    loader = distributed.shard_loader(train, config["batch_size"], world, drop_last=True)

    generator = new_generator(config)
    discriminator = Discriminator(config["d_width"])
    opt_g = torch.optim.Adam(generator.parameters(), lr=config["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config["lr"], betas=(0.5, 0.999))
    stateful = {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d}
    history, start = distributed.resume(stateful)  # a restarted worker group continues after the last epoch
    generator = ray.train.torch.prepare_model(generator)
    discriminator = ray.train.torch.prepare_model(discriminator)
    val = None
    if rank == 0 and config["val_images"]:
        val_faces = _chips(config, ["val"], config["val_images"], config["chip_size"])
        val = (val_faces.images.float() / 255,
               chip_masks(val_faces.table["file"].tolist(), landmarks, config["chip_size"], config["chip_size"],
                          config["mask"]), val_faces.labels)

    for epoch in range(start, config["epochs"] + 1):
        distributed.maybe_inject_failure(config, epoch, rank, world)
        distributed.set_epoch(loader, epoch)
        t0, steps = time.time(), []
        for images, masks, sets, direction in tqdm(loader, desc=f"LD-MAN epoch {epoch}", disable=rank != 0,
                                                   mininterval=10, leave=False):
            with distributed.autocast(device):
                total, terms, x_adv = step_losses(generator, discriminator, surrogate, features, perceptual, rp,
                                                  images, masks, sets, direction, config)
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
                   **{f"train_{k}": float(np.mean([s[k] for s in steps])) for k in steps[0]}}
        if val is not None:
            metrics.update(validate_generator(distributed.unwrap(generator), surrogate, *val, config))
        history.append({**metrics, "step_losses": steps})
        distributed.report_epoch(metrics, stateful | {"generator": generator, "discriminator": discriminator},
                                 epoch=epoch, history=history)  # the DDP-wrapped ones: unwrapped there


def new_generator(config: dict[str, Any]) -> Generator:
    """A G shaped by the ``ldman`` settings (``config`` as from :func:`ldman_config`)."""
    return Generator(config["epsilon"], sum(config["attributes"].values()), config["g_width"], config["g_blocks"],
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
    return {
        **cfg["ldman"], "seed": cfg["seed"], "attributes": attribute_sizes(cfg),
        "manifest": str(art / "validate/manifest.csv"), "image_dir": str(Path(cfg["data"]["image_dir"]).resolve()),
        "surrogate": str(surrogate_path(cfg, models_dir(art))),
        "rp": str(art / "denoiser/rp.pt"), "rp_width": cfg["denoiser"]["width"],
        "landmarks": str(art / "landmarks/landmarks.npz"), "directions": str(art / "directions/directions.npz"),
        "chip_size": cfg["validate"]["expected_size"][0], "cover": cfg["directions"]["cover"],
        "stop_margin": cfg["protector"]["refine"]["stop_margin"], "mask": cfg["protector"]["mask"],
    }


def ldman_scaling(lcfg: dict[str, Any]) -> dict[str, Any]:
    """The Ray Train scaling keys of the ``ldman`` params (arguments of ``distributed.fit``)."""
    return {k: lcfg[k] for k in ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "keep_checkpoints")}
