"""One evaluation run: every method of :mod:`invisible_face.evaluate.methods` protects the test chips, is
scored in the three tiers (:func:`invisible_face.evaluate.evaluation.score`), meets each post-processing
and, where params name it, the adaptive attacker (Table IX); then the tables of the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
import pandas as pd
import torch
from torch import nn

from invisible_face.evaluate.evaluation import (
    TestSet,
    purify,
    quantise,
    robustness,
    robustness_figure,
    robustness_table,
    run_method,
    score,
    train_purifier,
)
from invisible_face.evaluate.methods import STRENGTHS, Method, Methods, on_test_chips
from invisible_face.metrics import mosr
from invisible_face.models.embedding_adversary import EmbeddingAdversary
from invisible_face.models.networks import AttributeClassifier, predict
from invisible_face.models.perceptual import Perceptual


@dataclass
class Judges:
    """What scores a protected test set (see :func:`invisible_face.evaluate.evaluation.score`): the
    white-box ``surrogate`` and other ensemble ``members``, the black-box ``zoo``, the face embedding
    ``embed`` and the known-backbone ``adversary`` on it, and the ``perceptual`` distance."""

    surrogate: AttributeClassifier
    zoo: dict[str, AttributeClassifier]
    embed: Callable[[torch.Tensor], np.ndarray] | None
    adversary: EmbeddingAdversary | None
    perceptual: Perceptual | None
    members: dict[str, nn.Module]

    def score(self, protected: torch.Tensor, data: TestSet) -> dict[str, Any]:
        return score(protected, data, self.surrogate, self.zoo, self.embed, self.adversary, self.perceptual,
                     self.members)


@dataclass
class AdaptiveAttacker:
    """Table IX's adaptive attacker: it protects its own photos (``chips``, N x 3 x H x W in [0, 1]) with
    the same public method, trains a DnCNN purifier on the (protected -> clean) pairs (params
    ``evaluate.adaptive``: ``cfg``) and runs it before the surrogate and each zoo model. It sees no labels
    of its photos, so a baseline attacks the surrogate's own calls on them (``calls``)."""

    chips: torch.Tensor
    calls: dict[str, torch.Tensor]
    cfg: dict[str, Any]
    seed: int

    @classmethod
    def of(cls, chips: torch.Tensor, surrogate: AttributeClassifier, cfg: dict[str, Any], seed: int
           ) -> AdaptiveAttacker:
        return cls(chips, predict(surrogate, chips), cfg, seed)

    def attack(self, protect: Method, protected: torch.Tensor, data: TestSet, surrogate: AttributeClassifier,
               zoo: dict[str, AttributeClassifier]) -> dict[str, float]:
        """MOSR of ``protected`` (``protect``'s output on ``data``) after the purifier trained against
        ``protect``: ``mosr_after_dncnn`` (the surrogate) and ``mosr_<model>_after_dncnn`` (each zoo model)."""
        pairs, _ = run_method(protect, TestSet(self.chips, self.calls))
        purifier = train_purifier(pairs, self.chips, self.cfg, self.seed)
        purified = quantise(purify(purifier, protected))
        row = {"mosr_after_dncnn": mosr(predict(surrogate, purified), data.labels)}
        for name, model in zoo.items():
            row[f"mosr_{name}_after_dncnn"] = mosr(predict(model, purified), data.labels)
        return row


@dataclass
class Outcome:
    results: dict[str, dict[str, Any]]  # method -> its score row (with ms_per_image and chips)
    robust: dict[str, dict[str, float]]  # method -> MOSR after each post-processing (and the adaptive attacker)
    deltas: dict[str, torch.Tensor]  # method (not the frontier's _eps ones) -> protected - clean
    test_records: list  # the deployed protector's per-face records on the test chips
    variant_records: dict[str, list] = field(default_factory=dict)  # each variant's per-face records, on its chips


