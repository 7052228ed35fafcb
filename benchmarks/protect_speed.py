"""ms per 200x200 face for the protector (landmarks, mask, G with its DP, the check, the batched
refinement) at each batch size of ``--batches`` (faces protected together; batch 1 with bfloat16 off
is the path before batches, the baseline, run first in the same process), next to a PGD baseline
(PGD-10 by default: full image, same surrogate, same faces), with each method's MOSR, SSIM, PSNR and
MOSR after a JPEG round trip at quality 75 (as platforms recompress uploads) on the surrogate; where
the protector's time goes; and the ensemble's forward + backward pass per face by batch size in
float32 and under bfloat16 autocast (where bfloat16 starts to pay: ``refine.bf16_min_batch``). With
``--transfer``, the written faces are also scored on the models the defender does not own: the zoo
and the known-backbone adversary (the embedding adversary), as the evaluation scores them.

    python benchmarks/protect_speed.py [--model artifacts/export/protector] [--faces 48]
                                       [--batches 1,4,16] [--split test] [--known-labels] [--no-pgd]
                                       [--pgd-steps 10] [--set SECTION.KEY=JSON ...] [--transfer]

Faces are a seeded sample of the split. ``--known-labels`` tells the protector each face's true
attributes (as the evaluation's ``invisible_face_known_labels``). ``--set`` overrides one of the
protector's settings (a dotted key of params ``protector``), e.g. ``--set refine.steps=8 --set
'refine.shrink=[]' --set visibility.budget='"uniform"'``: compare settings on ``--split val``, not on the test split,
with ``--no-pgd`` to skip the baseline. The figures also go to benchmarks/results/protect_speed.json.
Face SSIM / PSNR and the texture ratio are on the chips' face
masks (from the landmarks stage), as the evaluation scores them, with the colour change on smooth skin
(CIEDE2000 on the 40 % smoothest face pixels).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from PIL import Image

import invisible_face.protect.protector as protector_module
from invisible_face.data.faces import sample_rows
from invisible_face.data.images import to_tensor
from invisible_face.evaluate.attacks import baseline_attack
from invisible_face.evaluate.evaluation import TestSet, face_naturalness, score
from invisible_face.method.ldman_training import chip_masks
from invisible_face.method.recompression import jpeg
from invisible_face.method.refine import bf16_native
from invisible_face.metrics import mosr, psnr, ssim
from invisible_face.models.classifiers import classifier_path, models_dir
from invisible_face.models.embedding_adversary import EmbeddingAdversary, chip_embeddings
from invisible_face.models.networks import load_classifier, predict
from invisible_face.params import PROJECT_ROOT, load_params
from invisible_face.protect.protector import PATHS, Protector

sys.path.insert(0, str(PROJECT_ROOT))  # benchmarks/ as a package, for its results helper
from benchmarks.recorded import write_results  # noqa: E402


def time_parts(protector: Protector) -> dict[str, float]:
    """Wrap the protector's own steps so that each call adds its seconds to the returned dict."""
    seconds: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - t0
        return wrapper

    protector.landmarks.chip = timed("landmarks", protector.landmarks.chip)
    for name, fn in (("region search", "select_region"), ("mask", "face_mask"), ("G + DP", "generator_protect"),
                     ("check + refinement", "refine_perturbation")):
        setattr(protector_module, fn, timed(name, getattr(protector_module, fn)))
    return seconds


def pass_ms_per_face(model: torch.nn.Module, batch: int, bf16: bool, repeats: int = 3) -> float:
    """ms per face of one forward + backward pass of ``model`` on ``batch`` 200 px faces (float32, or
    under bfloat16 autocast as the refinement's steps run)."""
    x = torch.rand(batch, 3, 200, 200, requires_grad=True)

    def once():
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = model(x)
        torch.autograd.grad(sum(v.float().sum() for v in out.values()), x)
    once()
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return 1000 * (time.perf_counter() - start) / repeats / batch


