"""The protector: one inference object for the CLI, the evaluation and the Serve app.

photo -> detect faces -> landmarks -> per face: square crop at the face's own resolution, the
feathered face mask from the landmarks, G in one forward pass (with the surrogate's clean call and
DP, invisible_face.method.ldman.generator_protect), a check on the surrogate; only a face G leaves
unprotected goes to the refinement (invisible_face.method.refine) -> paste back -> the protected photo and
a record per face saying which path protected it (``generator`` / ``refined`` / ``not_protected``).

The export is ``<stem>.safetensors`` (generator, surrogate and optional audit-model tensors) +
``<stem>.json`` (a plain config): loading it never unpickles anything, so a tampered file cannot run code.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from invisible_face.data.images import to_tensor, to_uint8
from invisible_face.data.landmarks import Face, make_backend
from invisible_face.method.ldman import Generator, apply_perturbation, face_mask, generator_protect, psnr_to_rms
from invisible_face.method.recompression import jpeg_differentiable, survives
from invisible_face.method.refine import refine_perturbation, shape_step
from invisible_face.method.regions import rect_masks, select_region
from invisible_face.method.visibility import colour_bound, jnd_bound, perceptual_projection
from invisible_face.models.ensemble import SurrogateEnsemble, first_member_calls, surrogate_from_state
from invisible_face.models.face_backbone import FaceBackboneSurrogate
from invisible_face.models.networks import AttributeClassifier, build_classifier, classifier_from_state
from invisible_face.params import deep_merge

# 8: the surrogate may be an ensemble with dlib's face network inside; 9: visibility budget; 10: perceptual budget
FORMAT_VERSION = 10
PATHS = ("generator", "refined", "not_protected")


@dataclass
class FaceRecord:
    """What the protector did to one face (pixel coordinates in the photo)."""

    box: list[float]
    region: list[float]
    detected: bool
    score: float
    ms: float
    path: str = "not_protected"  # which step protected it: one of PATHS
    predicted_before: dict[str, int] = field(default_factory=dict)
    predicted_after: dict[str, int] = field(default_factory=dict)
    # the export's audit model (a target the protector never attacked), when it holds one
    target_before: dict[str, int] = field(default_factory=dict)
    target_after: dict[str, int] = field(default_factory=dict)


def export_protector(stem: str | Path, generator: Generator, surrogate: nn.Module, cfg: dict[str, Any],
                     target: tuple[str, AttributeClassifier] | None = None) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` from trained networks and the params.
    ``surrogate``: a classifier or a :class:`SurrogateEnsemble` (every member's tensors go in, dlib's
    face network included); ``target``: (name, model) of a zoo model shipped for audits."""
    stem = Path(stem)
    nets = {"generator": generator, "surrogate": surrogate, **({"target": target[1]} if target else {})}
    tensors = {f"{net}.{k}": v.detach().cpu().contiguous()
               for net, m in nets.items() for k, v in m.state_dict().items()}
    lcfg, pcfg = cfg["ldman"], cfg["protector"]
    config = {
        "format_version": FORMAT_VERSION,
        "generator": generator.config(),
        "surrogate": surrogate.config(),
        "attributes": {k: v["classes"] for k, v in cfg["data"]["attributes"].items()},
        "protect": {"epsilon": lcfg["epsilon"], "min_psnr": lcfg["min_psnr"], "kappa": lcfg["kappa"],
                    "cover": cfg["directions"]["cover"], "mask": {"kind": "face", **pcfg["mask"]},
                    "survive_jpeg_quality": pcfg["survive_jpeg_quality"], "visibility": pcfg["visibility"]},
        "regions": {k: cfg["regions"][k]
                    for k in ("t_max", "t_min", "k", "theta_m", "theta_s", "restarts", "score_batch")},
        "landmarks": {"backend": cfg["landmarks"]["backend"], "upsample_photo": pcfg["upsample"],
                      "upsample_chip": cfg["landmarks"]["upsample"],
                      "fallback_box": cfg["landmarks"]["fallback_box"]},
        "refine": pcfg["refine"],
        "strengths": pcfg["strengths"],
        "face_margin": pcfg["face_margin"],
        "seed": cfg["seed"],
    }
    if target:
        config["target"] = {"name": target[0], **target[1].config()}
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(config, indent=2))
    return stem


