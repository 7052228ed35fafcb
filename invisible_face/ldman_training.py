"""LD-MAN training on Ray Train (paper V-C, Eq. 20), the same runner as the classifiers.

One step on a batch of chips x with labels y, regions A and cached directions eps_d:

    window   = a fixed-size crop of x around its region (G only needs the region's neighbourhood)
    eps_l    = clip(G(A * window) + beta * eps_d, -eps, eps) * A          Eq. 6 + budget
    x^A      = clip(x + eps_l pasted back, 0, 1)                          Eq. 7
    L_total  = Lambda . (L_adv, L_per, L_nat, L_sem, L'_adv) + lambda_gan * L_GAN     Eq. 20, 5

L_adv and L'_adv are computed on the whole chip through the surrogate (which resizes it to its
input size differentiably); L'_adv first blends x^A toward RP(x^A) with a random intensity (Eq. 19).
L_sem uses the surrogate's own early feature maps on the window at full resolution: the perceptual
term is named after that network, never "LPIPS" (DESIGN.md decision 9).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from invisible_face import distributed
from invisible_face.data import FaceAttributes
from invisible_face.denoiser import Denoiser, blend_through_rp
from invisible_face.directions import directional_perturbation, unpack_signs
from invisible_face.ldman import (
    Discriminator,
    Generator,
    apply_perturbation,
    crop_windows,
    local_perturbation,
    paste_windows,
    region_window,
)
from invisible_face.losses import (
    adversarial_loss,
    contextual_loss,
    discriminator_loss,
    generator_gan_loss,
    mmd,
    perceptual_distance,
    perturbation_loss,
    total_variation,
)
from invisible_face.metrics import fooled_all, h_pn, psnr, ssim
from invisible_face.models import AttributeClassifier, load_classifier
from invisible_face.regions import rect_masks

LOSS_NAMES = ("adv", "per", "nat", "sem", "adv_rp")


class SurrogateFeatures(nn.Module):
    """Early feature maps of a ResNet surrogate at the input's own resolution (for L_sem).

    forward(x: B x 3 x H x W in [0, 1]) -> [layer1 B x 64 x H/4 x W/4, layer2 B x 128 x H/8 x W/8]
    """

    def __init__(self, model: AttributeClassifier) -> None:
        super().__init__()
        if not hasattr(model.backbone, "layer2"):
            raise ValueError(f"L_sem needs a ResNet surrogate, got {model.arch}")
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = self.model.backbone
        h = (x - self.model.mean) / self.model.std
        h = b.maxpool(b.relu(b.bn1(b.conv1(h))))
        f1 = b.layer1(h)
        return [f1, b.layer2(f1)]


class ProtectionSet(Dataset):
    """Chips with labels, their selected region and (optionally) their cached eps_d.

    item -> (image 3 x H x W in [0, 1], {attribute: label}, rect 4, eps_d 3 x H x W or empty)
    """

    def __init__(self, faces: FaceAttributes, regions: dict[str, np.ndarray],
                 directions: dict[str, np.ndarray] | None) -> None:
        self.faces = faces
        files = faces.table["file"].tolist()
        index = {f: i for i, f in enumerate(regions["files"].tolist())}
        missing = [f for f in files if f not in index]
        if missing:
            raise ValueError(f"{len(missing)} chips have no region (e.g. {missing[0]}): the regions stage's "
                             "splits and limits must cover LD-MAN's train and val chips")
        self.rects = torch.from_numpy(np.stack([regions["rect"][index[f]] for f in files]))
        self.directions = None
        if directions is not None:
            dindex = {f: i for i, f in enumerate(directions["files"].tolist())}
            self.directions = [directions["bits"][dindex[f]] for f in files]
            self.shape = tuple(int(v) for v in directions["shape"])

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, i: int):
        image, labels = self.faces[i]
        eps_d = unpack_signs(self.directions[i].tobytes(), self.shape) if self.directions is not None else torch.empty(0)
        return image, labels, self.rects[i], eps_d


def protect_chips(generator: Generator, images: torch.Tensor, rects: torch.Tensor, eps_d: torch.Tensor | None,
                  cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x^A for a batch of chips. images B x 3 x H x W, rects B x 4, eps_d B x 3 x H x W or None
    -> (x^A B x 3 x H x W, eps_l on the window B x 3 x s x s, window corners B x 2)."""
    h, w = images.shape[-2:]
    size = min(cfg["window"], h, w)
    corners = region_window(rects, size, h, w)
    window = crop_windows(images, corners, size)
    mask = crop_windows(rect_masks(rects, h, w), corners, size)
    d = crop_windows(eps_d, corners, size) if eps_d is not None else None
    eps_l = local_perturbation(generator, window, mask, d, cfg["beta"], cfg["epsilon"])
    return apply_perturbation(images, paste_windows(torch.zeros_like(images), eps_l, corners)), eps_l, corners