def transfer(cfg: dict, written: dict[str, torch.Tensor], data: TestSet, surrogate: torch.nn.Module) -> None:
    """Print each method's share of right calls made wrong: the zoo's (mean over models and
    attributes) and the embedding adversary's per attribute, with its MOSR."""
    models = models_dir(PROJECT_ROOT / "artifacts")
    zoo = {m["name"]: load_classifier(classifier_path(m["name"], models)) for m in cfg["classifiers"]["zoo"]}
    adversary = EmbeddingAdversary.load(classifier_path(cfg["classifiers"]["embedding_adversary"]["name"], models))
    embed = lambda x: chip_embeddings(x, cfg["landmarks"]["fallback_box"])
    names = list(data.labels)
    print(f"right calls made wrong: {'method':16s} {'zoo':>6s}  known backbone {' / '.join(names)}, MOSR")
    for name, x in written.items():
        row = score(x, data, surrogate, zoo, embed, adversary)
        fooled = " / ".join(f"{row[f'known_backbone_fooled_{a}']:.3f}" for a in names)
        print(f"{'':24s}{name:16s} {row['zoo_fooled_mean']:6.3f}  {fooled}, "
              f"{row['known_backbone_mosr']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(PROJECT_ROOT / "artifacts/export/protector"))
    parser.add_argument("--faces", type=int, default=48)
    parser.add_argument("--batches", default="1,4,16", help="batch sizes timed (faces protected together)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--known-labels", action="store_true", help="tell the protector the true labels")
    parser.add_argument("--no-pgd", action="store_true", help="skip the PGD baseline")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help="override one of the export's settings, e.g. refine.steps=8")
    parser.add_argument("--transfer", action="store_true",
                        help="also score the zoo and the embedding adversary on the written faces")
    args = parser.parse_args()
    cfg = load_params(PROJECT_ROOT / "params.yaml")
    protector = Protector.load(args.model)
    for item in args.set:
        key, value = item.split("=", 1)
        *sections, name = key.split(".")
        section = protector.settings
        for part in sections:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or name not in section:
            parser.error(f"--set {key}: not one of the protector's settings")
        section[name] = json.loads(value)
    test = sample_rows(PROJECT_ROOT / "artifacts/validate/manifest.csv", [args.split], args.faces, cfg["seed"])
    chips = [np.array(Image.open(PROJECT_ROOT / cfg["data"]["image_dir"] / f).convert("RGB")) for f in test["file"]]
    labels = {k: torch.tensor(test[k].to_numpy()) for k in protector.config["attributes"]}
    clean = torch.stack([to_tensor(c) for c in chips])
    masks = chip_masks(test["file"].tolist(), dict(np.load(PROJECT_ROOT / "artifacts/landmarks/landmarks.npz")),
                       cfg["validate"]["expected_size"][0], clean.shape[-1], cfg["protector"]["mask"])
    print(f"{len(chips)} {args.split} faces (200x200), torch threads {torch.get_num_threads()}, "
          f"landmarks {protector.landmarks.name}, {'told the true labels' if args.known_labels else 'no labels'}, "
          f"refine {json.dumps(protector.settings['refine'])}")

    told = [{k: int(v[i]) for k, v in labels.items()} for i in range(len(chips))] if args.known_labels else None
    protector.protect_chip(chips[0])  # warm-up
    batches = [int(b) for b in args.batches.split(",")]
    by_batch, outputs = {}, {}
    for batch in batches:  # batch 1 with bfloat16 off: the path before batches, the baseline
        at = protector.variant({"batch_size": batch} | ({"refine": {"bf16_min_batch": None}} if batch == 1 else {}))
        parts = time_parts(at) if batch == max(batches) else None
        start = time.perf_counter()
        results = at.protect_chips(chips, told)
        seconds = time.perf_counter() - start
        by_batch[batch] = {"ms_per_face": 1000 * seconds / len(chips), "faces_per_s": len(chips) / seconds}
        outputs[batch] = results
        print(f"batch {batch:3d}: {by_batch[batch]['ms_per_face']:7.1f} ms a face, "
              f"{by_batch[batch]['faces_per_s']:.2f} faces/s")
    deployed = max(batches)
    results = outputs[deployed]
    ours_ms = by_batch[deployed]["ms_per_face"]
    ours = torch.stack([to_tensor(p) for p, _ in results])
    records = [r[0] for _, r in results]
    steps = np.array([r.steps for r in records])

    def scores(x):
        resnet = protector.generator_surrogate  # the white-box ResNet-18 (the ensemble's first member)
        preds, after_jpeg = predict(resnet, x), predict(resnet, jpeg(x, 75))
        p, face = psnr(clean, x), face_naturalness(clean, x, masks)
        return (mosr(preds, labels), ssim(clean, x).mean().item(), p[torch.isfinite(p)].mean().item(),
                mosr(after_jpeg, labels), face["face_ssim"], face["face_psnr"], face["texture_ratio"],
                face["skin_delta_e"])

    pgd_name = f"PGD-{args.pgd_steps} (full)"
    one = torch.stack([to_tensor(p) for p, _ in outputs[min(batches)]])
    rows = {f"Invisible-Face (batch {deployed})": (ours_ms, *scores(ours)),
            f"Invisible-Face (batch {min(batches)})": (by_batch[min(batches)]["ms_per_face"], *scores(one))}
    written = {f"batch {deployed}": ours, f"batch {min(batches)}": one}
    if not args.no_pgd:
        start = time.perf_counter()
        pgd = torch.cat([baseline_attack("pgd", protector.generator_surrogate, clean[i:i + 1],
                                         {k: v[i:i + 1] for k, v in labels.items()},
                                         protector.config["ldman"]["epsilon"], steps=args.pgd_steps)
                         for i in range(len(chips))])
        pgd_ms = 1000 * (time.perf_counter() - start) / len(chips)
        written[pgd_name] = (pgd * 255).round() / 255  # both saved as 8-bit images
        rows[pgd_name] = (pgd_ms, *scores(written[pgd_name]))
    print(f"{'method':26s} {'ms/face':>8s} {'MOSR':>6s} {'SSIM':>6s} {'PSNR':>6s} {'JPEG75':>6s} "
          f"{'faceSSIM':>8s} {'facePSNR':>8s} {'texture':>7s} {'skinΔE':>6s}")
    for name, (ms, m, s_, p_, j, fs, fp, t, de) in rows.items():
        print(f"{name:26s} {ms:8.1f} {m:6.3f} {s_:6.3f} {p_:6.2f} {j:6.3f} {fs:8.3f} {fp:8.2f} {t:7.3f} {de:6.2f}")
    if args.transfer:
        transfer(cfg, written, TestSet(clean, labels), protector.generator_surrogate)
    print(f"refinement steps a face: mean {steps.mean():.2f} (batch {deployed})")
    passes = {kind: {b: pass_ms_per_face(protector.surrogate, b, kind == "bfloat16") for b in (1, 4, 8, 16)}
              for kind in ("float32", "bfloat16")}
    print(f"bfloat16 instructions on this CPU: {bf16_native('cpu')} (refine.bf16_min_batch applies only then)")
    print("ensemble forward + backward, ms a face by batch: " + "; ".join(
        f"{b}: float32 {passes['float32'][b]:.1f}, bf16 {passes['bfloat16'][b]:.1f}" for b in passes["float32"]))
    names = ("ms_per_face_mean", "mosr", "ssim", "psnr", "mosr_after_jpeg75", "face_ssim", "face_psnr",
             "texture_ratio", "skin_delta_e")
    write_results("protect_speed", {
        "model": args.model, "split": args.split, "faces": len(chips), "settings": args.set,
        "known_labels": args.known_labels, "batch_size": deployed,
        "faces_per_s": by_batch[deployed]["faces_per_s"],
        "ms_per_face_by_batch": {str(b): v["ms_per_face"] for b, v in by_batch.items()},
        "faces_per_s_by_batch": {str(b): v["faces_per_s"] for b, v in by_batch.items()},
        "refine_steps_mean": float(steps.mean()),
        "paths": {p: int(sum(r.path == p for r in records)) for p in PATHS},
        "pass_ms_per_face": {k: {str(b): v for b, v in d.items()} for k, d in passes.items()},
        "methods": {name: dict(zip(names, values)) for name, values in rows.items()}})
    if not args.no_pgd:
        print(f"(PGD attacks the true labels; the protector is {'' if args.known_labels else 'not '}told them)")
        print(f"speed ratio {pgd_name} / ours: {rows[pgd_name][0] / ours_ms:.1f}x")
    print(f"where the protector's time goes at batch {deployed} (ms/face): "
          + ", ".join(f"{k} {1000 * v / len(chips):.1f}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
