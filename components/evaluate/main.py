"""evaluate stage: the protector against the baselines on the test split, logged to MLflow.

Outputs (artifacts/evaluate/): metrics.json (the headline figures, then per method), results.csv,
transfer.csv (method x model MOSR), robustness.csv + robustness.png (MOSR after each post-processing,
every method), frontier.csv + frontier.png (the adversaries' MOSR against PSNR at several strengths of
each method), grid_<method>.png, perturbation_kde.png, report.md (beside the paper's Tables I, II, V,
VI and IX).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from invisible_face.data.faces import FaceAttributes
from invisible_face.data.synthetic_photos import LAYOUTS, write_photos
from invisible_face.evaluate.attacks import baseline_attack
from invisible_face.evaluate.evaluation import (
    TestSet,
    frontier_figure,
    frontier_table,
    perturbation_kde,
    predict,
    purify,
    quantise,
    robustness,
    robustness_figure,
    robustness_table,
    run_method,
    score,
    train_purifier,
    truth_in_cover,
)
from invisible_face.evaluate.metrics import mosr
from invisible_face.method.ldman_training import chip_masks
from invisible_face.models.classifiers import attribute_sizes, classifier_path, surrogate_path
from invisible_face.models.embedding_adversary import EmbeddingAdversary, chip_embeddings
from invisible_face.models.face_backbone import FaceBackboneSurrogate
from invisible_face.models.networks import load_classifier
from invisible_face.models.perceptual import Perceptual
from invisible_face.params import load_params
from invisible_face.protect.photo_io import read_photo, to_tensor, to_uint8
from invisible_face.protect.protector import PATHS, Protector, photo_face_crops, protection_grid
from invisible_face.tracking import run_tags, setup_mlflow

PAPER = {  # UTKFace, ResNet-18 (Tables I, II, V, VI); "-" where the paper gives no figure
    "invisible_face": {"mosr": 1.000, "ssim": 0.94, "psnr": 37.01},
    "fgsm": {"mosr": 0.984, "ssim": 0.62, "psnr": 26.25},
    "pgd": {"mosr": 1.000, "ssim": 0.73, "psnr": 28.55},
    "mifgsm": {"mosr": 1.000, "ssim": 0.67, "psnr": 27.30},
    "tifgsm": {"mosr": 1.000, "ssim": 0.73, "psnr": 26.57},
    "invisible_face_full_region": {"mosr": 1.000, "ssim": 0.87, "psnr": 33.26},
}
PAPER_DENOISED = {"original": 1.000, "DnCNN": 0.916, "BSRGAN": 0.898, "FFDNet": 0.905}  # Table IX, Invisible-Face


def protector_method(protector: Protector, known_labels: bool = False, records: list | None = None):
    """The protector as an evaluation method; ``known_labels``: it is told each face's true attributes;
    ``records``: a list that collects each face's record (path taken, ms)."""
    def protect(images: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        out = []
        for i, img in enumerate(images):
            rgb, recs = protector.protect_chip(to_uint8(img), {k: int(v[i]) for k, v in labels.items()}
                                               if known_labels else None)
            out.append(to_tensor(rgb))
            if records is not None:
                records.extend(recs)
        return torch.stack(out)
    return protect


# Protector variants (inference-time switches on the same export): what each part contributes; params
# ``evaluate.variants`` picks the ones a run scores. name -> (config overrides, whether it is told the true labels)
VARIANTS = {
    # the face embedding's move bounded: the face stays the same person to face_recognition
    "invisible_face_keep_identity": ({"refine": {"keep_identity": True}}, False),
    "invisible_face_known_labels": ({}, True),
    # G alone: its one pass, no refinement fallback (the paper's inference), no survive-JPEG check
    "invisible_face_g_only": ({"refine": {"steps": 0}}, False),
    # the change kept off smooth skin by the visibility budget (invisible_face/method/visibility.py)
    "invisible_face_visibility": ({"protect": {"visibility": {"enabled": True}}}, False),
    # the slow step schedule this one replaced: 20 small steps, no momentum, the gradient through a JPEG too
    "invisible_face_slow": ({"refine": {"steps": 20, "step_size": 0.3, "momentum": 0.0, "jpeg_gradient": True}},
                            False),
    # steps that stop at the stop margin (no push further for transfer, as before the push margin)
    "invisible_face_no_push": ({"refine": {"push_margin": None}}, False),
    # the stop rule without the survive-JPEG check (the deployed one before it)
    "invisible_face_no_survive": ({"protect": {"survive_jpeg_quality": None}}, False),
    # Algorithm 1's rectangle as the mask instead of the feathered face mask
    "invisible_face_region": ({"protect": {"mask": {"kind": "region"}}}, False),
    # Table V: the whole crop
    "invisible_face_full_region": ({"protect": {"mask": {"kind": "crop"}}}, False),
}
STRENGTHS = ("light", "strong")  # the presets beside the deployed default (standard): invisible_face_<preset>


def chips_of(cfg: dict, split: str, n: int) -> FaceAttributes:
    """A seeded sample of ``n`` chips of ``split`` at the protector's resolution, with their labels."""
    return FaceAttributes("artifacts/validate/manifest.csv", cfg["data"]["image_dir"], [split],
                          list(attribute_sizes(cfg)), size=cfg["ldman"]["image_size"], limit=n, seed=cfg["seed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default="artifacts/export/protector")
    parser.add_argument("--out", default="artifacts/evaluate")
    parser.add_argument("--landmarks", default="artifacts/landmarks/landmarks.npz")
    args = parser.parse_args()

    cfg = load_params(args.params)
    ecfg = cfg["evaluate"]
    faces = chips_of(cfg, "test", ecfg["test_images"])
    # face pixels (face SSIM / PSNR, texture ratio): the protector's face mask from the landmarks stage's points
    masks = chip_masks(faces.table["file"].tolist(), dict(np.load(args.landmarks)), cfg["validate"]["expected_size"][0],
                       cfg["ldman"]["image_size"], cfg["protector"]["mask"])
    data = TestSet(faces.images.float() / 255, dict(faces.labels), face_masks=masks)
    surrogate = load_classifier(surrogate_path(cfg))  # the white-box ResNet-18: MOSR, robustness, the baselines
    face_cfg = cfg["classifiers"].get("face_surrogate")  # the ensemble's other member, scored white-box too
    members = {face_cfg["name"]: FaceBackboneSurrogate.load(classifier_path(face_cfg["name"]))} if face_cfg else {}
    zoo = {m["name"]: load_classifier(classifier_path(m["name"])) for m in cfg["classifiers"]["zoo"]}
    # dlib's own face embeddings of the written images: identity kept, and the known-backbone adversary's input (a
    # box: the protector never calls it)
    embed = lambda x: chip_embeddings(x, cfg["landmarks"]["fallback_box"])
    adversary = EmbeddingAdversary.load(classifier_path(cfg["classifiers"]["embedding_adversary"]["name"]))
    perceptual = Perceptual("auto", surrogate)  # LPIPS when its backbone is cached; which ran is in metrics
    protector = Protector.load(args.model)
    epsilon = cfg["ldman"]["epsilon"]

    deployed_records: list = []  # the deployed protector's per-face records (path, ms)
    methods = {"invisible_face": protector_method(protector, records=deployed_records)}
    for preset in STRENGTHS:
        methods[f"invisible_face_{preset}"] = protector_method(protector.with_strength(preset))
    for name in ecfg["variants"]:
        override, known_labels = VARIANTS[name]
        methods[name] = protector_method(protector.variant(override), known_labels)
    # the baselines at the common budget, and at smaller ones for the frontier (<name>_eps<k>: k/255)
    budgets = {name: epsilon for name in ecfg["baselines"]}
    fcfg = ecfg["frontier"]
    budgets |= {f"{name}_eps{k}": k / 255 for name in fcfg["baselines"] for k in fcfg["epsilons"]
                if abs(k / 255 - epsilon) > 1e-6}
    for name, budget in budgets.items():
        methods[name] = lambda x, y, n=name.split("_eps")[0], e=budget: baseline_attack(
            n, surrogate, x, y, e, ecfg["baseline_steps"], cfg["ldman"]["kappa"])
    # the adaptive attacker's own photos: chips of the adversary's split
    adaptive_chips = chips_of(cfg, "target_train", ecfg["adaptive"]["train_images"]).images.float() / 255
    # the adversary protects its own photos with the same public method; it sees no labels of them,
    # so the baselines attack the surrogate's own calls
    adaptive_calls = predict(surrogate, adaptive_chips)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, robust, deltas = {}, {}, {}
    # the presets and variants run on the first ``variant_images`` of the same chips (each takes seconds a face)
    variant_data = data.head(ecfg["variant_images"])
    for name, protect in methods.items():
        on = variant_data if name.startswith("invisible_face_") else data
        print(f"evaluate: {name} ({len(on.images)} chips)", flush=True)
        protected, ms = run_method(protect, on)
        if name == "invisible_face":  # the test chips' records, before the adaptive attacker's chips add theirs
            test_records = list(deployed_records)
            # the same protector on the variants' chips: what each variant is compared with
            head = variant_data.images.shape[0]
            results["invisible_face_variant_chips"] = {
                **score(protected[:head], variant_data, surrogate, zoo, embed, adversary, perceptual, members),
                "ms_per_image": float("nan"), "chips": head}
        results[name] = {**score(protected, on, surrogate, zoo, embed, adversary, perceptual, members),
                         "ms_per_image": ms, "chips": len(on.images)}
        robust[name] = robustness(protected, on, surrogate)
        if name in ecfg["adaptive"]["methods"]:
            print(f"evaluate: adaptive DnCNN attacker against {name}", flush=True)
            pairs, _ = run_method(protect, TestSet(adaptive_chips, adaptive_calls))
            purifier = train_purifier(pairs, adaptive_chips, ecfg["adaptive"], cfg["seed"])
            purified = quantise(purify(purifier, protected))
            robust[name]["mosr_after_dncnn"] = mosr(predict(surrogate, purified), on.labels)
            for zoo_name, model in zoo.items():
                robust[name][f"mosr_{zoo_name}_after_dncnn"] = mosr(predict(model, purified), on.labels)
        if "_eps" not in name:
            deltas[name] = protected - on.images
            protection_grid(on.images[: ecfg["grid_images"]], protected[: ecfg["grid_images"]],
                            out / f"grid_{name}.png")
    # in-the-wild-like photos (chips composed at photo scale), at 2x: where a change shows on skin
    print("evaluate: photo crops", flush=True)
    with tempfile.TemporaryDirectory() as photos:
        write_photos(cfg["data"]["image_dir"], photos, {k: LAYOUTS[k] for k in ecfg["photos"]})
        for photo_name in ecfg["photos"]:
            clean = read_photo((Path(photos) / photo_name).read_bytes()).rgb
            protected, records = protector.protect(clean)
            budgeted, _ = protector.variant(VARIANTS["invisible_face_visibility"][0]).protect(clean)
            photo_face_crops(clean, {"standard": protected, "visibility budget": budgeted}, records,
                             out / f"photo_crops_{Path(photo_name).stem}.png")
    perturbation_kde({k: v for k, v in deltas.items() if not k.startswith("invisible_face_")}, epsilon,
                     out / "perturbation_kde.png")
    families = {"invisible_face": ["invisible_face_light", "invisible_face", "invisible_face_strong"]}
    families |= {b: sorted((n for n in budgets if n.split("_eps")[0] == b), key=budgets.get)
                 for b in fcfg["baselines"]}
    frontier = frontier_table(results, families)
    frontier.to_csv(out / "frontier.csv", index=False)
    frontier_figure(frontier, out / "frontier.png")

    table = pd.DataFrame(results).T
    table.to_csv(out / "results.csv")
    table[["mosr", *(f"mosr_{n}" for n in zoo)]].rename(columns={"mosr": "mosr_surrogate"}).to_csv(out / "transfer.csv")
    stability = table[[c for c in table.columns if c.endswith("_attributes")]]
    stability.columns = [int(c.split("_")[1]) for c in stability.columns]
    stability.T.rename_axis("attributes").to_csv(out / "stability.csv")
    robust_table = robustness_table(results, robust)
    robust_table.to_csv(out / "robustness.csv")
    robustness_figure(robust_table, out / "robustness.png")
    metrics = {name: {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
               for name, row in results.items()}
    for name, row in robust.items():
        metrics[name].update(row)
    # how far label-free protection can go with this surrogate: see truth_in_cover
    results["invisible_face"]["truth_in_cover"] = truth_in_cover(data.clean_calls("surrogate", surrogate), data.labels,
                                                                 protector.config["protect"]["cover"])
    top = headline(results, robust, test_records, list(members))
    # the baselines' curves read at the deployed protector's PSNR: the equal-PSNR comparison
    for family, value in at_equal_psnr(frontier, top["protector_psnr"], "known_backbone_fooled_mean").items():
        top[f"{family}_known_backbone_fooled_at_protector_psnr"] = value
    metrics = {**top, **metrics}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "report.md").write_text(render_report(results, robust_table, frontier, len(data.images), list(zoo),
                                                   list(data.labels), top))

    setup_mlflow("evaluate")
    with mlflow.start_run(run_name="evaluate", tags=run_tags()):
        mlflow.log_params({f"evaluate.{k}": v for k, v in ecfg.items()})
        for name, row in metrics.items():
            if isinstance(row, dict):
                mlflow.log_metrics({f"{name}.{k}": v for k, v in row.items()
                                    if isinstance(v, (int, float)) and v is not None})
            elif isinstance(row, (int, float)):
                mlflow.log_metric(name, row)
        mlflow.log_artifacts(str(out))
    print(table.round(3).to_string())


def headline(results: dict, robust: dict, records: list, members: list[str]) -> dict[str, float]:
    """The figures the project is judged by, flat at the top of metrics.json: G alone and the
    deployed protector (G + refinement fallback), label-free, in the three tiers (white-box: the
    ResNet-18 ``protector_mosr`` and each other ensemble member's ``<member>_mosr``; known backbone:
    ``known_backbone_*``; black-box: ``zoo_fooled_mean``), identity kept per preset, the same with
    ``keep_identity`` on (prefix ``keep_identity_``) when that variant ran; surrogate MOSR against its
    label-free ceiling (``label_free_ceiling``: ``truth_in_cover``); the deployed protector's own
    per-face timing on the test chips (ms per chip, landmarks included) by the path that protected
    each face; and the share of its MOSR that survives each post-processing (MOSR after / before)."""
    g, p = results["invisible_face_g_only"], results["invisible_face"]
    ms = np.array([r.ms for r in records])
    out = {"g_only_mosr": g["mosr"], "g_only_ssim": g["ssim"], "g_only_psnr": g["psnr"],
           "protector_mosr": p["mosr"], "protector_ssim": p["ssim"], "protector_psnr": p["psnr"],
           "protector_h_pn": p["h_pn"],
           # the share of faces a label-free protector can fool at all (truth_in_cover), and MOSR against it
           "label_free_ceiling": p["truth_in_cover"], "protector_mosr_of_ceiling": p["mosr"] / p["truth_in_cover"]
           if p["truth_in_cover"] else None,
           "protect_ms_median": float(np.median(ms)), "protect_ms_p90": float(np.percentile(ms, 90))}
    for path in PATHS:
        taken = [r.ms for r in records if r.path == path]
        # the generator path's share is G's protected share under the deployed stop rule
        out["g_only_protected_share" if path == "generator" else f"path_share_{path}"] = len(taken) / len(records)
        out[f"protect_ms_median_{path}"] = float(np.median(taken)) if taken else None
    tiers = lambda row: {k: v for k, v in row.items() if k.startswith("known_backbone_")
                         or k in ("zoo_fooled_mean", "identity_kept")}
    for key in ("lpips", "percep_surrogate", "perceptual"):
        if key in p:
            out[key] = p[key]
    out |= {f"{m}_mosr": p[f"mosr_{m}"] for m in members} | tiers(p)
    for preset in STRENGTHS:
        if f"invisible_face_{preset}" in results:
            out[f"identity_kept_{preset}"] = results[f"invisible_face_{preset}"].get("identity_kept")
    out |= {k: p[k] for k in ("face_ssim", "face_psnr", "texture_ratio") if k in p}
    # the variants a change is judged against, beside it: <variant>_<figure>
    for variant in ("variant_chips", "keep_identity", "visibility", "slow"):
        row = results.get(f"invisible_face_{variant}")
        if row is not None:
            figures = {k: row[k] for k in ("mosr", "ssim", "psnr", "face_ssim", "face_psnr", "texture_ratio",
                                           "ms_per_image") if k in row}
            figures |= {f"{m}_mosr": row[f"mosr_{m}"] for m in members}
            out |= {f"{variant}_{k}": v for k, v in {**figures, **tiers(row)}.items()}
    after = robust.get("invisible_face", {})
    for column in [c.removeprefix("mosr_after_") for c in after if c.startswith("mosr_after_")]:
        if p["mosr"] > 0:
            key = "half_scale" if column == "resize_half" else column
            out[f"{key}_retention"] = after[f"mosr_after_{column}"] / p["mosr"]
    return out


def at_equal_psnr(frontier: pd.DataFrame, psnr: float, column: str) -> dict[str, float | None]:
    """Each baseline family's ``column`` at ``psnr``, linear between its two strengths around it on
    the frontier; None where ``psnr`` is outside the family's range (no extrapolation)."""
    out = {}
    for family, rows in frontier[frontier["family"] != "invisible_face"].groupby("family", sort=False):
        rows = rows.sort_values("psnr")
        inside = rows["psnr"].min() <= psnr <= rows["psnr"].max()
        out[family] = float(np.interp(psnr, rows["psnr"], rows[column])) if inside else None
    return out


def render_report(results: dict, robust_table: pd.DataFrame, frontier: pd.DataFrame, n: int, zoo: list[str],
                  attributes: list[str], top: dict) -> str:
    def fmt(v, p=3):
        if isinstance(v, str):
            return v
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{p}f}"

    lines = [f"# Evaluation on {n} test chips (surrogate ResNet-18 white-box, zoo: {', '.join(zoo) or 'none'})", "",
             "## The deployed protector and G alone (label-free)", "",
             "| figure | value |", "|---|---|",
             *(f"| {k} | {fmt(v)} |" for k, v in top.items()), "",
             "Ours are measured by `dvc repro evaluate`; the paper's figures (UTKFace, ResNet-18) are beside them.", "",
             "| method | MOSR | MOSR_correct | SSIM | PSNR | H-PN | transfer MOSR | zoo fooled | known backbone "
             "MOSR / fooled | identity kept | ms/img | paper MOSR / SSIM / PSNR |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        p = PAPER.get(name)
        paper = f"{p['mosr']:.3f} / {p['ssim']:.2f} / {p['psnr']:.2f}" if p else "-"
        lines.append(f"| {name} | {fmt(r['mosr'])} | {fmt(r['mosr_correct'])} | {fmt(r['ssim'])} | "
                     f"{fmt(r['psnr'], 2)} | "
                     f"{fmt(r['h_pn'])} | {fmt(r.get('mosr_transfer_mean'))} | {fmt(r.get('zoo_fooled_mean'))} | "
                     f"{fmt(r.get('known_backbone_mosr'))} / {fmt(r.get('known_backbone_fooled_mean'))} | "
                     f"{fmt(r.get('identity_kept'))} | "
                     f"{fmt(r['ms_per_image'], 1)} | {paper} |")
    cap = results["invisible_face"].get("truth_in_cover")
    if cap is not None:
        lines += ["", f"Label-free ceiling: on {fmt(cap)} of the chips the true class of every attribute is among the",
                  "classes the deployed protector steers away from (`truth_in_cover`). On the others the surrogate",
                  "already calls an attribute wrongly and a label-free protector moves it "
                  "(for gender, onto the truth),",
                  "so MOSR without labels stays near this share however strong the perturbation."]
    lines += ["", "Transfer drop (white-box MOSR to mean zoo MOSR, relative): "
              + ", ".join(f"{k} {fmt(r.get('transfer_drop'))}" for k, r in results.items())
              + " (paper: 17.2 % for Invisible-Face, over 50 % for the baselines).", "",
              "## Transfer per attribute", "",
              f"Of each zoo model's right calls on the clean chips, the share protection makes wrong "
              f"({' / '.join(attributes)}).",
              "MOSR on a model needs all of them at once. "
              "`benchmarks/transfer_ceiling.py` measures how far attacks made",
              "for transfer move these models.", "",
              "| method | " + " | ".join(zoo) + " | zoo mean | known backbone |",
              "|---|" + "---|" * (len(zoo) + 2)]
    for name, r in results.items():
        cells = [" / ".join(fmt(r.get(f"fooled_{m}_{a}"), 2) for a in attributes)
                 for m in [*zoo, "transfer", "known_backbone"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Known backbone: the embedding adversary, attribute heads of its own on dlib's public",
              "face-recognition embedding, trained on the adversary's split and run by dlib itself on the written",
              "images. The defender runs the same public network (in PyTorch, with heads of its own on its own",
              "split) but never these heads.",
              "",
              "## Privacy against visibility (frontier.png)", "",
              "| family | method | PSNR | SSIM | surrogate MOSR | zoo fooled | known backbone MOSR / fooled |",
              "|---|---|---|---|---|---|---|"]
    for _, r in frontier.iterrows():
        lines.append(f"| {r['family']} | {r['method']} | {fmt(r['psnr'], 2)} | {fmt(r['ssim'])} | {fmt(r['mosr'])} | "
                     f"{fmt(r['zoo_fooled_mean'])} | {fmt(r['known_backbone_mosr'])} / "
                     f"{fmt(r['known_backbone_fooled_mean'])} |")
    lines += ["",
              "## Robustness (surrogate MOSR before and after post-processing, robustness.png)", "",
              "| method | " + " | ".join(robust_table.columns) + " |", "|---|" + "---|" * len(robust_table.columns)]
    for name, r in robust_table.iterrows():
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in r.tolist()) + " |")
    retention = robust_table.drop(columns="before").div(robust_table["before"], axis=0)
    lines += ["", "Retention (MOSR after / before):", "",
              "| method | " + " | ".join(retention.columns) + " |", "|---|" + "---|" * len(retention.columns)]
    for name, r in retention.iterrows():
        lines.append(f"| {name} | " + " | ".join(fmt(v, 2) for v in r.tolist()) + " |")
    counts = sorted(int(c.split("_")[1]) for c in next(iter(results.values())) if c.endswith("_attributes"))
    paper_ix = ", ".join(f"{k} {v:.3f}" for k, v in PAPER_DENOISED.items())
    lines += ["", "`mosr_after_dncnn`: the adaptive attacker of Table IX, a DnCNN trained on (protected -> clean)",
              "pairs of its own photos (target_train chips) protected by the same method, applied before the surrogate",
              "(and before each zoo model: `mosr_<model>_after_dncnn` in metrics.json).",
              f"Paper, Table IX (Invisible-Face, MOSR before and after denoising): {paper_ix}.", "",
              "## Stability over the number of protected attributes (Fig. 8 style)", "",
              "MOSR over k attributes, averaged over every k-subset (the protector always protects all of them).", "",
              "| method | " + " | ".join(f"k = {k}" for k in counts) + " |", "|---|" + "---|" * len(counts)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r[f'mosr_{k}_attributes']) for k in counts) + " |")
    lines += ["", "Variants are inference-time switches on the same trained G: `_known_labels` is told each face's",
              "true attributes (the baselines always are); `_g_only` is G's one pass without the refinement",
              "fallback (the paper's inference); `_region` perturbs Algorithm 1's rectangle instead of the feathered",
              "face mask; `_full_region` the whole crop (Table V); `_no_survive` drops the survive-JPEG check from",
              "the stop rule; `_no_push` stops at the stop margin; `_keep_identity` bounds the face embedding's move;",
              "`_visibility` keeps the change off smooth skin (the visibility budget); `_slow` is the step schedule",
              "before the fast one (20 small steps, the gradient through a JPEG too);",
              "`_light` and `_strong` are the strength presets; `_variant_chips` is the deployed protector's",
              "output on the chips the presets and variants run on. Params `evaluate.variants` picks the variants a",
              "run scores.",
              "`<baseline>_eps<k>`: the baseline at a budget of k/255 (the frontier)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
