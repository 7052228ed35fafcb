"""The protector: one inference object for the CLI, the evaluation and the Serve app.

photo -> detect faces -> landmarks -> per face: square crop at the face's own resolution,
region (Algorithm 1), eps_d (Algorithm 2, when ``use_dp``), G over a window around the region,
refinement on the surrogate (invisible_face.refine), paste back -> protected photo + a record per face.

The export is ``<stem>.safetensors`` (generator, surrogate and optional audit-model tensors) +
``<stem>.json`` (a plain config): loading it never unpickles anything, so a tampered file cannot run code.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from invisible_face.directions import directional_perturbation
from invisible_face.ldman import Generator, apply_perturbation, local_perturbation, region_window
from invisible_face.landmarks import Face, make_backend
from invisible_face.models import AttributeClassifier, build_classifier, classifier_from_state
from invisible_face.refine import grow_rect, plausible_classes, refine_perturbation
from invisible_face.regions import clean_log_probs, rect_masks, select_region

FORMAT_VERSION = 4  # 2: refinement settings; 3: chip upsampling; 4: crop fallback, shrink


@dataclass
class FaceRecord:
    """What the protector did to one face (pixel coordinates in the photo)."""

    box: list[float]
    region: list[float]
    detected: bool
    score: float
    ms: float
    predicted_before: dict[str, int] = field(default_factory=dict)
    predicted_after: dict[str, int] = field(default_factory=dict)
    # the export's audit model (a target the protector never attacked), when it holds one
    target_before: dict[str, int] = field(default_factory=dict)
    target_after: dict[str, int] = field(default_factory=dict)


def export_protector(stem: str | Path, generator: Generator, surrogate: AttributeClassifier, cfg: dict[str, Any],
                     target: tuple[str, AttributeClassifier] | None = None) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` from trained networks and the params.
    ``target``: (name, model) of a zoo model shipped for audits (predictions before and after)."""
    stem = Path(stem)
    nets = {"generator": generator, "surrogate": surrogate, **({"target": target[1]} if target else {})}
    tensors = {f"{net}.{k}": v.detach().cpu().contiguous() for net, m in nets.items() for k, v in m.state_dict().items()}
    lcfg = cfg["ldman"]
    config = {
        "format_version": FORMAT_VERSION,
        "generator": {"epsilon": lcfg["epsilon"], "width": lcfg["g_width"], "blocks": lcfg["g_blocks"]},
        "surrogate": surrogate.config(),
        "attributes": {k: v["classes"] for k, v in cfg["data"]["attributes"].items()},
        "protect": {**{k: lcfg[k] for k in ("epsilon", "beta", "window", "image_size")},
                    "use_dp": cfg["protector"]["use_dp"]},
        "directions": {k: cfg["directions"][k] for k in ("n_neighbours", "neighbourhood_radius")},
        "regions": {k: cfg["regions"][k] for k in ("t_max", "t_min", "k", "theta_m", "theta_s", "restarts", "score_batch")},
        "landmarks": {"backend": cfg["landmarks"]["backend"], "upsample_photo": cfg["protector"]["upsample"],
                      "upsample_chip": cfg["landmarks"]["upsample"],
                      "fallback_box": cfg["landmarks"]["fallback_box"]},
        "refine": cfg["protector"]["refine"],
        "face_margin": cfg["protector"]["face_margin"],
        "seed": cfg["seed"],
    }
    if target:
        config["target"] = {"name": target[0], **target[1].config()}
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(config, indent=2))
    return stem