def step_losses(generator: Generator, discriminator: Discriminator, surrogate: AttributeClassifier,
                features: SurrogateFeatures, rp: nn.Module | None, images: torch.Tensor,
                labels: dict[str, torch.Tensor], rects: torch.Tensor, eps_d: torch.Tensor | None,
                cfg: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """-> (generator's total loss, each term, the clean and protected windows for D's step)."""
    x_adv, eps_l, corners = protect_chips(generator, images, rects, eps_d, cfg)
    size = eps_l.shape[-1]
    clean_win = crop_windows(images, corners, size)
    adv_win = crop_windows(x_adv, corners, size)
    f_clean, f_adv = features(clean_win), features(adv_win)
    terms = {
        "adv": adversarial_loss(surrogate(x_adv), labels, cfg["kappa"]),
        "per": perturbation_loss(eps_l),
        "nat": cfg["lambda_mmd"] * mmd(clean_win, adv_win) + cfg["lambda_tv"] * total_variation(eps_l),
        "sem": cfg["lambda_percep"] * perceptual_distance(f_clean, f_adv).mean()
        + cfg["lambda_cx"] * contextual_loss(f_clean[-1], f_adv[-1], h=cfg["cx_bandwidth"]),
        "adv_rp": adversarial_loss(surrogate(blend_through_rp(rp, x_adv)), labels, cfg["kappa"])
        if rp is not None else torch.zeros(()),
        "gan": generator_gan_loss(discriminator(adv_win)),
    }
    weights = dict(zip(LOSS_NAMES, cfg["loss_weights"]))
    total = sum(weights[k] * terms[k] for k in LOSS_NAMES) + cfg["lambda_gan"] * terms["gan"]
    return total, terms, clean_win, adv_win


@torch.no_grad()
def validate_protection(generator: Generator, surrogate: AttributeClassifier, data: ProtectionSet,
                        cfg: dict[str, Any], batch_size: int = 32) -> dict[str, float]:
    """MOSR, SSIM and PSNR of the current G on validation chips (eps_d computed on the fly)."""
    generator.eval()
    fooled, ssims, psnrs = [], [], []
    for images, labels, rects, _ in DataLoader(data, batch_size=batch_size):
        eps_d = None
        if cfg["use_dp"]:
            with torch.enable_grad():
                eps_d = directional_perturbation(surrogate, images, labels, cfg["n_neighbours"],
                                                 cfg["neighbourhood_radius"])
        x_adv, _, _ = protect_chips(generator, images, rects, eps_d, cfg)
        preds = {k: v.argmax(1) for k, v in surrogate(x_adv).items()}
        fooled.append(fooled_all(preds, labels))
        ssims.append(ssim(images, x_adv))
        psnrs.append(psnr(images, x_adv))
    generator.train()
    p = torch.cat(psnrs)
    out = {"val_mosr": torch.cat(fooled).float().mean().item(), "val_ssim": torch.cat(ssims).mean().item(),
           "val_psnr": p[torch.isfinite(p)].mean().item()}
    out["val_hpn"] = h_pn(out["val_mosr"], out["val_ssim"], out["val_psnr"])
    return out


def _load_npz(path: str | None) -> dict[str, np.ndarray] | None:
    return dict(np.load(path)) if path else None


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker for LD-MAN: DDP over G and D, a checkpoint per epoch, resume on restart.

    ``config``: the ``ldman`` params plus absolute paths (manifest, image_dir, surrogate, rp,
    regions, directions), attributes, seed; optional fail_at_epoch + fail_marker for fault tests.
    """
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config["seed"] + rank)

    surrogate = load_classifier(config["surrogate"]).to(device).requires_grad_(False)
    features = SurrogateFeatures(surrogate)
    rp = None
    if config["use_rp"]:
        rp = Denoiser(config["rp_width"])
        rp.load_state_dict(torch.load(config["rp"], map_location="cpu", weights_only=True))
        rp = rp.to(device).eval().requires_grad_(False)
    regions = _load_npz(config["regions"])
    faces = FaceAttributes(config["manifest"], config["image_dir"], config["train_splits"],
                           list(config["attributes"]), size=config["image_size"], limit=config["train_images"],
                           seed=config["seed"])
    train = ProtectionSet(faces, regions, _load_npz(config["directions"]) if config["use_dp"] else None)
    per_worker = max(1, config["batch_size"] // world)
    loader = ray.train.torch.prepare_data_loader(
        DataLoader(train, batch_size=per_worker, shuffle=True, drop_last=True))

    generator = Generator(config["epsilon"], config["g_width"], config["g_blocks"])
    discriminator = Discriminator(config["d_width"])
    opt_g = torch.optim.Adam(generator.parameters(), lr=config["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config["lr"], betas=(0.5, 0.999))
    history: list[dict[str, Any]] = []
    start = 1
    state = distributed.restore()
    if state is not None:
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        history, start = state["history"], state["epoch"] + 1
    generator = ray.train.torch.prepare_model(generator)
    discriminator = ray.train.torch.prepare_model(discriminator)
    val = None
    if rank == 0 and config["val_images"]:
        val_faces = FaceAttributes(config["manifest"], config["image_dir"], ["val"], list(config["attributes"]),
                                   size=config["image_size"], limit=config["val_images"], seed=config["seed"])
        val = ProtectionSet(val_faces, regions, None)

    for epoch in range(start, config["epochs"] + 1):
        if config.get("fail_at_epoch") == epoch and rank == world - 1 and world > 1:
            marker = Path(config["fail_marker"])
            if not marker.exists():
                marker.write_text(f"worker {rank} died at epoch {epoch}\n")
                import os

                os._exit(1)
        if world > 1:
            loader.sampler.set_epoch(epoch)
        t0, steps = time.time(), []
        for images, labels, rects, eps_d in tqdm(loader, desc=f"LD-MAN epoch {epoch}", disable=rank != 0,
                                                 mininterval=10, leave=False):
            eps_d = eps_d if config["use_dp"] else None
            with distributed.autocast(device):
                total, terms, clean_win, adv_win = step_losses(generator, discriminator, surrogate, features, rp,
                                                    images, labels, rects, eps_d, config)
            opt_g.zero_grad(set_to_none=True)
            total.backward()
            opt_g.step()
            d_loss = discriminator_loss(discriminator(clean_win), discriminator(adv_win.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            steps.append({"total": total.item(), "d": d_loss.item(), **{k: v.item() for k, v in terms.items()}})
        metrics = {"epoch": epoch, "epoch_time_s": time.time() - t0,
                   **{f"train_{k}": float(np.mean([s[k] for s in steps])) for k in steps[0]}}
        inner_g = generator.module if hasattr(generator, "module") else generator
        if val is not None:
            metrics.update(validate_protection(inner_g, surrogate, val, config))
        history.append({**metrics, "steps": steps})
        inner_d = discriminator.module if hasattr(discriminator, "module") else discriminator
        distributed.report(metrics, {"generator": inner_g.state_dict(), "discriminator": inner_d.state_dict(),
                                     "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                                     "epoch": epoch, "history": history})


def train_ldman(config: dict[str, Any], *, name: str, storage_path: str | Path,
                scaling: dict[str, Any]) -> tuple[Generator, list[dict[str, Any]]]:
    """Driver: fit LD-MAN on Ray Train -> (trained G in eval mode, per-epoch history)."""
    result = distributed.fit(train_loop, config, name=name, storage_path=storage_path, **scaling)
    if result.error is not None:
        raise RuntimeError(f"LD-MAN training {name} failed") from result.error
    state = distributed.load_state(result.checkpoint)
    generator = Generator(config["epsilon"], config["g_width"], config["g_blocks"])
    generator.load_state_dict(state["generator"])
    return generator.eval(), state["history"]


def ldman_config(cfg: dict[str, Any], artifacts: str | Path = "artifacts") -> dict[str, Any]:
    """The worker config from params: the ``ldman`` section plus absolute paths of its inputs
    (Ray workers change directory) and the settings it shares with other stages."""
    from invisible_face.classifiers import attribute_sizes

    art = Path(artifacts).resolve()
    return {
        **cfg["ldman"], "seed": cfg["seed"], "attributes": attribute_sizes(cfg),
        "manifest": str(art / "validate/manifest.csv"), "image_dir": str(Path(cfg["data"]["image_dir"]).resolve()),
        "surrogate": str(art / "classifiers/models" / f"{cfg['classifiers']['surrogate']['name']}.pt"),
        "rp": str(art / "denoiser/rp.pt"), "rp_width": cfg["denoiser"]["width"],
        "regions": str(art / "regions/regions.npz"), "directions": str(art / "directions/directions.npz"),
        "n_neighbours": cfg["directions"]["n_neighbours"],
        "neighbourhood_radius": cfg["directions"]["neighbourhood_radius"],
    }


def ldman_scaling(lcfg: dict[str, Any]) -> dict[str, Any]:
    """The Ray Train scaling keys of the ``ldman`` params (arguments of ``distributed.fit``)."""
    return {k: lcfg[k] for k in ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "keep_checkpoints")}
