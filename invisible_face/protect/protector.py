"""The protector: one inference object for the CLI, the evaluation and the Serve app.

photos -> detect faces -> landmarks -> each face's square crop resampled into the working frame
(:mod:`invisible_face.protect.frame`: one size for every face, so faces from any photos form one
batch) -> per batch: the feathered face masks, the perceptual budget, G in one forward pass (with
the whole ensemble's clean call and DP, invisible_face.method.ldman.generator_protect; settings
``start: zero`` skips G), then the batched refinement (invisible_face.method.refine), which starts
from G's output, checks it first and steps only the faces G leaves unprotected, each leaving the
batch when done -> the change resampled back and added to the
photo -> the protected photo and a record per face saying which path protected it (``generator`` /
``refined`` / ``not_protected``) and how many steps it took.

The export is ``<stem>.safetensors`` (generator, surrogate and optional audit-model tensors) +
``<stem>.json``: the networks' configs and the params' own sections (``protector`` verbatim, and
what G was trained with), so a preset or a variant overrides the same keys as params.yaml. Loading it
never unpickles anything, so a tampered file cannot run code.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
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
from invisible_face.method.directions import clean_sets
from invisible_face.method.ldman import Generator, apply_perturbation, face_mask, generator_protect, psnr_to_rms
from invisible_face.method.refine import RefineSettings, refine_perturbation
from invisible_face.method.regions import rect_masks, select_region
from invisible_face.method.visibility import colour_bound, jnd_bound, perceptual_projection
from invisible_face.models.ensemble import SurrogateEnsemble, first_member_calls, surrogate_from_state
from invisible_face.models.face_backbone import FaceBackboneSurrogate
from invisible_face.models.networks import AttributeClassifier, build_classifier, classifier_from_state
from invisible_face.params import deep_merge
from invisible_face.protect.frame import box_from_frame, frame_points, from_frame, to_frame

# 8: the surrogate may be an ensemble with dlib's face network inside; 9: visibility budget; 10: perceptual budget;
# 11: the params' own sections (protector verbatim), the working frame and batches
FORMAT_VERSION = 12
PATHS = ("generator", "refined", "not_protected")
CHUNK_BATCHES = 4  # batches of faces a protect_frames call holds: the refinement keeps ``batch_size`` stepping


@dataclass
class FaceResult:
    """One face protected in the working frame (:meth:`Protector.protect_frames`)."""

    protected: torch.Tensor  # 3 x S x S
    box: tuple[float, ...]  # the perturbed region in frame pixels
    before: dict[str, int]  # G's surrogate's calls
    after: dict[str, int]
    path: str
    steps: int
    audit: dict[str, dict[str, int]]  # the audit model's calls (target_before / target_after), when the export has one


@dataclass
class FaceRecord:
    """What the protector did to one face (pixel coordinates in the photo)."""

    box: list[float]
    region: list[float]
    detected: bool
    score: float
    ms: float  # its share of its chunk's wall time (detection not included; CHUNK_BATCHES)
    path: str = "not_protected"  # which step protected it: one of PATHS
    steps: int = 0  # refinement steps it took (0: G's output was protected as it came)
    predicted_before: dict[str, int] = field(default_factory=dict)
    predicted_after: dict[str, int] = field(default_factory=dict)
    # the export's audit model (a target the protector never attacked), when it holds one
    target_before: dict[str, int] = field(default_factory=dict)
    target_after: dict[str, int] = field(default_factory=dict)


def protector_config(cfg: dict[str, Any], generator: Generator | None, surrogate: nn.Module,
                     target: tuple[str, AttributeClassifier] | None = None) -> dict[str, Any]:
    """The protector's config from the params and its networks: what the export writes beside the
    tensors and what :class:`Protector` reads (``generator`` None: a protector that starts from zero)."""
    lcfg = cfg["ldman"]
    config = {
        "format_version": FORMAT_VERSION,
        "surrogate": surrogate.config(),
        "attributes": {k: v["classes"] for k, v in cfg["data"]["attributes"].items()},
        "seed": cfg["seed"],
        # the params' sections under their own names: one schema from params.yaml to the protector
        "protector": cfg["protector"],
        "ldman": {k: lcfg[k] for k in ("epsilon", "min_psnr", "kappa")},
        "directions": {"cover": cfg["directions"]["cover"]},
        "regions": {k: cfg["regions"][k]
                    for k in ("t_max", "t_min", "k", "theta_m", "theta_s", "restarts", "score_batch")},
        "landmarks": {k: cfg["landmarks"][k] for k in ("backend", "upsample", "fallback_box")},
    }
    if generator is not None:
        config["generator"] = generator.config()
    if target:
        config["target"] = {"name": target[0], **target[1].config()}
    return config


def export_protector(stem: str | Path, generator: Generator, surrogate: nn.Module, cfg: dict[str, Any],
                     target: tuple[str, AttributeClassifier] | None = None) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` from trained networks and the params.
    ``surrogate``: a classifier or a :class:`SurrogateEnsemble` (every member's tensors go in, dlib's
    face network included); ``target``: (name, model) of a zoo model shipped for audits."""
    stem = Path(stem)
    if cfg["protector"]["start"] not in ("generator", "zero"):
        raise ValueError(f"protector.start: {cfg['protector']['start']!r}; an export starts from generator or zero "
                         "(the export stage resolves auto)")
    nets = {"generator": generator, "surrogate": surrogate, **({"target": target[1]} if target else {})}
    tensors = {f"{net}.{k}": v.detach().cpu().contiguous()
               for net, m in nets.items() for k, v in m.state_dict().items()}
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(protector_config(cfg, generator, surrogate, target), indent=2))
    return stem


