"""The figures the project is judged by, flat at the top of the evaluate stage's metrics.json: the
deployed protector and G alone in the three tiers, its timing and paths, the variants beside it, and the
baselines read at its PSNR.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from invisible_face.evaluate.budgets import budget_frontier_metrics
from invisible_face.evaluate.g_start import g_start_metrics, record_figures
from invisible_face.evaluate.methods import STRENGTHS


def headline(results: dict, robust: dict, records: list, members: list[str], paths: Sequence[str]
             ) -> dict[str, float]:
    """The figures the project is judged by, flat at the top of metrics.json: G alone and the
    deployed protector (G + refinement fallback), label-free, in the three tiers (white-box: the
    ResNet-18 ``protector_mosr`` and each other ensemble member's ``<member>_mosr``; known backbone:
    ``known_backbone_*``; black-box: ``zoo_fooled_mean``), identity kept per preset, the same with
    ``keep_identity`` on (prefix ``keep_identity_``) when that variant ran; surrogate MOSR against its
    label-free ceiling (``label_free_ceiling``: ``truth_in_cover``); the deployed protector's own
    per-face timing on the test chips (each face's share of its batch's ms) by the path that protected
    each face, and the refinement steps a face took (``records``: its FaceRecords, ``.ms``, ``.path``,
    ``.steps``; ``paths``: every path a face can take,
    :data:`invisible_face.protect.protector.PATHS`); and the share of its MOSR that survives each
    post-processing (MOSR after / before)."""
    g, p = results["invisible_face_g_only"], results["invisible_face"]
    ms, own = np.array([r.ms for r in records]), record_figures(records)
    out = {"g_only_mosr": g["mosr"], "g_only_ssim": g["ssim"], "g_only_psnr": g["psnr"],
           "protector_mosr": p["mosr"], "protector_ssim": p["ssim"], "protector_psnr": p["psnr"],
           "protector_h_pn": p["h_pn"],
           # the share of faces a label-free protector can fool at all (truth_in_cover), and MOSR against it
           "label_free_ceiling": p["truth_in_cover"], "protector_mosr_of_ceiling": p["mosr"] / p["truth_in_cover"]
           if p["truth_in_cover"] else None,
           "protect_ms_median": own["ms_median"], "protect_ms_p90": float(np.percentile(ms, 90)),
           "refine_steps_mean": own["steps_mean"]}
    for path in paths:
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
    out |= {k: p[k] for k in ("face_ssim", "face_psnr", "texture_ratio", "skin_delta_e") if k in p}
    # the variants a change is judged against, beside it: <variant>_<figure> (from_zero: on the test chips)
    for variant in ("variant_chips", "keep_identity", "uniform", "slow", "one_by_one", "full_steps", "from_zero",
                    "g_steps_1", "g_steps_2", "g_steps_4"):
        row = results.get(f"invisible_face_{variant}")
        if row is not None:
            figures = {k: row[k] for k in ("mosr", "ssim", "psnr", "face_ssim", "face_psnr", "texture_ratio",
                                           "skin_delta_e", "ms_per_image") if k in row}
            figures |= {f"{m}_mosr": row[f"mosr_{m}"] for m in members}
            out |= {f"{variant}_{k}": v for k, v in {**figures, **tiers(row)}.items()}
    if "one_by_one_mosr" in out and "variant_chips_mosr" in out:  # batches and bfloat16 against the path before
        out |= {f"batched_minus_one_by_one_{k}": out[f"variant_chips_{k}"] - out[f"one_by_one_{k}"]
                for k in ("known_backbone_fooled_mean", "mosr", "zoo_fooled_mean") if f"one_by_one_{k}" in out}
    if "full_steps_mosr" in out and "variant_chips_mosr" in out:  # this cheaper steps against the steps before
        out |= {f"deployed_minus_full_steps_{k}": out[f"variant_chips_{k}"] - out[f"full_steps_{k}"]
                for k in ("known_backbone_fooled_mean", "mosr", "zoo_fooled_mean", "ms_per_image")
                if f"full_steps_{k}" in out}
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


def top_figures(results: dict, robust: dict, records: list, members: list[str], paths: Sequence[str],
                budget_table: pd.DataFrame, frontier: pd.DataFrame, g_start: pd.DataFrame | None = None
                ) -> dict[str, Any]:
    """The top of metrics.json: :func:`headline`, the budget frontier's figures
    (:func:`invisible_face.evaluate.budgets.budget_frontier_metrics`), G's start against zero and the step
    caps when ``g_start`` (:func:`invisible_face.evaluate.g_start.g_start_table`) is given
    (:func:`invisible_face.evaluate.g_start.g_start_metrics`), and each baseline family's known-backbone
    fooled share at the deployed protector's PSNR (the equal-PSNR comparison:
    ``<family>_known_backbone_fooled_at_protector_psnr``)."""
    top = headline(results, robust, records, members, paths) | budget_frontier_metrics(budget_table)
    if g_start is not None:
        top |= g_start_metrics(g_start)
    for family, value in at_equal_psnr(frontier, top["protector_psnr"], "known_backbone_fooled_mean").items():
        top[f"{family}_known_backbone_fooled_at_protector_psnr"] = value
    return top
