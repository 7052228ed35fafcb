"""Attribute heads on dlib's public face-recognition embedding, and the defender's surrogate built on it.

The public embedding (dlib's ResNet, the ``face_recognition`` library's encodings) is what attribute
scrapers build on. The defender runs the same network in PyTorch (:mod:`invisible_face.models.dlib_resnet`)
so that its gradient reaches the photo: a known backbone, white-box, with heads of the defender's own,
trained on its own split (the classifiers stage).

face crop (B x 3 x H x W in [0, 1]) -> 5 points (dlib, on the detached image, as a scraper does on what
it downloads) -> dlib's 150 px chip by a differentiable affine warp -> ResNet -> B x 128 -> standardised
-> a linear (or one-hidden-layer) head per attribute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from invisible_face.models.dlib_resnet import CHIP_SIZE, DlibFaceNet, load_dlib_face_net
from invisible_face.models.face_chip import chip_affine, embed_chips, five_points_batch

DIM = 128  # dlib_face_recognition_resnet_model_v1
ARCH = "dlib_resnet_heads"  # a saved FaceBackboneSurrogate


def save_safetensors(model: nn.Module, path: str | Path, config: dict[str, Any]) -> Path:
    """``<stem>.safetensors`` (the state dict) and ``<stem>.json`` (``config``): loading unpickles
    nothing. -> the .safetensors path."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(config, indent=2))
    return path


def read_saved(path: str | Path, arch: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state dict) of a model saved by :func:`save_safetensors` (any of ``<stem>``,
    ``<stem>.pt``, ``.json``, ``.safetensors``); a ValueError when its config is not of ``arch``."""
    path = Path(path)
    cfg = json.loads(path.with_suffix(".json").read_text())
    if cfg.get("arch") != arch:
        raise ValueError(f"{path}: arch {cfg.get('arch')!r} is not {arch}")
    return cfg, load_file(str(path.with_suffix(".safetensors")))


class EmbeddingHeads(nn.Module):
    """Standardisation (the training embeddings' mean and std) + one head per attribute.

    forward(emb: N x 128) -> {attribute: N x n_classes logits}
    """

    def __init__(self, attributes: dict[str, int], hidden: int = 0) -> None:
        super().__init__()
        self.attributes, self.hidden = dict(attributes), int(hidden)

        def head(n: int) -> nn.Module:
            if self.hidden <= 0:
                return nn.Linear(DIM, n)
            return nn.Sequential(nn.Linear(DIM, self.hidden), nn.ReLU(), nn.Linear(self.hidden, n))

        self.heads = nn.ModuleDict({a: head(n) for a, n in self.attributes.items()})
        self.register_buffer("mean", torch.zeros(DIM))
        self.register_buffer("std", torch.ones(DIM))

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        z = (emb.float() - self.mean) / self.std
        return {a: head(z) for a, head in self.heads.items()}

    def fit(self, embeddings: np.ndarray | torch.Tensor, labels: dict[str, Any], epochs: int = 200,
            lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0) -> list[float]:
        """Full-batch Adam on N x 128 embeddings and {attribute: N class ids}: the sum over attributes
        of the cross-entropy, ``epochs`` steps from a seeded initialisation. -> loss per step."""
        x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        y = {a: torch.as_tensor(np.asarray(labels[a]), dtype=torch.int64) for a in self.attributes}
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=1e-6))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.heads.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
        optimizer = torch.optim.Adam(self.heads.parameters(), lr=lr, weight_decay=weight_decay)
        self.train()
        losses = []
        with torch.enable_grad():
            for _ in range(epochs):
                logits = self(x)
                loss = sum(F.cross_entropy(logits[a], y[a]) for a in self.attributes)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        self.eval()
        return losses

    @torch.no_grad()
    def predict_embeddings(self, emb: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """N x 128 embeddings -> {attribute: N int64 predicted classes}."""
        logits = self.eval()(torch.as_tensor(np.asarray(emb), dtype=torch.float32))
        return {a: v.argmax(1) for a, v in logits.items()}


class FaceBackboneSurrogate(nn.Module):
    """dlib's face network in PyTorch + the defender's attribute heads: a surrogate with the
    classifiers' interface.

    forward(x: B x 3 x H x W in [0, 1], a face framed like the training chips) -> {attribute: B x C}.
    ``box_fractions`` (x0, y0, x1, y1 of the crop, params ``landmarks.fallback_box``) is where the
    5-point predictor looks for the face; the points are found again on every call, on the image as
    given (no gradient through them), the way a scraper aligns the photo it downloaded.
    """

    def __init__(self, attributes: dict[str, int], hidden: int = 0,
                 box_fractions: tuple[float, ...] | list[float] = (0.075, 0.075, 0.97, 0.97),
                 net: DlibFaceNet | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else load_dlib_face_net()
        self.heads = EmbeddingHeads(attributes, hidden)
        self.attributes, self.box_fractions = dict(attributes), tuple(float(v) for v in box_fractions)

    def chip_affines(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> B x 2 x 3: dlib's chip transform of each face (chip px -> image px)."""
        return chip_affine(five_points_batch(x.detach().clamp(0, 1), self.box_fractions)).to(x.dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> B x 128 face embeddings, differentiable in ``x``."""
        return embed_chips(self.net, x, self.chip_affines(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.embed(x))

    def config(self) -> dict[str, Any]:
        return {"arch": ARCH, "attributes": self.attributes, "hidden": self.heads.hidden,
                "box_fractions": list(self.box_fractions), "input_size": CHIP_SIZE}

    @classmethod
    def from_state(cls, cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> "FaceBackboneSurrogate":
        """Rebuild from ``config()`` and a state dict that holds the network too: the architecture is
        built from the package's file, then every tensor comes from ``state`` (a saved surrogate or an
        export carries the weights it was made with). Eval mode, frozen."""
        model = cls(cfg["attributes"], cfg.get("hidden", 0), cfg["box_fractions"])
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """``<stem>.safetensors`` (network + heads) and ``<stem>.json`` (config + ``extra``) -> the .safetensors."""
        return save_safetensors(self, path, {**self.config(), **(extra or {})})

    @classmethod
    def load(cls, path: str | Path) -> "FaceBackboneSurrogate":
        return cls.from_state(*read_saved(path, ARCH))


@torch.no_grad()
def embed_in_batches(model: FaceBackboneSurrogate, images: torch.Tensor, batch: int = 32) -> np.ndarray:
    """N x 3 x H x W chips (uint8 or [0, 1]) -> N x 128 float32 embeddings by ``model``'s network, in batches."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return torch.cat([model.embed(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()