def untrained_export(stem: str | Path, cfg: dict[str, Any], face_backbone: bool = False) -> Path:
    """An export of untrained, small networks with a short refinement: it runs the CLI and serving
    paths in seconds and says nothing about protection quality. ``face_backbone``: the surrogate is an
    ensemble with dlib's face network (real weights, untrained heads) as its second member."""
    cfg = copy.deepcopy(cfg)
    cfg["protector"]["refine"]["steps"] = 2
    cfg["protector"]["start"] = "generator"
    attributes = {k: len(v["classes"]) for k, v in cfg["data"]["attributes"].items()}
    torch.manual_seed(0)
    surrogate = build_classifier("resnet18", attributes, input_size=32).eval()
    if face_backbone:
        face = FaceBackboneSurrogate(attributes, 0, cfg["landmarks"]["fallback_box"])
        surrogate = SurrogateEnsemble({"surrogate_tiny": surrogate, "face_backbone": face}).eval()
    audit = build_classifier("vgg11_bn_small", attributes, input_size=32).eval()
    members = 2 if face_backbone else 1  # G is conditioned on every member's sets
    generator = Generator(cfg["ldman"]["epsilon"], members * sum(attributes.values()), width=8, blocks=1,
                          work_size=32, out_size=16).eval()
    return export_protector(stem, generator, surrogate, cfg, ("target_tiny", audit))