def run_all(methods: Methods, data: TestSet, variant_data: TestSet, judges: Judges,
            adaptive: AdaptiveAttacker | None = None, adaptive_methods: Collection[str] = (),
            grid: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None) -> Outcome:
    """Run and score every method: the protector's presets and variants (``invisible_face_*``) on
    ``variant_data`` (the first of the test chips; each takes seconds a face), the others and
    :data:`invisible_face.evaluate.methods.TEST_CHIP_VARIANTS` on ``data``
    (:func:`invisible_face.evaluate.methods.on_test_chips`). The deployed protector (``invisible_face``) is
    also scored on its first chips, the variants' own, as ``invisible_face_variant_chips``. ``adaptive``
    attacks the methods in ``adaptive_methods``; ``grid(name, clean, protected)`` shows each method but the
    frontier's ``_eps`` ones. Prints one line per method."""
    results, robust, deltas, test_records, variant_records = {}, {}, {}, [], {}
    for name, protect in methods.methods.items():
        on = data if on_test_chips(name) else variant_data
        print(f"evaluate: {name} ({len(on.images)} chips)", flush=True)
        protected, ms = run_method(protect, on)
        # the records of its own chips, before the adaptive attacker's chips add theirs
        if name in methods.variant_records:
            variant_records[name] = list(methods.variant_records[name])
        if name == "invisible_face":
            test_records = list(methods.records)
            # the same protector on the variants' chips: what each variant is compared with
            head = variant_data.images.shape[0]
            results["invisible_face_variant_chips"] = {**judges.score(protected[:head], variant_data),
                                                       "ms_per_image": float(np.mean([r.ms for r in
                                                                                     test_records[:head]])),
                                                       "chips": head}
        results[name] = {**judges.score(protected, on), "ms_per_image": ms, "chips": len(on.images)}
        robust[name] = robustness(protected, on, judges.surrogate)
        if adaptive is not None and name in adaptive_methods:
            print(f"evaluate: adaptive DnCNN attacker against {name}", flush=True)
            robust[name] |= adaptive.attack(protect, protected, on, judges.surrogate, judges.zoo)
        if "_eps" not in name:
            deltas[name] = protected - on.images
            if grid is not None:
                grid(name, on.images, protected)
    return Outcome(results, robust, deltas, test_records, variant_records)


def preset_crops(clean: torch.Tensor, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``clean`` (the first variant chips) at each preset, light / standard / strong, from the presets'
    ``deltas`` (:attr:`Outcome.deltas`) -> {preset: chips}, what ``region_crops`` shows."""
    n = len(clean)
    crops = {p: deltas[f"invisible_face_{p}"][:n] for p in STRENGTHS}
    return {"light": clean + crops["light"], "standard": clean + deltas["invisible_face"][:n],
            "strong": clean + crops["strong"]}


def write_tables(results: dict[str, dict], robust: dict[str, dict], zoo: list[str], out: Path
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """results.csv (every score), transfer.csv (MOSR per model), stability.csv (MOSR over the number of
    attributes), robustness.csv and robustness.png in ``out`` -> (the results table, the robustness table)."""
    table = pd.DataFrame(results).T
    table.to_csv(out / "results.csv")
    table[["mosr", *(f"mosr_{n}" for n in zoo)]].rename(columns={"mosr": "mosr_surrogate"}).to_csv(out / "transfer.csv")
    stability = table[[c for c in table.columns if c.endswith("_attributes")]]
    stability.columns = [int(c.split("_")[1]) for c in stability.columns]
    stability.T.rename_axis("attributes").to_csv(out / "stability.csv")
    robust_table = robustness_table(results, robust)
    robust_table.to_csv(out / "robustness.csv")
    robustness_figure(robust_table, out / "robustness.png")
    return table, robust_table


def method_metrics(results: dict[str, dict], robust: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """metrics.json's row per method: its scores (a copy; NaN and inf as None) and its robustness."""
    metrics = {name: {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
               for name, row in results.items()}
    for name, row in robust.items():
        metrics[name].update(row)
    return metrics


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of metrics.json as MLflow metrics: a method row's as ``<method>.<key>``, the
    top-level figures flat under their own names; None and text left out."""
    flat = {}
    for name, row in metrics.items():
        if isinstance(row, dict):
            flat |= {f"{name}.{k}": v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}
        elif isinstance(row, (int, float)):
            flat[name] = row
    return flat
