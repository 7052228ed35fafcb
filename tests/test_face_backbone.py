"""The face-backbone surrogate: heads on the PyTorch copy of dlib's network, saved and exported
without pickles, with the network's weights inside."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from invisible_face.data.images import to_tensor
from invisible_face.models.face_backbone import EmbeddingHeads, FaceBackboneSurrogate

ATTRIBUTES = {"gender": 2, "age_bin": 5, "race": 5}


@pytest.fixture(scope="module")
def face_chips(utkface_dir) -> torch.Tensor:
    """Four of the dataset's 200 px aligned chips, 4 x 3 x 200 x 200 in [0, 1]."""
    files = sorted(utkface_dir.glob("*.jpg"))[:4]
    return torch.stack([to_tensor(np.array(Image.open(f).convert("RGB"))) for f in files])


def test_heads_fit_separable_embeddings():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 128)).astype(np.float32)
    labels = {"gender": (emb[:, 0] > 0).astype(int), "age_bin": np.digitize(emb[:, 1], [-1, -0.3, 0.3, 1]),
              "race": np.digitize(emb[:, 2], [-1, -0.3, 0.3, 1])}
    heads = EmbeddingHeads(ATTRIBUTES, hidden=0)
    losses = heads.fit(emb, labels, epochs=300, lr=0.05)
    assert losses[-1] < 0.5 * losses[0]
    pred = heads.predict_embeddings(emb)
    assert all((pred[a].numpy() == labels[a]).mean() > 0.9 for a in ATTRIBUTES)


def test_surrogate_saves_and_loads_with_the_network_inside(tmp_path, face_chips):
    model = FaceBackboneSurrogate(ATTRIBUTES, 0)
    torch.nn.init.normal_(model.heads.heads["gender"].weight)
    path = model.save(tmp_path / "face.pt", extra={"role": "surrogate"})
    assert path.suffix == ".safetensors" and json.loads(path.with_suffix(".json").read_text())["role"] == "surrogate"
    again = FaceBackboneSurrogate.load(path)
    x = face_chips[:2]
    with torch.no_grad():
        assert torch.allclose(model(x)["gender"], again(x)["gender"], atol=1e-5)
    assert not any(p.requires_grad for p in again.parameters())


def test_gradient_reaches_the_crop(face_chips):
    model = FaceBackboneSurrogate(ATTRIBUTES, 0)
    x = face_chips[:1].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)["gender"][0, 0], x)
    inner = grad[..., 60:140, 60:140].abs().mean()
    assert inner > 0 and inner > grad[..., :5, :5].abs().mean()


def test_export_round_trip_with_the_backbone_inside(tmp_path, params, face_chips):
    from invisible_face.data.images import to_uint8
    from invisible_face.models.ensemble import SurrogateEnsemble
    from invisible_face.protect.protector import Protector, untrained_export

    stem = untrained_export(tmp_path / "protector", params, face_backbone=True)
    config = json.loads(stem.with_suffix(".json").read_text())
    assert list(config["surrogate"]["members"]) == ["surrogate_tiny", "face_backbone"]
    protector = Protector.load(stem)
    assert isinstance(protector.surrogate, SurrogateEnsemble) and protector.face_member is not None
    from safetensors import safe_open

    with safe_open(str(stem.with_suffix(".safetensors")), "pt") as f:
        face_tensors = [k for k in f.keys() if k.startswith("surrogate.members.face_backbone.net.")]
    assert sum(np.prod(protector.face_member.net.state_dict()[k.split(".net.", 1)[1]].shape)
               for k in face_tensors) > 5_000_000  # dlib's 5.6 M parameters travel in the export
    out, records = protector.protect_chip(to_uint8(face_chips[0]))
    assert out.shape == (200, 200, 3) and records[0].path in ("generator", "refined", "not_protected")
    assert set(records[0].predicted_after) == set(ATTRIBUTES)  # the first member's calls, by attribute