class Protector:
    """Loaded export; ``protect_photos(images)`` / ``protect(image)`` for photos, ``protect_chips`` /
    ``protect_chip`` for aligned crops; ``with_strength(name)`` for a strength preset. The faces of all
    the images given in one call are protected together, ``protector.batch_size`` at a time."""

    def __init__(self, config: dict[str, Any], generator: Generator | None, surrogate: nn.Module,
                 target: AttributeClassifier | None = None) -> None:
        # surrogate: what G's DP and the refinement attack and the checks ask (every member must be
        # fooled); its primary member calls the attributes a record shows and finds the regions.
        # generator None: the refinement from zero only (settings ``start: zero``)
        self.config, self.generator, self.surrogate = config, generator, surrogate.eval()
        ensemble = isinstance(surrogate, SurrogateEnsemble)
        self.generator_surrogate = surrogate.primary if ensemble else surrogate
        self.face_member = next((m for m in surrogate.members.values() if isinstance(m, FaceBackboneSurrogate)),
                                None) if ensemble else None
        self.target = target.eval().requires_grad_(False) if target is not None else None
        if generator is not None:
            generator.eval().requires_grad_(False)
        self.surrogate.requires_grad_(False)
        self.landmarks = make_backend(config["landmarks"]["backend"], config["protector"]["upsample"])

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
        g = None
        if "generator" in config:
            g = Generator(**config["generator"])
            g.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("generator.")})

        def state(net: str) -> dict[str, torch.Tensor]:
            return {k[len(net) + 1:]: v for k, v in tensors.items() if k.startswith(f"{net}.")}

        target = classifier_from_state(config["target"], state("target")) if "target" in config else None
        return cls(config, g, surrogate_from_state(config["surrogate"], state("surrogate")), target)

    @property
    def settings(self) -> dict[str, Any]:
        """The protector's settings: params ``protector`` as exported, with a preset's or a variant's override."""
        return self.config["protector"]

    def variant(self, override: dict[str, Any], generator: Generator | None = None) -> "Protector":
        """The same networks (and landmark models) with ``override`` (of params ``protector``'s keys)
        merged into the settings, or another G."""
        other = copy.copy(self)
        other.config = {**self.config, "protector": deep_merge(self.settings, override)}
        if generator is not None:
            other.generator = generator.eval().requires_grad_(False)
        if other.settings["start"] == "generator" and other.generator is None:
            raise ValueError("this protector has no G: its variants start from zero (start: zero)")
        return other

    def with_strength(self, name: str | None) -> "Protector":
        """The protector at a strength preset (``light`` / ``standard`` / ``strong``; None: as loaded)."""
        if name is None:
            return self
        presets = self.settings["strengths"]
        if name not in presets:
            raise ValueError(f"unknown strength {name!r}; choose one of {sorted(presets)}")
        return self.variant(presets[name] or {})

    def refine_settings(self) -> RefineSettings:
        """The refinement's settings at this preset or variant."""
        return RefineSettings.from_config(self.settings["refine"], self.config["ldman"]["epsilon"],
                                          self.settings["survive_jpeg_quality"])

    # ------------------------------------------------------------------ a batch of faces in the frame

    def _calls(self, x: torch.Tensor, model: nn.Module | None = None) -> list[dict[str, int]]:
        with torch.no_grad():
            calls = {k: v.argmax(1).tolist() for k, v in (model or self.generator_surrogate)(x).items()}
        return [{k: v[i] for k, v in calls.items()} for i in range(len(x))]

    def face_region(self, crop: torch.Tensor, points: np.ndarray) -> tuple[torch.Tensor, tuple[float, ...]]:
        """The mask the face is perturbed in (``mask.kind``): ``face``, the feathered
        landmarks box; ``region``, Algorithm 1's rectangle (the paper's local region); ``crop``, the
        whole crop. crop: 3 x H x W -> (1 x 1 x H x W in [0, 1], its bounding box x0, y0, x1, y1)."""
        mcfg = self.settings["mask"]
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

    def visibility(self, crops: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each pixel's bound, and its colour part's, in units of epsilon (``visibility``).
        ``uniform``: 1 everywhere, colour ``chroma_share`` of it. ``perceptual``: ``jnd_scale`` JNDs
        capped at ``ceiling`` (under 1 on smooth skin, up to ceiling / epsilon in hair and at edges);
        colour ``chroma_share`` of the texture masking above ``colour_floor`` grey levels of local contrast
        (:func:`invisible_face.method.visibility.colour_bound`: none on smooth skin).
        B x 3 x H x W, their face masks B x 1 x H x W -> (B x 1 x H x W, the same or None: no colour bound)."""
        vcfg, epsilon = self.settings["visibility"], self.config["ldman"]["epsilon"]
        share = vcfg["chroma_share"]
        if vcfg["budget"] == "uniform":
            budget = torch.ones_like(masks)
            return budget, None if share is None else share * budget
        if vcfg["budget"] != "perceptual":
            raise ValueError(f"visibility.budget: {vcfg['budget']!r}, choose uniform or perceptual")
        scale, ceiling, window, gain = vcfg["jnd_scale"], vcfg["ceiling"], vcfg["window"], vcfg["texture_gain"]
        colour = None if share is None else \
            share * colour_bound(crops, scale, ceiling, vcfg["colour_floor"], window, gain) / epsilon
        return jnd_bound(crops, scale, ceiling, window, gain) / epsilon, colour

    def face_budget(self, frames: torch.Tensor, points: list[np.ndarray]
                    ) -> tuple[torch.Tensor, list[tuple[float, ...]], torch.Tensor, torch.Tensor | None]:
        """Where and how much each face may change: its mask and box (:meth:`face_region`) and the
        per-pixel budget (:meth:`visibility`). frames: B x 3 x S x S; points: B arrays 68 x 2
        -> (masks B x 1 x S x S, boxes, budget B x 1 x S x S, colour budget or None)."""
        regions = [self.face_region(f, p) for f, p in zip(frames, points)]
        masks, boxes = torch.cat([m for m, _ in regions]), [b for _, b in regions]
        return (masks, boxes, *self.visibility(frames, masks))

    def protect_frames(self, frames: torch.Tensor, points: list[np.ndarray],
                       labels: list[dict[str, int]] | None = None) -> list[FaceResult]:
        """Protect a batch of faces in the working frame, all at once.
        frames: B x 3 x S x S in [0, 1]; points: B arrays 68 x 2 in frame pixels; labels: each face's
        true attributes when known (an evaluation, or a user who states them) -> a result per face."""
        lcfg = self.config["ldman"]
        masks, boxes, budget, colour = self.face_budget(frames, points)
        known = None
        if labels is not None:
            n = {k: len(v) for k, v in self.config["attributes"].items()}
            known = {k: F.one_hot(torch.tensor([face[k] for face in labels]), n[k]).bool() for k in n}
        before = self._calls(frames)
        cover = self.config["directions"]["cover"]
        start = self.settings["start"]
        if start == "generator":
            if self.generator is None:
                raise ValueError("protector.start: generator, but this protector has no G (use start: zero)")
            delta, classes = generator_protect(self.generator, self.surrogate, frames, generator_bound(masks, budget),
                                               cover, lcfg["kappa"], psnr_to_rms(lcfg["min_psnr"]), known)
        elif start == "zero":
            with torch.no_grad():
                classes = clean_sets(self.surrogate(frames), cover, known)
            delta = torch.zeros_like(frames)
        else:  # auto is resolved by the export (from the train stage's measurement), never at run time
            raise ValueError(f"protector.start: {start!r}; a protector starts from generator or zero")
        # the refinement's first check is G's: a face G protects (to the push margin) takes no step
        delta, boxes, logits, paths, steps = self._refine(frames, delta, masks, boxes, classes, budget, colour)
        protected = apply_perturbation(frames, delta)
        after = {k: v.argmax(1).tolist() for k, v in first_member_calls(logits).items()}
        audits = self.audit(frames, protected)
        return [FaceResult(protected[i], boxes[i], before[i], {k: v[i] for k, v in after.items()}, paths[i],
                           int(steps[i]), {k: v[i] for k, v in audits.items()}) for i in range(len(frames))]

    def audit(self, clean: torch.Tensor, protected: torch.Tensor) -> dict[str, list[dict[str, int]]]:
        """The audit model's calls on a batch before and after (empty without one)."""
        if self.target is None:
            return {}
        return {"target_before": self._calls(clean, self.target), "target_after": self._calls(protected, self.target)}

    def _refine(self, frames: torch.Tensor, delta: torch.Tensor, masks: torch.Tensor, boxes: list[tuple[float, ...]],
                classes: dict[str, torch.Tensor], budget: torch.Tensor, colour: torch.Tensor | None
                ) -> tuple[torch.Tensor, list[tuple[float, ...]], dict, list[str], torch.Tensor]:
        """G's check and the fallback for the faces G leaves unprotected: steps on the surrogate from G's
        perturbation inside each face's mask, then over the whole frame (``crop_fallback``) for the faces
        still not protected, both times inside the per-pixel ``budget`` (units of epsilon), its colour
        part inside ``colour`` (the same units; None: no colour bound), and at least the target SSIM
        over the perturbed region's box
        -> (delta, perturbed boxes, the surrogate's logits on the result, paths, steps per face)."""
        rcfg, settings = self.settings["refine"], self.refine_settings()
        n, _, h, w = frames.shape
        epsilon = self.config["ldman"]["epsilon"]
        passes = [masks]
        if rcfg["crop_fallback"]:
            passes.append(torch.ones(n, 1, h, w))
        clean = None
        if rcfg["keep_identity"]:
            if self.face_member is None:
                raise ValueError("refine.keep_identity needs a face-backbone surrogate in the export")
            with torch.no_grad():
                clean = self.face_member.embed(frames)
        delta, boxes = delta.clone(), list(boxes)
        paths, steps, logits = ["not_protected"] * n, torch.zeros(n, dtype=torch.int64), {}
        todo = torch.arange(n)  # the faces still not protected
        for tried, mask in enumerate(passes):
            mask = mask[todo]
            chroma_bound = None if colour is None else epsilon * colour[todo] * mask
            project = perceptual_projection(mask, chroma_bound, self.settings["visibility"]["face_ssim"], frames[todo])
            identity = None if clean is None else self._identity(clean[todo])
            sets = {k: c[todo] for k, c in classes.items()}
            d, fooled, out, taken = refine_perturbation(self.surrogate, frames[todo], delta[todo], mask, sets, settings,
                                                        budget[todo], project, identity, self.settings["batch_size"])
            delta[todo], steps[todo] = d, steps[todo] + taken
            for k, v in out.items():
                logits.setdefault(k, torch.zeros(n, v.shape[1]))[todo] = v
            for j, i in enumerate(todo.tolist()):
                if tried:
                    boxes[i] = (0.0, 0.0, float(w), float(h))
                if fooled[j]:
                    paths[i] = "generator" if tried == 0 and int(taken[j]) == 0 else "refined"
            todo = todo[~fooled]
            if not len(todo) or settings.steps == 0:  # G alone: no second mask either
                break
        return delta, boxes, logits, paths, steps

    def _identity(self, clean: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(x, index) -> distances of x's face embeddings from the clean ones of those faces."""
        face = self.face_member
        return lambda x, index: (face.embed(x) - clean[index]).norm(dim=1)

    def _in_batches(self, frames: torch.Tensor, points: list[np.ndarray], labels: list[dict[str, int]] | None
                    ) -> tuple[list[FaceResult], list[float]]:
        """protect_frames over ``CHUNK_BATCHES`` batches of faces at a time (the refinement steps
        ``batch_size`` of them at once and tops its batch up from the rest as faces finish; the chunk
        bounds the memory) -> (results, each face's share of its chunk's ms)."""
        size = CHUNK_BATCHES * self.settings["batch_size"]
        results, ms = [], []
        for i in range(0, len(frames), size):
            t0 = time.perf_counter()
            results += self.protect_frames(frames[i:i + size], points[i:i + size],
                                           labels[i:i + size] if labels is not None else None)
            share = 1000 * (time.perf_counter() - t0) / len(frames[i:i + size])
            ms += [share] * len(frames[i:i + size])
        return results, ms

    # ------------------------------------------------------------------ photos

    def face_crop_box(self, face: Face, height: int, width: int) -> tuple[int, int, int, int]:
        """Square box around a detected face, enlarged like the training chips, inside the photo."""
        x0, y0, x1, y1 = face.box
        side = max(x1 - x0, y1 - y0) * (1 + 2 * self.settings["face_margin"])
        side = int(min(side, height, width))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(np.clip(round(cx - side / 2), 0, width - side))
        top = int(np.clip(round(cy - side / 2), 0, height - side))
        return left, top, left + side, top + side

    def protect_photos(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, list[FaceRecord]]]:
        """Protect every face of RGB uint8 H x W x 3 photos, the faces of all of them batched together.
        A photo without a face comes back unchanged. -> (protected photo, a record per face) per photo."""
        size = self.settings["frame_size"]
        outs = [to_tensor(image) for image in images]
        jobs, frames, points = [], [], []  # (photo, face, crop box) per face
        for p, image in enumerate(images):
            h, w = image.shape[:2]
            for face in self.landmarks.detect(image):
                left, top, right, bottom = self.face_crop_box(face, h, w)
                crop = outs[p][:, top:bottom, left:right]
                jobs.append((p, face, (left, top, right, bottom)))
                frames.append(to_frame(crop, size))
                points.append(frame_points(face.points - np.array([left, top], dtype=np.float32),
                                           bottom - top, right - left, size))
        if not jobs:
            return [(image, []) for image in images]
        frames_t = torch.stack(frames)
        results, ms = self._in_batches(frames_t, points, None)
        # each change is added to the clean photo (faces whose crops overlap both keep theirs)
        records: list[list[FaceRecord]] = [[] for _ in images]
        for (p, face, (left, top, right, bottom)), frame, result, face_ms in zip(jobs, frames_t, results, ms):
            outs[p][:, top:bottom, left:right] += from_frame(result.protected - frame, bottom - top, right - left)
            region = box_from_frame(result.box, bottom - top, right - left, size, (left, top))
            records[p].append(FaceRecord(box=[float(v) for v in face.box], region=region, detected=True,
                                         score=face.score, ms=face_ms, path=result.path, steps=result.steps,
                                         predicted_before=result.before, predicted_after=result.after,
                                         **result.audit))
        return [(to_uint8(out.clamp(0, 1)), recs) for out, recs in zip(outs, records)]

    def protect(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceRecord]]:
        """Protect every face of one RGB uint8 H x W x 3 photo (:meth:`protect_photos`)."""
        return self.protect_photos([image])[0]

    def chip_frames(self, images: list[np.ndarray]
                    ) -> tuple[list[Face], list[torch.Tensor], torch.Tensor, list[np.ndarray]]:
        """Aligned face crops (RGB uint8, one face each) in the working frame: their landmarks (the
        fallback box where none is found), the crops as tensors, the frames B x 3 x S x S and each
        face's 68 points in frame pixels."""
        size, lcfg = self.settings["frame_size"], self.config["landmarks"]
        faces = [self.landmarks.chip(image, tuple(lcfg["fallback_box"]), lcfg["upsample"]) for image in images]
        crops = [to_tensor(image) for image in images]
        frames = torch.stack([to_frame(c, size) for c in crops])
        points = [frame_points(f.points, *c.shape[1:], size) for f, c in zip(faces, crops)]
        return faces, crops, frames, points

    def protect_chips(self, images: list[np.ndarray], labels: list[dict[str, int]] | None = None
                      ) -> list[tuple[np.ndarray, list[FaceRecord]]]:
        """Protect aligned face crops (``--aligned``), each one face, batched: no photo-level detection.
        ``labels``: their true attributes when known (see :meth:`protect_frames`)."""
        faces, crops, frames, points = self.chip_frames(images)
        size = frames.shape[-1]
        results, ms = self._in_batches(frames, points, labels)
        out = []
        for face, crop, frame, result, face_ms in zip(faces, crops, frames, results, ms):
            _, h, w = crop.shape
            protected = (crop + from_frame(result.protected - frame, h, w)).clamp(0, 1)
            record = FaceRecord(box=[float(v) for v in face.box], region=box_from_frame(result.box, h, w, size),
                                detected=face.detected, score=face.score, ms=face_ms, path=result.path,
                                steps=result.steps, predicted_before=result.before, predicted_after=result.after,
                                **result.audit)
            out.append((to_uint8(protected), [record]))
        return out

    def protect_chip(self, image: np.ndarray, labels: dict[str, int] | None = None
                     ) -> tuple[np.ndarray, list[FaceRecord]]:
        """Protect one aligned face crop (:meth:`protect_chips`)."""
        return self.protect_chips([image], None if labels is None else [labels])[0]


def generator_bound(masks: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Where and how much of epsilon G may change a face: its mask times the perceptual budget (under 1
    on smooth skin, up to ceiling / epsilon in hair and at edges), the refinement's own bound: an answer
    G learns from fits in it. B x 1 x H x W."""
    return masks * budget


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