def untrained_export(stem: str | Path, cfg: dict[str, Any], face_backbone: bool = False) -> Path:
    """An export of untrained, small networks with a short refinement: it runs the CLI and serving
    paths in seconds and says nothing about protection quality. ``face_backbone``: the surrogate is an
    ensemble with dlib's face network (real weights, untrained heads) as its second member."""
    cfg = copy.deepcopy(cfg)
    cfg["protector"]["refine"]["steps"] = 2
    attributes = {k: len(v["classes"]) for k, v in cfg["data"]["attributes"].items()}
    torch.manual_seed(0)
    surrogate = build_classifier("resnet18", attributes, input_size=32).eval()
    if face_backbone:
        face = FaceBackboneSurrogate(attributes, 0, cfg["landmarks"]["fallback_box"])
        surrogate = SurrogateEnsemble({"surrogate_tiny": surrogate, "face_backbone": face}).eval()
    audit = build_classifier("vgg11_bn_small", attributes, input_size=32).eval()
    generator = Generator(cfg["ldman"]["epsilon"], sum(attributes.values()), width=8, blocks=1, work_size=32,
                          out_size=16).eval()
    return export_protector(stem, generator, surrogate, cfg, ("target_tiny", audit))


class Protector:
    """Loaded export; ``protect(image)`` for photos, ``protect_chip(image)`` for aligned crops;
    ``with_strength(name)`` for a strength preset."""

    def __init__(self, config: dict[str, Any], generator: Generator, surrogate: nn.Module,
                 target: AttributeClassifier | None = None) -> None:
        # surrogate: what the refinement attacks and the checks ask (every member must be fooled);
        # its primary member is G's surrogate (DP, G's sets, regions)
        self.config, self.generator, self.surrogate = config, generator.eval(), surrogate.eval()
        ensemble = isinstance(surrogate, SurrogateEnsemble)
        self.generator_surrogate = surrogate.primary if ensemble else surrogate
        self.face_member = next((m for m in surrogate.members.values() if isinstance(m, FaceBackboneSurrogate)),
                                None) if ensemble else None
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
            raise ValueError(f"{stem}: protector format {config.get('format_version')!r}, this version reads "
                             f"{FORMAT_VERSION}; rebuild the export with `dvc repro export`")
        tensors = load_file(str(stem.with_suffix(".safetensors")))
        g = Generator(**config["generator"])
        g.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("generator.")})

        def state(net: str) -> dict[str, torch.Tensor]:
            return {k[len(net) + 1:]: v for k, v in tensors.items() if k.startswith(f"{net}.")}

        target = classifier_from_state(config["target"], state("target")) if "target" in config else None
        return cls(config, g, surrogate_from_state(config["surrogate"], state("surrogate")), target)

    def variant(self, override: dict[str, Any], generator: Generator | None = None) -> "Protector":
        """The same networks (and landmark models) with ``override`` merged into the config, or another G."""
        other = copy.copy(self)
        other.config = deep_merge(self.config, override)
        if generator is not None:
            other.generator = generator.eval().requires_grad_(False)
        return other

    def with_strength(self, name: str | None) -> "Protector":
        """The protector at a strength preset (``light`` / ``standard`` / ``strong``; None: as loaded)."""
        if name is None:
            return self
        presets = self.config["strengths"]
        if name not in presets:
            raise ValueError(f"unknown strength {name!r}; choose one of {sorted(presets)}")
        return self.variant(presets[name] or {})

    # ------------------------------------------------------------------ one face

    def _predict(self, x: torch.Tensor, model: AttributeClassifier | None = None) -> dict[str, int]:
        with torch.no_grad():
            return {k: int(v.argmax(1)) for k, v in (model or self.surrogate)(x[None]).items()}

    def audit(self, clean: torch.Tensor, protected: torch.Tensor) -> dict[str, dict[str, int]]:
        """The audit model's calls on a crop before and after (empty without one)."""
        if self.target is None:
            return {}
        return {"target_before": self._predict(clean, self.target),
                "target_after": self._predict(protected, self.target)}

    def face_region(self, crop: torch.Tensor, points: np.ndarray) -> tuple[torch.Tensor, tuple[float, ...]]:
        """The mask the face is perturbed in (``protect.mask.kind``): ``face``, the feathered
        landmarks box; ``region``, Algorithm 1's rectangle (the paper's local region); ``crop``, the
        whole crop. crop: 3 x H x W -> (1 x 1 x H x W in [0, 1], its bounding box x0, y0, x1, y1)."""
        mcfg = self.config["protect"]["mask"]
        _, h, w = crop.shape
        if mcfg["kind"] == "crop":
            return torch.ones(1, 1, h, w), (0.0, 0.0, float(w), float(h))
        if mcfg["kind"] == "region":  # seeded per face, so the same photo always gets the same region
            rect = select_region(self.generator_surrogate, crop, points, self.config["regions"],
                                 np.random.default_rng(self.config["seed"])).rect
            return rect_masks(torch.tensor([rect]), h, w), tuple(float(v) for v in rect)
        mask = face_mask(points, h, w, mcfg["forehead"], mcfg["feather"])[None]
        ys, xs = torch.nonzero(mask[0, 0] > 0, as_tuple=True)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs) else \
            (0.0, 0.0, float(w), float(h))
        return mask, box

    def visibility(self, crop: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each pixel's bound, and its colour part's, in units of epsilon (``protect.visibility``).
        ``uniform``: 1 everywhere, colour ``chroma_share`` of it. ``perceptual``: ``jnd_scale`` JNDs
        capped at ``ceiling`` (under 1 on smooth skin, up to ceiling / epsilon in hair and at edges);
        colour ``chroma_share`` of the texture masking above ``colour_floor`` grey levels of local contrast
        (:func:`invisible_face.method.visibility.colour_bound`: none on smooth skin).
        1 x 3 x H x W, its face mask 1 x 1 x H x W -> (1 x 1 x H x W, the same or None: no colour bound)."""
        vcfg, epsilon = self.config["protect"]["visibility"], self.config["protect"]["epsilon"]
        share = vcfg["chroma_share"]
        if vcfg["budget"] == "uniform":
            budget = torch.ones_like(mask)
            return budget, None if share is None else share * budget
        if vcfg["budget"] != "perceptual":
            raise ValueError(f"protect.visibility.budget: {vcfg['budget']!r}, choose uniform or perceptual")
        scale, ceiling, window, gain = vcfg["jnd_scale"], vcfg["ceiling"], vcfg["window"], vcfg["texture_gain"]
        colour = None if share is None else \
            share * colour_bound(crop, scale, ceiling, vcfg["colour_floor"], window, gain) / epsilon
        return jnd_bound(crop, scale, ceiling, window, gain) / epsilon, colour

    def protect_face(self, crop: torch.Tensor, points: np.ndarray, labels: dict[str, int] | None = None
                     ) -> tuple[torch.Tensor, tuple[float, ...], dict, dict, str]:
        """crop: 3 x H x W in [0, 1] (the face at its own resolution); points: 68 x 2 in crop pixels;
        labels: the face's true attributes when known (an evaluation, or a user who states them).
        -> (protected crop, perturbed box in crop pixels, predictions before, after, path)."""
        pcfg = self.config["protect"]
        mask, box = self.face_region(crop, points)
        known = None
        if labels is not None:
            n = {k: len(v) for k, v in self.config["attributes"].items()}
            known = {k: F.one_hot(torch.tensor([labels[k]]), n[k]).bool() for k in n}
        budget, colour = self.visibility(crop[None], mask)
        with torch.no_grad():
            before = {k: int(v.argmax(1)) for k, v in self.generator_surrogate(crop[None]).items()}
        delta, classes = generator_protect(self.generator, self.generator_surrogate, crop[None],
                                           mask * budget.clamp(max=1), pcfg["cover"],  # G's trained bound
                                           pcfg["kappa"], psnr_to_rms(pcfg["min_psnr"]), known)
        if isinstance(self.surrogate, SurrogateEnsemble):  # the other members' sets: each must be fooled too
            classes = self.surrogate.member_classes(crop[None], classes, pcfg["cover"], known)
        # the refinement's first check is G's: a face G protects (to the push margin) takes no step
        delta, box, logits, path = self._refine(crop, delta, mask, box, classes, budget, colour)
        out = apply_perturbation(crop[None], delta)[0]
        after = {k: int(v.argmax(1)) for k, v in first_member_calls(logits).items()}
        return out, box, before, after, path

    def _refine(self, crop: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor, box: tuple[float, ...],
                classes: dict[str, torch.Tensor], budget: torch.Tensor, colour: torch.Tensor | None
                ) -> tuple[torch.Tensor, tuple[float, ...], dict, str]:
        """G's check and the fallback for a face G leaves unprotected: steps on the surrogate from G's
        perturbation inside the mask, then over the whole crop (``crop_fallback``) while it is still not
        protected, both times inside the per-pixel ``budget`` (units of epsilon), its colour part inside
        ``colour`` (the same units; None: no colour bound), and at least the target SSIM over the
        perturbed region's box
        -> (delta, perturbed box, the surrogate's logits on the result, path)."""
        rcfg, pcfg = self.config["refine"], self.config["protect"]
        _, h, w = crop.shape
        quality = pcfg["survive_jpeg_quality"]
        survive = survives(quality)
        through = None if quality is None or not rcfg["jpeg_gradient"] else (lambda x: jpeg_differentiable(x, quality))
        shape = lambda g: shape_step(g, rcfg["chroma_weight"], rcfg["smooth"])
        masks = [(mask, box)]
        if rcfg["crop_fallback"]:
            masks.append((torch.ones(1, 1, h, w), (0.0, 0.0, float(w), float(h))))
        identity = None
        if rcfg["keep_identity"]:
            if self.face_member is None:
                raise ValueError("refine.keep_identity needs a face-backbone surrogate in the export")
            with torch.no_grad():
                clean = self.face_member.embed(crop[None])
            identity = lambda x: (self.face_member.embed(x) - clean).norm(dim=1)
        for tried, (mask, box) in enumerate(masks):
            chroma_bound = None if colour is None else pcfg["epsilon"] * colour * mask
            project = perceptual_projection(mask, chroma_bound, pcfg["visibility"]["face_ssim"])
            delta, fooled, logits, taken = refine_perturbation(
                self.surrogate, crop[None], delta, mask, classes, pcfg["epsilon"], rcfg["steps"], rcfg["step_size"],
                rcfg["stop_margin"], rcfg["shrink"], survive, through, shape, rcfg["views"], rcfg["push_margin"],
                rms=psnr_to_rms(rcfg["min_psnr"]), momentum=rcfg["momentum"], identity=identity,
                identity_bound=rcfg["identity_bound"], identity_weight=rcfg["identity_weight"],
                budget=budget, project=project)
            if fooled.all():
                return delta, box, logits, "generator" if tried == 0 and int(taken[0]) == 0 else "refined"
            if rcfg["steps"] == 0:  # G alone: no second mask either
                break
        return delta, box, logits, "not_protected"

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
        out = to_tensor(image)
        records = []
        for face in self.landmarks.detect(image):
            t0 = time.perf_counter()
            left, top, right, bottom = self.face_crop_box(face, h, w)
            crop = out[:, top:bottom, left:right].clone()
            points = face.points - np.array([left, top], dtype=np.float32)
            protected, rect, before, after, path = self.protect_face(crop, points)
            out[:, top:bottom, left:right] = protected
            records.append(FaceRecord(
                box=[float(v) for v in face.box],
                region=[rect[0] + left, rect[1] + top, rect[2] + left, rect[3] + top],
                detected=True, score=face.score, ms=1000 * (time.perf_counter() - t0), path=path,
                predicted_before=before, predicted_after=after, **self.audit(crop, protected)))
        return to_uint8(out), records

    def protect_chip(self, image: np.ndarray, labels: dict[str, int] | None = None
                     ) -> tuple[np.ndarray, list[FaceRecord]]:
        """Protect an aligned face crop as one face (``--aligned``): no photo-level detection.
        ``labels``: its true attributes when known (see ``protect_face``)."""
        t0 = time.perf_counter()
        lcfg = self.config["landmarks"]
        face = self.landmarks.chip(image, tuple(lcfg["fallback_box"]), lcfg["upsample_chip"])
        crop = to_tensor(image)
        protected, rect, before, after, path = self.protect_face(crop, face.points, labels)
        record = FaceRecord(box=[float(v) for v in face.box], region=list(rect), detected=face.detected,
                            score=face.score, ms=1000 * (time.perf_counter() - t0), path=path,
                            predicted_before=before, predicted_after=after, **self.audit(crop, protected))
        return to_uint8(protected), [record]


def records_as_dicts(records: list[FaceRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]


def protection_grid(clean: torch.Tensor, protected: torch.Tensor, path: str | Path, amplify: float = 10.0) -> None:
    """PNG grid (B x 3 x H x W each): rows of clean, protected, |perturbation| x ``amplify``, then
    the central half of clean and protected at 2x zoom (nearest), where a perturbation shows."""
    import torchvision

    protected = protected.clamp(0, 1)
    perturbation = ((protected - clean).abs() * amplify).clamp(0, 1)
    h, w = clean.shape[-2:]
    centre = lambda x: F.interpolate(x[..., h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2], size=(h, w),
                                     mode="nearest")
    rows = [clean, protected, perturbation, centre(clean), centre(protected)]
    grid = torchvision.utils.make_grid(torch.cat(rows), nrow=len(clean), padding=2)
    torchvision.utils.save_image(grid, str(path))


def photo_face_crops(clean: np.ndarray, versions: dict[str, np.ndarray], records: list[FaceRecord], path: str | Path,
                     zoom: int = 2) -> None:
    """PNG of every face of a photo at ``zoom`` x (nearest, so no smoothing hides a pattern): one
    column per face, one row for the clean photo and one per protected version (``versions``: name ->
    RGB uint8 H x W x 3, the same size as ``clean``); ``records``: the faces' boxes."""
    import torchvision

    h, w = clean.shape[:2]
    rows = []
    for photo in [clean, *versions.values()]:
        tiles = []
        for r in records:
            x0, y0, x1, y1 = (int(round(v)) for v in r.box)
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            tile = to_tensor(np.ascontiguousarray(photo[y0:y1, x0:x1]))[None]
            tiles.append(F.interpolate(tile, scale_factor=zoom, mode="nearest"))
        rows += tiles
    side = max(max(t.shape[-2:]) for t in rows)
    rows = [F.pad(t, (0, side - t.shape[-1], 0, side - t.shape[-2]), value=1.0) for t in rows]
    grid = torchvision.utils.make_grid(torch.cat(rows), nrow=len(records), padding=4, pad_value=1.0)
    torchvision.utils.save_image(grid, str(path))
