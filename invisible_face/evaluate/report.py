"""report.md of the evaluate stage: the results beside the paper's Tables I, II, V, VI and IX."""

from __future__ import annotations

import numpy as np
import pandas as pd

PAPER = {  # UTKFace, ResNet-18 (Tables I, II, V, VI); "-" where the paper gives no figure
    "invisible_face": {"mosr": 1.000, "ssim": 0.94, "psnr": 37.01},
    "fgsm": {"mosr": 0.984, "ssim": 0.62, "psnr": 26.25},
    "pgd": {"mosr": 1.000, "ssim": 0.73, "psnr": 28.55},
    "mifgsm": {"mosr": 1.000, "ssim": 0.67, "psnr": 27.30},
    "tifgsm": {"mosr": 1.000, "ssim": 0.73, "psnr": 26.57},
    "invisible_face_full_region": {"mosr": 1.000, "ssim": 0.87, "psnr": 33.26},
}
PAPER_DENOISED = {"original": 1.000, "DnCNN": 0.916, "BSRGAN": 0.898, "FFDNet": 0.905}  # Table IX, Invisible-Face


def render_report(results: dict, robust_table: pd.DataFrame, frontier: pd.DataFrame, n: int, zoo: list[str],
                  attributes: list[str], top: dict) -> str:
    """The report in Markdown: ``top`` (the headline figures), every method's row of ``results`` beside
    :data:`PAPER`, transfer per attribute over the ``zoo`` and the known backbone, the ``frontier``, the
    ``robust_table`` with retention and :data:`PAPER_DENOISED`, and stability over the number of
    ``attributes``; ``n``: the number of test chips."""
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