def untrained_export(stem: str | Path, cfg: dict[str, Any]) -> Path:
    """An export of untrained, small networks with a short region search and refinement: it runs
    the CLI and serving paths in seconds and says nothing about protection quality."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg["ldman"].update(g_width=8, g_blocks=1)
    cfg["regions"].update(t_max=1.0, t_min=0.5, restarts=1)
    cfg["protector"]["refine"]["steps"] = 2
    attributes = {k: len(v["classes"]) for k, v in cfg["data"]["attributes"].items()}
    torch.manual_seed(0)
    surrogate = build_classifier("resnet18", attributes, input_size=32).eval()
    audit = build_classifier("vgg11_bn_small", attributes, input_size=32).eval()
    generator = Generator(cfg["ldman"]["epsilon"], width=8, blocks=1).eval()
    return export_protector(stem, generator, surrogate, cfg, ("target_tiny", audit))


class Protector:
    """Loaded export; ``protect(image)`` for photos, ``protect_chip(image)`` for aligned crops."""

    def __init__(self, config: dict[str, Any], generator: Generator, surrogate: AttributeClassifier,
                 target: AttributeClassifier | None = None) -> None:
        self.config, self.generator, self.surrogate = config, generator.eval(), surrogate.eval()
        self.target = target.eval().requires_grad_(False) if target is not None else None
        self.generator.requires_grad_(False)
        self.surrogate.requires_grad_(False)
        self.landmarks = make_backend(config["landmarks"]["backend"], config["landmarks"]["upsample_photo"])

    @classmethod
    def load(cls, stem: str | Path) -> "Protector":
        stem = Path(stem)
        if stem.suffix in (".json", ".safetensors"):
            stem = stem.with_suffix("")
        config = json.loads(stem.with_suffix(".json").read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{stem}: unsupported protector format {config.get('format_version')!r}")
        tensors = load_file(str(stem.with_suffix(".safetensors")))
        g = Generator(**config["generator"])
        g.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("generator.")})
        def classifier(net: str) -> AttributeClassifier:
            return classifier_from_state(config[net], {k[len(net) + 1:]: v for k, v in tensors.items()
                                                       if k.startswith(f"{net}.")})

        return cls(config, g, classifier("surrogate"), classifier("target") if "target" in config else None)

    # ------------------------------------------------------------------ one face

    def _predict(self, x: torch.Tensor, model: AttributeClassifier | None = None) -> dict[str, int]:
        with torch.no_grad():
            return {k: int(v.argmax(1)) for k, v in (model or self.surrogate)(x[None]).items()}

    def audit(self, clean: torch.Tensor, protected: torch.Tensor) -> dict[str, dict[str, int]]:
        """The audit model's calls on a crop before and after (empty without one)."""
        if self.target is None:
            return {}
        return {"target_before": self._predict(clean, self.target), "target_after": self._predict(protected, self.target)}

    def protect_face(self, crop: torch.Tensor, points: np.ndarray, labels: dict[str, int] | None = None
                     ) -> tuple[torch.Tensor, tuple[float, ...], dict, dict]:
        """crop: 3 x H x W in [0, 1] (the face at its own resolution); points: 68 x 2 in crop pixels;
        labels: the face's true attributes when known (an evaluation, or a user who states them).
        -> (protected crop, region rect in crop pixels, predictions before, after)."""
        pcfg = self.config["protect"]
        _, h, w = crop.shape
        clean_log_p = clean_log_probs(self.surrogate, crop)  # shared by the region search and refinement
        if pcfg.get("full_region"):  # ablation (paper Table V): the whole crop is the region
            rect_xy = (0.0, 0.0, float(w), float(h))
        else:  # seeded per face, so the same photo always gets the same region
            rect_xy = select_region(self.surrogate, crop, points, self.config["regions"],
                                    np.random.default_rng(self.config["seed"]), clean=clean_log_p).rect
        rect = torch.tensor([rect_xy])
        before = {k: int(v.argmax(1)) for k, v in clean_log_p.items()}
        eps_d = None
        if pcfg["use_dp"]:
            calls = {k: torch.tensor([v]) for k, v in before.items()}  # the model's own calls stand in for labels
            eps_d = directional_perturbation(self.surrogate, crop[None], calls, self.config["directions"]["n_neighbours"],
                                             self.config["directions"]["neighbourhood_radius"],
                                             torch.Generator().manual_seed(self.config["seed"]))
        # G's window: the training window scaled to this crop's size, never smaller than the region
        scale = min(h, w) / pcfg["image_size"]
        size = int(min(h, w, max(round(pcfg["window"] * scale), rect_xy[2] - rect_xy[0] + 1,
                                  rect_xy[3] - rect_xy[1] + 1)))
        left, top = region_window(rect, size, h, w)[0].tolist()
        win = crop[None, :, top:top + size, left:left + size]
        mask = rect_masks(rect, h, w)[:, :, top:top + size, left:left + size]
        d = eps_d[:, :, top:top + size, left:left + size] if eps_d is not None else None
        with torch.no_grad():
            eps_l = local_perturbation(self.generator, win, mask, d, pcfg["beta"], pcfg["epsilon"])
        delta = torch.zeros_like(crop)[None]
        delta[:, :, top:top + size, left:left + size] = eps_l
        delta, rect, logits = self._refine(crop, delta, rect, points, clean_log_p, labels)
        protected = apply_perturbation(crop[None], delta)[0]
        rect_xy = tuple(float(v) for v in rect[0])
        after = {k: int(v.argmax(1)) for k, v in logits.items()} if logits else self._predict(protected)
        return protected, rect_xy, before, after

    def _refine(self, crop: torch.Tensor, delta: torch.Tensor, rect: torch.Tensor, points: np.ndarray,
                clean_log_p: dict[str, torch.Tensor], labels: dict[str, int] | None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """Refinement of G's perturbation (invisible_face.refine): steps inside the region, which
        grows toward the landmarks' box, and then to the whole crop, while the face is not yet
        protected -> (delta, final rect, the surrogate's logits on the result; None without steps)."""
        rcfg = self.config["refine"]
        if rcfg["steps"] == 0:
            return delta, rect, None
        _, h, w = crop.shape
        lo, hi = points.min(0), points.max(0) + 1
        landmarks_box = torch.tensor([[max(lo[0], 0), max(lo[1], 0), min(hi[0], w), min(hi[1], h)]], dtype=rect.dtype)
        # without true labels: steer away from every class the model finds plausible
        classes = {k: plausible_classes(v, rcfg["cover"]) if labels is None
                   else F.one_hot(torch.tensor([labels[k]]), v.shape[1]).bool()
                   for k, v in clean_log_p.items()}
        regions = [grow_rect(rect, landmarks_box, t) for t in rcfg["growth"]]
        if rcfg["crop_fallback"]:
            regions.append(torch.tensor([[0.0, 0.0, float(w), float(h)]], dtype=rect.dtype))
        logits = None
        for rect in regions:
            delta, fooled, logits = refine_perturbation(
                self.surrogate, crop[None], delta, rect_masks(rect, h, w), classes, self.config["protect"]["epsilon"],
                rcfg["steps"], rcfg["step_size"], rcfg["stop_margin"], rcfg["shrink"])
            if fooled.all():
                break
        return delta, rect, logits

    # ------------------------------------------------------------------ photos

    def face_crop_box(self, face: Face, height: int, width: int) -> tuple[int, int, int, int]:
        """Square box around a detected face, enlarged like the training chips, inside the photo."""
        x0, y0, x1, y1 = face.box
        side = max(x1 - x0, y1 - y0) * (1 + 2 * self.config["face_margin"])
        side = int(min(side, height, width))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(np.clip(round(cx - side / 2), 0, width - side))
        top = int(np.clip(round(cy - side / 2), 0, height - side))
        return left, top, left + side, top + side

    def protect(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceRecord]]:
        """Protect every face of an RGB uint8 H x W x 3 photo. No face: the photo comes back unchanged."""
        h, w = image.shape[:2]
        out = torch.tensor(image).permute(2, 0, 1).float() / 255  # a copy: read-only arrays are fine
        records = []
        for face in self.landmarks.detect(image):
            t0 = time.perf_counter()
            left, top, right, bottom = self.face_crop_box(face, h, w)
            crop = out[:, top:bottom, left:right].clone()
            points = face.points - np.array([left, top], dtype=np.float32)
            protected, rect, before, after = self.protect_face(crop, points)
            out[:, top:bottom, left:right] = protected
            records.append(FaceRecord(
                box=[float(v) for v in face.box],
                region=[rect[0] + left, rect[1] + top, rect[2] + left, rect[3] + top],
                detected=True, score=face.score, ms=1000 * (time.perf_counter() - t0),
                predicted_before=before, predicted_after=after, **self.audit(crop, protected)))
        return to_uint8(out), records

    def protect_chip(self, image: np.ndarray, labels: dict[str, int] | None = None) -> tuple[np.ndarray, list[FaceRecord]]:
        """Protect an aligned face crop as one face (``--aligned``): no photo-level detection.
        ``labels``: its true attributes when known (see ``protect_face``)."""
        t0 = time.perf_counter()
        lcfg = self.config["landmarks"]
        face = self.landmarks.chip(image, tuple(lcfg["fallback_box"]), lcfg["upsample_chip"])
        crop = torch.tensor(image).permute(2, 0, 1).float() / 255
        protected, rect, before, after = self.protect_face(crop, face.points, labels)
        record = FaceRecord(box=[float(v) for v in face.box], region=list(rect), detected=face.detected,
                            score=face.score, ms=1000 * (time.perf_counter() - t0),
                            predicted_before=before, predicted_after=after, **self.audit(crop, protected))
        return to_uint8(protected), [record]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """3 x H x W in [0, 1] -> H x W x 3 uint8 (rounded, so +-eps survives quantisation)."""
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def records_as_dicts(records: list[FaceRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]


def protection_grid(clean: torch.Tensor, protected: torch.Tensor, path: str | Path, amplify: float = 10.0) -> None:
    """PNG grid: rows of clean, protected, and |perturbation| x ``amplify`` (B x 3 x H x W each)."""
    import torchvision

    perturbation = ((protected - clean).abs() * amplify).clamp(0, 1)
    grid = torchvision.utils.make_grid(torch.cat([clean, protected, perturbation]), nrow=len(clean), padding=2)
    torchvision.utils.save_image(grid, str(path))
