"""The methods the evaluate stage scores, each a ``protect(images, labels) -> images`` on test chips: the
deployed protector, its strength presets, its variants (inference-time switches on the same export), the
perceptual and uniform budgets at several face-SSIM targets (the budget frontier), and the baseline attacks
at the common budget and at smaller ones (the privacy-PSNR frontier).

The protector is passed in, never imported: anything with ``settings``, ``protect_chips(images, labels)``,
``variant(override)`` and ``with_strength(name)`` (:class:`invisible_face.protect.protector.Protector`)
serves; ``protect`` and ``evaluate`` are independent floors of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from invisible_face.data.faces import FaceAttributes
from invisible_face.data.images import to_tensor, to_uint8
from invisible_face.evaluate.attacks import baseline_attack
from invisible_face.evaluate.budgets import budget_override, point_name
from invisible_face.models.classifiers import attribute_sizes

# a method: (N x 3 x H x W chips in [0, 1], their labels {attribute: N}) -> the protected chips
Method = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]

# Protector variants (inference-time switches on the same export): what each part contributes; params
# ``evaluate.variants`` picks the ones a run scores. name -> (overrides of params ``protector``'s keys,
# whether it is told the true labels)
VARIANTS = {
    # the face embedding's move bounded: the face stays the same person to face_recognition
    "invisible_face_keep_identity": ({"refine": {"keep_identity": True}}, False),
    "invisible_face_known_labels": ({}, True),
    # G alone: its one pass, no refinement fallback (the paper's inference), no survive-JPEG check
    "invisible_face_g_only": ({"start": "generator", "refine": {"steps": 0}}, False),
    # G's start then at most k steps on the face mask (no crop fallback): what each step adds to G
    **{f"invisible_face_g_steps_{k}": ({"start": "generator", "refine": {"steps": k, "crop_fallback": False}}, False)
       for k in (1, 2, 4)},
    # G's start and the full refinement, whatever the deployed start (run on the test chips)
    "invisible_face_g_start": ({"start": "generator"}, False),
    # the refinement from zero, no G: what G's start saves (run on the test chips, see TEST_CHIP_VARIANTS)
    "invisible_face_from_zero": ({"start": "zero"}, False),
    # today's budget before the perceptual one: L-inf epsilon everywhere, no colour bound, no SSIM target
    "invisible_face_uniform": ({"visibility": {"budget": "uniform", "face_ssim": None, "chroma_share": None}},
                               False),
    # the path before batches: one face at a time, every pass in float32 (the batched path's reach is held to it)
    "invisible_face_one_by_one": ({"batch_size": 1, "refine": {"bf16_min_batch": None}}, False),
    # the steps before the throughput work: every pass in float32, the gradient through the differentiable JPEG
    # too, and the push to the last step (what jpeg_gradient off, patience and bfloat16 cost in reach)
    "invisible_face_full_steps": ({"refine": {"jpeg_gradient": True, "patience": None, "bf16_min_batch": None}},
                                  False),
    # the slow step schedule this one replaced: 20 small steps, no momentum, the gradient through a JPEG too
    "invisible_face_slow": ({"refine": {"steps": 20, "step_size": 0.3, "momentum": 0.0, "jpeg_gradient": True}},
                            False),
    # steps that stop at the stop margin (no push further for transfer, as before the push margin)
    "invisible_face_no_push": ({"refine": {"push_margin": None}}, False),
    # the stop rule without the survive-JPEG check (the deployed one before it)
    "invisible_face_no_survive": ({"survive_jpeg_quality": None}, False),
    # Algorithm 1's rectangle as the mask instead of the feathered face mask
    "invisible_face_region": ({"mask": {"kind": "region"}}, False),
    # Table V: the whole crop
    "invisible_face_full_region": ({"mask": {"kind": "crop"}}, False),
}
# the variants compared with the deployed protector's own headline figures (its steps and ms per face are
# measured on the test chips), so they run on the same test chips, not on the variants' first ones
TEST_CHIP_VARIANTS = frozenset({"invisible_face_from_zero", "invisible_face_g_start"})
STRENGTHS = ("light", "strong")  # the presets beside the deployed default (standard): invisible_face_<preset>


def protector_method(protector: Any, known_labels: bool = False, records: list | None = None) -> Method:
    """The protector as an evaluation method; ``known_labels``: it is told each face's true attributes;
    ``records``: a list that collects each face's record (path taken, ms)."""
    def protect(images: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        told = [{k: int(v[i]) for k, v in labels.items()} for i in range(len(images))] if known_labels else None
        results = protector.protect_chips([to_uint8(img) for img in images], told)  # batched as in the CLI
        if records is not None:
            records.extend(r for _, recs in results for r in recs)
        return torch.stack([to_tensor(rgb) for rgb, _ in results])
    return protect


def chips_of(cfg: dict, split: str, n: int) -> FaceAttributes:
    """A seeded sample of ``n`` chips of ``split`` at the protector's resolution, with their labels."""
    return FaceAttributes("artifacts/validate/manifest.csv", cfg["data"]["image_dir"], [split],
                          list(attribute_sizes(cfg)), size=cfg["ldman"]["image_size"], limit=n, seed=cfg["seed"])


@dataclass
class Methods:
    """Every method of one evaluation, in the order they run, and what the tables need to read them."""

    methods: dict[str, Method]
    records: list = field(default_factory=list)  # the deployed protector's per-face records, filled as it runs
    points: dict[tuple[str, float], str] = field(default_factory=dict)  # (budget, face-SSIM target) -> method
    budgets: dict[str, float] = field(default_factory=dict)  # each baseline method -> its L-inf budget
    variant_records: dict[str, list] = field(default_factory=dict)  # each variant's per-face records, as it runs


def on_test_chips(name: str) -> bool:
    """Whether method ``name`` runs on the test chips: the deployed protector, the baselines and
    :data:`TEST_CHIP_VARIANTS`; the other presets and variants (``invisible_face_*``) run on the first of
    them (each takes seconds a face)."""
    return not name.startswith("invisible_face_") or name in TEST_CHIP_VARIANTS


def protector_methods(protector: Any, variants: list[str], budget_frontier: dict[str, list]) -> Methods:
    """The deployed protector (``invisible_face``), its presets (``invisible_face_<preset>``), the
    ``variants`` (names of :data:`VARIANTS`) and the budget frontier's points (params
    ``evaluate.budget_frontier``: each budget at each target). A point that is a preset's own settings
    (the deployed config counts as ``invisible_face_variant_chips``, its run on the variants' chips) is
    that preset's run, no method of its own; any other is ``point_name(budget, target)``. The deployed
    protector and each variant collect their per-face records (``records``, ``variant_records``)."""
    records: list = []
    methods = {"invisible_face": protector_method(protector, records=records)}
    for preset in STRENGTHS:
        methods[f"invisible_face_{preset}"] = protector_method(protector.with_strength(preset))
    variant_records: dict[str, list] = {}
    for name in variants:
        override, known_labels = VARIANTS[name]
        variant_records[name] = []
        methods[name] = protector_method(protector.variant(override), known_labels, variant_records[name])
    presets = {"invisible_face_variant_chips": protector.settings} | {
        f"invisible_face_{p}": protector.with_strength(p).settings for p in STRENGTHS}
    points = {}
    for budget in budget_frontier["budgets"]:
        for target in budget_frontier["targets"]:
            point = protector.variant(budget_override(budget, target))
            same = [name for name, settings in presets.items() if settings == point.settings]
            points[(budget, target)] = same[0] if same else point_name(budget, target)
            if not same:
                methods[points[(budget, target)]] = protector_method(point)
    return Methods(methods, records, points, variant_records=variant_records)


def baseline_budgets(baselines: list[str], frontier: dict[str, list], epsilon: float) -> dict[str, float]:
    """Each baseline at the common budget ``epsilon``, and the frontier's (params ``evaluate.frontier``)
    at each smaller or larger one: ``<name>_eps<k>`` at k/255 -> {method name: budget}."""
    budgets = {name: epsilon for name in baselines}
    return budgets | {f"{name}_eps{k}": k / 255 for name in frontier["baselines"] for k in frontier["epsilons"]
                      if abs(k / 255 - epsilon) > 1e-6}


def evaluation_methods(protector: Any, surrogate: nn.Module, cfg: dict[str, Any]) -> Methods:
    """Every method of params ``cfg``'s evaluation: :func:`protector_methods`, then the baselines of
    :func:`baseline_budgets`, each attacking ``surrogate`` (the white-box ResNet-18) with the true labels."""
    ecfg = cfg["evaluate"]
    found = protector_methods(protector, ecfg["variants"], ecfg["budget_frontier"])
    found.budgets = baseline_budgets(ecfg["baselines"], ecfg["frontier"], cfg["ldman"]["epsilon"])
    for name, budget in found.budgets.items():
        found.methods[name] = lambda x, y, n=name.split("_eps")[0], e=budget: baseline_attack(
            n, surrogate, x, y, e, ecfg["baseline_steps"], cfg["ldman"]["kappa"])
    return found


def frontier_families(budgets: dict[str, float], baselines: list[str]) -> dict[str, list[str]]:
    """The privacy-PSNR frontier's curves: the protector's presets, and each of ``baselines`` at its
    budgets, weakest first -> {family: [method names]}."""
    families = {"invisible_face": ["invisible_face_light", "invisible_face", "invisible_face_strong"]}
    return families | {b: sorted((n for n in budgets if n.split("_eps")[0] == b), key=budgets.get)
                       for b in baselines}
