"""The embedding adversary: dlib embeddings of chips, the attribute heads, save / load, and that
protection never touches it (a target only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from invisible_face.data.synthetic_photos import face_count, pick_chips
from invisible_face.models import embedding_adversary as ea
from invisible_face.models.classifiers import classifier_path
from invisible_face.models.embedding_adversary import EmbeddingAdversary, chip_embeddings
from invisible_face.models.identity import SAME_PERSON

BOX = (0.075, 0.075, 0.97, 0.97)  # params landmarks.fallback_box


@pytest.fixture(scope="module")
def chip(utkface_dir):
    """chip(k, shift) -> UTKFace chip k of three people who differ in gender or race (pick_chips),
    its content moved ``shift`` px up and left (edge pixels repeated) -> 3 x 200 x 200 uint8."""
    paths = pick_chips(utkface_dir, 3)

    def cut(k: int, shift: int = 0) -> torch.Tensor:
        with Image.open(paths[k]) as img:
            pixels = np.asarray(img.convert("RGB"))
        pixels = np.pad(pixels, ((0, shift), (0, shift), (0, 0)), mode="edge")[shift:, shift:]
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)

    return cut


def blobs(n: int, attributes: dict[str, int], seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Synthetic 128-D embeddings whose class per attribute shifts a few dimensions of its own."""
    rng = np.random.default_rng(seed)
    labels = {a: rng.integers(0, k, n) for a, k in attributes.items()}
    x = rng.normal(0.0, 0.05, (n, 128)).astype(np.float32) + 0.3  # dlib-like scale, off-centre
    for i, (a, k) in enumerate(attributes.items()):
        x[np.arange(n), 10 * i + labels[a]] += 0.3  # 6 sigma
    return x, labels


ATTRIBUTES = {"gender": 2, "age_bin": 5, "race": 5}


def test_chip_embeddings_of_real_faces(chip):
    chips = torch.stack([chip(0), chip(0, shift=3), chip(1), chip(2)])
    emb = chip_embeddings(chips, BOX)
    assert emb.shape == (4, 128) and emb.dtype == np.float32
    assert np.isfinite(emb).all() and (np.linalg.norm(emb, axis=1) > 0.5).all()
    # a float chip in [0, 1] embeds like its uint8 original, and one chip alone like in the batch
    np.testing.assert_allclose(chip_embeddings(chips[:1].float() / 255, BOX), emb[:1], atol=1e-5)
    np.testing.assert_allclose(chip_embeddings(chips[:1].numpy(), BOX), emb[:1], atol=1e-5)
    dist = lambda i, j: float(np.linalg.norm(emb[i] - emb[j]))
    assert dist(0, 1) < SAME_PERSON < min(dist(0, 2), dist(0, 3), dist(2, 3))


@pytest.mark.parametrize("hidden", [0, 16])
def test_heads_learn_and_round_trip(tmp_path, hidden):
    x, y = blobs(1200, ATTRIBUTES, seed=0)
    train, test = slice(0, 1000), slice(1000, None)
    model = EmbeddingAdversary(ATTRIBUTES, hidden=hidden)
    losses = model.fit(x[train], {a: v[train] for a, v in y.items()}, epochs=100, lr=0.02, seed=0)
    assert len(losses) == 100 and losses[-1] < 0.1 * losses[0]
    assert torch.allclose(model.mean, torch.from_numpy(x[train].mean(0)))  # standardised on the training set
    pred = model.predict_embeddings(x[test])
    assert set(pred) == set(ATTRIBUTES) and all(p.shape == (200,) for p in pred.values())
    for a in ATTRIBUTES:
        assert (pred[a].numpy() == y[a][test]).mean() > 0.8, a  # chance: 0.5 and 0.2

    again = EmbeddingAdversary(ATTRIBUTES, hidden=hidden)
    again.fit(x[train], {a: v[train] for a, v in y.items()}, epochs=100, lr=0.02, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), again.state_dict().values()))

    path = model.save(classifier_path("target_dlib_embedding", tmp_path), extra={"role": "target"})
    assert path == tmp_path / "target_dlib_embedding.safetensors"
    assert path.with_suffix(".json").exists() and not path.with_suffix(".pt").exists()
    loaded = EmbeddingAdversary.load(classifier_path("target_dlib_embedding", tmp_path))
    assert loaded.config() == model.config() and not loaded.training
    for a, p in loaded.predict_embeddings(x[test]).items():
        np.testing.assert_array_equal(p, pred[a])
    with torch.no_grad():
        for a, logits in loaded(torch.from_numpy(x)).items():
            assert torch.equal(logits, model(torch.from_numpy(x))[a])


def test_predict_images_embeds_then_predicts(tmp_path, chip):
    chips = torch.stack([chip(0), chip(1), chip(2)])
    emb = chip_embeddings(chips, BOX)
    labels = {"gender": np.array([0, 0, 1]), "age_bin": np.array([2, 3, 1]), "race": np.array([1, 0, 0])}
    model = EmbeddingAdversary(ATTRIBUTES)
    model.fit(emb, labels, epochs=100, lr=0.05)
    pred = model.predict_images(chips.float() / 255, BOX)
    for a in ATTRIBUTES:  # three points in 128-D: the heads fit them exactly
        np.testing.assert_array_equal(pred[a], labels[a])
        np.testing.assert_array_equal(pred[a], model.predict_embeddings(emb)[a])


def test_protection_never_touches_the_embedding_adversary(monkeypatch, tiny_protector, chip, photos):
    from invisible_face.models.identity import IdentityEmbedder
    from invisible_face.protect.protector import Protector

    def forbidden(*args, **kwargs):
        raise AssertionError("the protector used the embedding adversary")

    for owner, name in [(EmbeddingAdversary, "predict_images"), (EmbeddingAdversary, "predict_embeddings"),
                        (EmbeddingAdversary, "forward"), (EmbeddingAdversary, "fit"), (ea, "chip_embeddings"),
                        (ea, "_embedder"), (IdentityEmbedder, "embed"), (IdentityEmbedder, "embed_batch")]:
        monkeypatch.setattr(owner, name, forbidden)
    with pytest.raises(AssertionError):  # the spies are live
        ea.chip_embeddings(np.zeros((1, 3, 8, 8), np.uint8), BOX)

    protector = Protector.load(tiny_protector)
    face = chip(0).permute(1, 2, 0).numpy()
    out, records = protector.protect_chip(face)
    assert out.shape == face.shape and len(records) == 1
    photo = np.asarray(Image.open(photos / "two_faces.jpg").convert("RGB"))
    out, records = protector.protect(photo)
    assert out.shape == photo.shape and len(records) == face_count("two_faces.jpg")
