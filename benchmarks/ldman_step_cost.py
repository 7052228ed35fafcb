"""ms per LD-MAN training step (G's forward and backward, D's step) with each loss term on top of
L_distill alone, measured in the same process on the same batch, so a term's cost can be weighed
against what it brings to the validation figures (docs/results.md).

    python benchmarks/ldman_step_cost.py [--batch 32] [--repeats 10] [--threads 2]

Needs the classifiers, denoiser and answers stages' outputs (artifacts/). Prints one line per
configuration: the terms on, ms per step (median over repeats), and the extra over L_distill alone.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from invisible_face.method.denoiser import Denoiser
from invisible_face.method.ldman import Discriminator
from invisible_face.method.ldman_training import GeneratorSet, ldman_config, new_generator, step_losses
from invisible_face.method.losses import discriminator_loss
from invisible_face.models.networks import load_classifier
from invisible_face.models.perceptual import Perceptual, SurrogateFeatures
from invisible_face.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = ldman_config(load_params())
    data = GeneratorSet(dict(np.load(config["answers"])), "train", args.batch)
    batch = [torch.stack([data[i][j] for i in range(len(data))]) for j in range(6)]
    surrogate = load_classifier(config["surrogate"]).requires_grad_(False)
    rp = Denoiser(config["rp_width"])
    rp.load_state_dict(torch.load(config["rp"], map_location="cpu", weights_only=True))
    rp.eval().requires_grad_(False)
    generator, discriminator = new_generator(config), Discriminator(config["d_width"])
    features = SurrogateFeatures(surrogate)
    perceptual = Perceptual(config["perceptual"], features)

    def step_ms(cfg: dict) -> float:
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            total, _, x_adv = step_losses(generator, discriminator, surrogate, features, perceptual,
                                          rp if cfg["loss_weights"]["adv_rp"] else None, *batch, cfg)
            total.backward()
            if cfg["lambda_gan"]:
                discriminator_loss(discriminator(batch[0]), discriminator(x_adv.detach())).backward()
            times.append(1000 * (time.perf_counter() - t0))
        return float(np.median(times[1:]))

    base = copy.deepcopy(config)
    base["loss_weights"] = {k: (1.0 if k == "distill" else 0.0) for k in config["loss_weights"]}
    base["lambda_gan"] = 0.0
    adv_only = step_ms(base)
    print(f"batch {args.batch}, {args.threads} threads, work size {config['work_size']} px")
    print(f"{'terms':<24}{'ms/step':>10}{'extra':>10}")
    print(f"{'distill':<24}{adv_only:>10.1f}{0.0:>10.1f}")
    for term in ("adv", "robust", "per", "nat", "sem", "adv_rp", "gan"):
        cfg = copy.deepcopy(base)
        if term == "gan":
            cfg["lambda_gan"] = config["lambda_gan"] or 0.02
        else:
            cfg["loss_weights"][term] = 1.0
        ms = step_ms(cfg)
        print(f"{'distill + ' + term:<24}{ms:>10.1f}{ms - adv_only:>10.1f}")
    ms = step_ms(config)
    print(f"{'all (params.yaml)':<24}{ms:>10.1f}{ms - adv_only:>10.1f}")


if __name__ == "__main__":
    main()
