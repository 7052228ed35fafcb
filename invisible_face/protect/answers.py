"""G's teacher and G's check, both through the deployed protector (docs/design.md, "The generator").

- :func:`refinement_answers`: the protector without G (``start: zero``) protects faces, and what G
  needs to learn from each is kept at G's work size: the face, G's inputs as the protector computes
  them (DP and every ensemble member's sets, the bound G may use) and the refinement's final change,
  the target G learns to reproduce (the ``answers`` stage runs it on G's training faces).
- :class:`StartCheck`: a G checked as what it is for, the refinement's start: the deployed protector
  with this G on validation faces, against the steps the refinement took there from zero.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invisible_face.data.images import to_tensor
from invisible_face.method.directions import pack_signs, set_direction
from invisible_face.method.ldman import Generator, resize, sets_vector
from invisible_face.models.classifiers import load_surrogate
from invisible_face.params import deep_merge
from invisible_face.protect.frame import to_frame
from invisible_face.protect.protector import Protector, generator_bound, protector_config


def params_protector(cfg: dict[str, Any], generator: Generator | None, surrogate: torch.nn.Module | None = None
                     ) -> Protector:
    """The protector of params ``cfg`` in memory (no export): ``surrogate`` (default: the classifiers
    stage's, from artifacts/classifiers/models) and ``generator`` (None: it starts from zero)."""
    surrogate = load_surrogate(cfg) if surrogate is None else surrogate
    protector = Protector(protector_config(cfg, generator, surrogate), generator, surrogate)
    return protector.variant({"start": "generator" if generator is not None else "zero"})


def refinement_answers(protector: Protector, images: list[np.ndarray], work_size: int, cover: float,
                       cap: float) -> dict[str, np.ndarray]:
    """Protect aligned chips (RGB uint8) from zero and keep, per face, at ``work_size`` S:
    image N x 3 x S x S uint8, bound N x 1 x S x S float16 (G's mask times the budget, in epsilon),
    target N x 3 x S x S float16 (the refinement's final change), sets N x K bool (every member's),
    bits N x bytes (DP packed one bit per value), steps N (the refinement's from zero), protected N bool."""
    _, _, frames, points = protector.chip_frames(images)
    masks, _, budget, _ = protector.face_budget(frames, points)
    direction, classes = set_direction(protector.surrogate, frames, cover, cap, size=work_size)
    results = protector.protect_chips(images)
    changed = torch.stack([to_frame(to_tensor(rgb), frames.shape[-1]) for rgb, _ in results]) - frames
    records = [recs[0] for _, recs in results]
    return {"image": (resize(frames, work_size) * 255).round().to(torch.uint8).numpy(),
            "bound": resize(generator_bound(masks, budget), work_size).half().numpy(),
            "target": resize(changed, work_size).half().numpy(),
            "sets": sets_vector(classes).bool().numpy(),
            "bits": np.stack([np.frombuffer(pack_signs(d)[0], dtype=np.uint8) for d in direction]),
            "steps": np.array([r.steps for r in records], dtype=np.int16),
            "protected": np.array([r.path != "not_protected" for r in records])}


def start_figures(steps: np.ndarray, paths: list[str], ms: float, zero_steps: np.ndarray, within: int
                  ) -> dict[str, float]:
    """A G judged as the refinement's start, on faces the refinement also protected from zero:
    G's share protected alone (no step), the share protected at all and within ``within`` steps, the mean
    steps and the share of the from-zero steps that G saves, the ms a face."""
    steps, protected = np.asarray(steps), np.array([p != "not_protected" for p in paths])
    return {"val_g_alone_share": float(np.mean([p == "generator" for p in paths])),
            "val_protected_share": float(protected.mean()),
            "val_protected_within_steps": float((protected & (steps <= within)).mean()),
            "val_steps_mean": float(steps.mean()),
            "val_steps_saved": float(1 - steps.mean() / max(float(np.mean(zero_steps)), 1e-9)),
            "val_ms_per_face": ms}


class StartCheck:
    """``check(G) -> figures``: the protector of params ``cfg`` with G as its start on the answers'
    validation faces (:func:`start_figures`). Loads its networks and faces on the first call (it is
    shipped to a Ray Train worker)."""

    def __init__(self, cfg: dict[str, Any], answers: str | Path, image_dir: str | Path, models: str | Path,
                 within: int, threads: int = 1) -> None:
        self.cfg, self.answers, self.image_dir, self.models = cfg, str(answers), str(image_dir), str(models)
        self.within, self.threads = within, threads
        self._loaded: tuple | None = None

    def _load(self) -> tuple:
        from PIL import Image

        data = np.load(self.answers)
        val = data["split"] == "val"
        files = data["files"][val]
        images = [np.asarray(Image.open(Path(self.image_dir) / f).convert("RGB")) for f in files]
        return images, data["steps"][val], load_surrogate(self.cfg, self.models)

    def loaded(self) -> tuple:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def images(self) -> list[np.ndarray]:
        """The validation faces (RGB uint8 chips)."""
        return self.loaded()[0]

    def zero_steps(self) -> np.ndarray:
        """The refinement's steps on them from zero."""
        return self.loaded()[1]

    def _run(self, protector: Protector) -> tuple[np.ndarray, list[str], float]:
        """(steps, paths, ms a face) of ``protector`` on the validation faces."""
        images = self.images()
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # the other workers wait for this one meanwhile: their CPUs are free
        try:
            t0 = time.perf_counter()
            records = [recs[0] for _, recs in protector.protect_chips(images)]
            ms = 1000 * (time.perf_counter() - t0) / len(images)
        finally:
            torch.set_num_threads(threads)
        return np.array([r.steps for r in records]), [r.path for r in records], ms

    def __call__(self, generator: Generator) -> dict[str, float]:
        # a copy: the protector freezes its G, and the one in training must stay as it is
        protector = params_protector(self.cfg, copy.deepcopy(generator).eval(), self.loaded()[2])
        return start_figures(*self._run(protector), self.zero_steps(), self.within)

    def from_zero(self) -> dict[str, float]:
        """The same figures for the refinement from zero (no G), run here: the time it is compared with."""
        figures = start_figures(*self._run(params_protector(self.cfg, None, self.loaded()[2])), self.zero_steps(),
                                self.within)
        return {f"{k}_from_zero": v for k, v in figures.items() if k not in ("val_g_alone_share", "val_steps_saved")}


def start_pays(with_g: dict[str, float], from_zero: dict[str, float], tolerance: float) -> bool:
    """G's start stays in the protector's path only while it pays: less time a face than the refinement
    from zero, at a protected share at most ``tolerance`` lower (:meth:`StartCheck.__call__` and
    :meth:`StartCheck.from_zero` figures)."""
    return (with_g["val_ms_per_face"] < from_zero["val_ms_per_face_from_zero"]
            and with_g["val_protected_share"] >= from_zero["val_protected_share_from_zero"] - tolerance)


def start_check(cfg: dict[str, Any], refine: dict[str, Any] | None = None, artifacts: str | Path = "artifacts",
                within: int | None = None) -> StartCheck:
    """The :class:`StartCheck` of params ``cfg`` (with ``refine``, overrides of ``protector.refine``, as a
    tune trial's step schedule) on the answers stage's validation faces; ``within``: default
    ``tune.objective_steps``. Absolute paths: it runs in a Ray worker, with the CPUs of all of G's
    training workers (they wait for it)."""
    art = Path(artifacts).resolve()
    cfg = deep_merge(cfg, {"protector": {"refine": refine or {}}})
    lcfg = cfg["ldman"]
    return StartCheck(cfg, art / "answers/answers.npz", Path(cfg["data"]["image_dir"]).resolve(),
                      art / "classifiers/models", within if within is not None else cfg["tune"]["objective_steps"],
                      threads=max(1, int(lcfg["num_workers"] * lcfg["cpus_per_worker"])))
