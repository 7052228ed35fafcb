import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import write_chip
from invisible_face.data.faces import FaceAttributes
from invisible_face.method.denoiser import Denoiser
from invisible_face.method.ldman import (
    Generator,
    generator_perturbation,
    generator_protect,
    psnr_to_rms,
    resize,
    sets_vector,
)
from invisible_face.method.ldman_training import GeneratorSet, chip_masks, distill_loss, train_ldman
from invisible_face.models.classifiers import surrogate_path
from invisible_face.models.margins import attribute_margins, plausible_classes, set_margin_loss
from invisible_face.models.networks import build_classifier, save_classifier
from invisible_face.protect.frame import to_frame
from invisible_face.protect.protector import FORMAT_VERSION, Protector, export_protector

ATTRS = {"gender": 2, "age_bin": 5, "race": 5}
CHIP, WORK, OUT = 64, 32, 16  # chip px, G's work size (= the surrogate's input size), G's output px


def fake_landmarks(rng: np.random.Generator) -> np.ndarray:
    """68 (x, y) points spread over the central area of a 64 px chip, as a face's would be."""
    points = np.stack([rng.uniform(18, 46, 68), rng.uniform(22, 54, 68)], 1).astype(np.float32)
    points[:4] = [[18, 22], [46, 22], [18, 54], [46, 54]]  # the extremes, so every chip has the same box
    return points


@pytest.fixture(scope="module")
def ldman_env(tmp_path_factory, params):
    """A tiny but complete set of LD-MAN inputs, laid out as the stages write them under an artifacts
    folder: chips, manifest, surrogate, RP, landmarks, and the answers stage's answers.npz (made by its own
    function, :func:`refinement_answers`, with a protector that starts from zero)."""
    import pandas as pd
    from PIL import Image

    from invisible_face.protect.answers import params_protector, refinement_answers

    root = tmp_path_factory.mktemp("ldman")
    (root / "img").mkdir()
    rows = []
    for i in range(12):
        name = f"{20 + i}_{i % 2}_{i % 5}_2017011617{i:07d}.jpg.chip.jpg"
        write_chip(root / "img" / name, seed=i, size=(CHIP, CHIP))
        rows.append({"file": name, "age": 20 + i, "gender": i % 2, "race": i % 5, "age_bin": 1,
                     "split": "surrogate_train" if i < 8 else "val"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    cfg = copy.deepcopy(params)
    cfg["classifiers"]["face_surrogate"] = None  # the ResNet-18 alone: seconds, not minutes
    cfg["data"]["image_dir"] = str(root / "img")
    torch.manual_seed(0)
    surrogate = build_classifier("resnet18", ATTRS, input_size=WORK).eval()
    save_classifier(surrogate, surrogate_path(cfg, root / "classifiers/models"))
    torch.save(Denoiser(8).state_dict(), root / "rp.pt")
    files = np.array([r["file"] for r in rows])
    rng = np.random.default_rng(0)
    points = np.stack([fake_landmarks(rng) for _ in files])
    np.savez(root / "landmarks.npz", files=files, points=points,
             box=np.tile(np.array([[12, 12, 52, 58]], np.float32), (len(files), 1)),
             score=np.ones(len(files), np.float32), detected=np.ones(len(files), bool), backend=np.array("dlib"))

    cfg["protector"]["refine"].update(steps=3)  # a short refinement: these are tests, not protection
    cfg["protector"]["start"] = "generator"  # as the export stage resolves auto when G pays
    lcfg = {**cfg["ldman"], "image_size": CHIP, "work_size": WORK, "out_size": OUT, "train_images": 8,
            "batch_size": 4, "epochs": 1, "val_every": 1, "g_width": 8, "g_blocks": 1, "d_width": 8}
    cfg["ldman"] = lcfg
    cfg["validate"]["expected_size"] = [CHIP, CHIP]
    images = [np.asarray(Image.open(root / "img" / f).convert("RGB")) for f in files]
    answers = refinement_answers(params_protector(cfg, None, surrogate), images, WORK, cfg["directions"]["cover"],
                                 lcfg["kappa"])
    (root / "answers").mkdir()
    np.savez(root / "answers/answers.npz", files=files, split=np.array(["train"] * 8 + ["val"] * 4),
             shape=np.array([3, WORK, WORK]), **answers)
    config = {**lcfg, "seed": 0, "attributes": ATTRS, "set_size": sum(ATTRS.values()),
              "surrogate": str(surrogate_path(cfg, root / "classifiers/models")), "rp": str(root / "rp.pt"),
              "rp_width": 8, "answers": str(root / "answers/answers.npz")}
    chips = FaceAttributes(root / "manifest.csv", root / "img", ["surrogate_train", "val"], list(ATTRS), size=CHIP)
    masks = chip_masks(chips.table["file"].tolist(), dict(np.load(root / "landmarks.npz")), CHIP, CHIP,
                       cfg["protector"]["mask"])
    return {"root": root, "config": config, "cfg": cfg, "surrogate": surrogate, "answers": answers,
            "images": chips.images.float() / 255, "masks": masks, "cover": cfg["directions"]["cover"],
            "kappa": lcfg["kappa"], "epsilon": lcfg["epsilon"], "min_psnr": lcfg["min_psnr"]}


def small_generator(cfg: dict, seed: int = 1, **kw) -> Generator:
    torch.manual_seed(seed)
    return Generator(cfg["ldman"]["epsilon"], sum(ATTRS.values()), width=8, blocks=1, work_size=WORK,
                     out_size=OUT, **kw).eval()


def as_chip(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------- budget


def test_budget_mask_and_psnr_cap_hold_for_a_wild_generator(ldman_env):
    cfg = {**ldman_env["config"], "cover": ldman_env["cover"]}
    images, masks = ldman_env["images"][:4].clone(), ldman_env["masks"][:4]
    images[0, :, 20:40, 20:40] = 1.0  # saturated pixels: the valid range must clip the perturbation
    g = small_generator(ldman_env["cfg"])
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(50)  # a wild generator must still be bounded
    rms = psnr_to_rms(40.0)  # a floor above what the face mask alone keeps, so the cap binds
    delta, classes = generator_protect(g, ldman_env["surrogate"], images, masks, cfg["cover"], cfg["kappa"], rms)
    assert set(classes) == set(ATTRS) and delta.shape == images.shape
    assert delta.abs().max() <= cfg["epsilon"] + 1e-6
    assert delta.abs().max() > cfg["epsilon"] / 2  # it does use the budget
    assert (delta.abs() <= cfg["epsilon"] * masks + 1e-6).all()  # |delta| <= epsilon x the feathered mask
    assert (masks == 0).any() and delta.expand_as(images)[(masks == 0).expand_as(images)].abs().max() == 0
    per_image = delta.pow(2).flatten(1).mean(1).sqrt()
    assert (per_image <= rms + 1e-6).all()
    assert (per_image[1:] > 0.9 * rms).all()  # the cap binds for a saturated G
    x_adv = images + delta
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    assert (delta[0, :, 20:40, 20:40] <= 0).all()  # nothing pushed past white


# ------------------------------------------------------------------------------------------- training


def test_answers_hold_what_g_learns_from_as_the_protector_computes_it(ldman_env):
    answers, n = ldman_env["answers"], 12
    assert answers["image"].shape == (n, 3, WORK, WORK) and answers["image"].dtype == np.uint8
    assert answers["target"].shape == (n, 3, WORK, WORK) and answers["bound"].shape == (n, 1, WORK, WORK)
    assert answers["sets"].shape == (n, sum(ATTRS.values())) and answers["sets"].any(1).all()
    assert (answers["steps"] >= 0).all() and (answers["steps"] <= 2 * 4).all()  # 3 steps a mask, 2 masks, + checks
    ceiling = ldman_env["cfg"]["protector"]["visibility"]["ceiling"] / ldman_env["epsilon"]
    assert (answers["bound"] >= 0).all() and (answers["bound"] <= ceiling + 1e-3).all()  # G's bound: the budget's
    moved = np.abs(answers["target"].astype(np.float32)).reshape(n, -1).max(1)
    assert (moved[answers["steps"] > 0] > 0).all()  # a face that took steps was changed
    data = GeneratorSet({k: np.asarray(v) for k, v in np.load(ldman_env["config"]["answers"]).items()}, "val")
    image, bound, sets, direction, target, protected = data[0]
    assert len(data) == 4 and image.max() <= 1 and set(direction.unique().tolist()) <= {-1.0, 1.0}


def test_distill_loss_counts_protected_faces_only_in_units_of_epsilon():
    target = torch.zeros(2, 3, 4, 4)
    delta = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), 9.0)])
    assert distill_loss(delta, target, torch.tensor([1.0, 0.0]), epsilon=0.5).item() == pytest.approx(1.0)
    assert distill_loss(delta, target, torch.tensor([1.0, 1.0]), epsilon=0.5).item() == pytest.approx((1 + 324) / 2)


def test_two_step_fit_with_two_ray_workers_checks_g_as_the_protectors_start(ldman_env, ray_cluster, tmp_path):
    from invisible_face.protect.answers import start_check

    check = start_check(ldman_env["cfg"], artifacts=ldman_env["root"], within=2)
    config = {**ldman_env["config"], "check": check}  # 8 faces, global batch 4 over 2 workers: 2 steps per epoch
    generator, history = train_ldman(config, name="tiny-ldman", storage_path=tmp_path,
                                     scaling={"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1,
                                              "max_failures": 0, "keep_checkpoints": 1})
    assert len(history) == 1 and len(history[0]["step_losses"]) == 2
    for key in ("distill", "adv", "robust", "per", "nat", "sem", "adv_rp", "gan", "d", "total"):
        assert np.isfinite([s[key] for s in history[0]["step_losses"]]).all(), key
    last = history[0]
    for key in ("val_g_alone_share", "val_protected_share", "val_protected_within_steps"):
        assert 0 <= last[key] <= 1, key
    assert last["val_protected_within_steps"] <= last["val_protected_share"]
    assert last["val_g_alone_share"] <= last["val_protected_within_steps"]
    assert last["val_steps_mean"] >= 0 and last["val_ms_per_face"] > 0 and last["train_minutes"] > 0
    assert isinstance(generator, Generator) and not generator.training
    assert generator.config()["work_size"] == WORK and generator.use_sets and generator.use_direction


# ----------------------------------------------------------------------------------------- conditioning


class Brightness(nn.Module):
    """A toy surrogate: attribute "a" is called 1 for images brighter than 0.5 and 0 for darker ones
    (logit difference 100 x (mean - 0.5)); "b" is always called class 2, a distractor G must ignore."""

    def forward(self, x):
        z = 50 * (x.mean((1, 2, 3)) - 0.5)
        return {"a": torch.stack([-z, z], 1), "b": torch.tensor([0.0, 0.0, 5.0]).expand(len(x), 3)}


def toy_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images of mean exactly 0.5 (their own brightness says nothing), with random sets to leave."""
    noise = torch.rand(n, 3, 16, 16, generator=gen) * 0.3 - 0.15
    x = 0.5 + noise - noise.mean((1, 2, 3), keepdim=True)
    a, b = torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 2, (n,), generator=gen)
    return x, {"a": F.one_hot(a, 2).bool(), "b": F.one_hot(b, 3).bool()}


def protected_share_after_training(use_sets: bool, steps: int = 150) -> float:
    """Train a tiny G (no DP input: only the set can say which way to go) on the capped set margin."""
    torch.manual_seed(0)
    g = Generator(8 / 255, 5, width=8, blocks=1, work_size=16, out_size=8, use_sets=use_sets, use_direction=False)
    opt = torch.optim.Adam(g.parameters(), lr=3e-3)
    model, ones, gen = Brightness(), torch.ones(1, 1, 16, 16), torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, sets = toy_batch(16, gen)
        delta = generator_perturbation(g, x, ones, sets_vector(sets), None, math.inf)
        loss = set_margin_loss(model(x + delta), sets, 2.0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    g.eval()
    x, sets = toy_batch(400, torch.Generator().manual_seed(1))  # held-out images and sets
    with torch.no_grad():
        delta = generator_perturbation(g, x, ones, sets_vector(sets), None, math.inf)
        margins = attribute_margins(model(x + delta), sets)
    return (margins < -0.5).all(1).float().mean().item()


def test_a_generator_conditioned_on_the_set_pushes_the_call_out_of_it():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast and immune to oversubscription
    try:
        conditioned = protected_share_after_training(use_sets=True)
        blind = protected_share_after_training(use_sets=False)
    finally:
        torch.set_num_threads(threads)
    assert conditioned >= 0.95
    # without the set, which way to push is a coin toss: at best about half the faces
    assert blind <= 0.65


# ------------------------------------------------------------------------------------- G-first protector


class FlippedByBrightening(nn.Module):
    """Calls class 0 of every attribute on a flat grey chip by a wide margin (its plausible sets are
    {0}); any brightening of about 1/1000 on average moves every call to class 1 by many logits."""

    def __init__(self, grey: float) -> None:
        super().__init__()
        self.grey = grey

    def forward(self, x):
        z = 5000 * (x.mean((1, 2, 3)) - self.grey) - 5
        return {k: torch.stack([-z, z, *[torch.full_like(z, -50.0)] * (n - 2)], 1) for k, n in ATTRS.items()}


def constant_generator(cfg: dict, value: float) -> Generator:
    """A G whose unit perturbation is tanh(value) everywhere."""
    g = small_generator(cfg)
    with torch.no_grad():
        g.decode[-1].weight.zero_()
        g.decode[-1].bias.fill_(value)
    return g


@pytest.fixture()
def spy_refinement(monkeypatch):
    import invisible_face.protect.protector as protector_module

    calls = []  # per call: the sets it steered away from and the steps it took (its first check is G's)
    real = protector_module.refine_perturbation

    def spy(model, images, delta, mask, classes, settings, *rest):
        result = real(model, images, delta, mask, classes, settings, *rest)
        calls.append({"classes": classes, "steps": int(result[3][0])})
        return result

    monkeypatch.setattr(protector_module, "refine_perturbation", spy)
    return calls


def test_a_face_the_generator_protects_gets_no_refinement_step(ldman_env, tmp_path, spy_refinement):
    cfg = ldman_env["cfg"]
    config = Protector.load(export_protector(tmp_path / "p", small_generator(cfg), ldman_env["surrogate"], cfg)).config
    chip = np.full((CHIP, CHIP, 3), 128, np.uint8)
    toy = FlippedByBrightening(128 / 255)

    brightening = Protector(config, constant_generator(cfg, 10.0), toy)
    out, records = brightening.protect_chip(chip)
    assert [c["steps"] for c in spy_refinement] == [0] and records[0].path == "generator"
    assert records[0].steps == 0  # the record says so too
    assert records[0].predicted_before == {k: 0 for k in ATTRS} and records[0].predicted_after == {k: 1 for k in ATTRS}
    assert 0 < np.abs(out.astype(int) - chip.astype(int)).max() <= round(255 * config["ldman"]["epsilon"]) + 1

    darkening = Protector(config, constant_generator(cfg, -10.0), toy)  # pushes the wrong way: G fails
    _, records = darkening.protect_chip(chip)
    assert spy_refinement[1]["steps"] > 0 and records[0].path in ("refined", "not_protected")
    assert records[0].steps == sum(c["steps"] for c in spy_refinement[1:])  # every pass's steps, the fallback's too


# --------------------------------------------------------------------------------------------- export


def test_export_round_trip_of_the_conditioned_generator_gives_identical_output(ldman_env, tmp_path):
    cfg = ldman_env["cfg"]
    g = small_generator(cfg)
    with torch.no_grad():  # a live condition (FiLM starts at zero): the export must carry it
        g.film.weight.normal_(0, 0.5)
        g.film.bias.normal_(0, 0.5)
    stem = export_protector(tmp_path / "protector", g, ldman_env["surrogate"], cfg)
    loaded = Protector.load(stem.with_suffix(".json"))
    assert loaded.generator.config() == g.config() and loaded.config["format_version"] == FORMAT_VERSION
    # the loaded surrogate runs channels-last like every trained model (models.classifier_from_state)
    direct = Protector(loaded.config, g, copy.deepcopy(ldman_env["surrogate"]).to(memory_format=torch.channels_last))
    face = ldman_env["images"][:2]
    sets = sets_vector({k: F.one_hot(torch.tensor([0, 1]), n).bool() for k, n in ATTRS.items()})
    direction = torch.sign(torch.randn(2, 3, WORK, WORK, generator=torch.Generator().manual_seed(0)))
    chip = as_chip(ldman_env["images"][0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded CPU reductions differ in the last bits from call to call
    try:
        with torch.no_grad():
            small = resize(face, WORK)
            g_out, loaded_out = g(small, sets, direction), loaded.generator(small, sets, direction)
            other_sets = g(small, sets.flip(0), direction)
        out_loaded, rec_loaded = loaded.protect_chip(chip)
        out_direct, rec_direct = direct.protect_chip(chip)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(g_out, loaded_out)
    assert not torch.equal(g_out, other_sets)  # the sets do condition it
    np.testing.assert_array_equal(out_loaded, out_direct)
    assert rec_loaded[0].region == rec_direct[0].region and rec_loaded[0].path == rec_direct[0].path
    # the perceptual budget's hard ceiling bounds every pixel (smooth skin far less)
    ceiling = cfg["protector"]["visibility"]["ceiling"]
    assert np.abs(out_loaded.astype(int) - chip.astype(int)).max() <= round(255 * ceiling) + 1


def test_an_old_export_gives_a_clear_version_error(ldman_env, tmp_path):
    cfg = ldman_env["cfg"]
    stem = export_protector(tmp_path / "p", small_generator(cfg), ldman_env["surrogate"], cfg)
    config = json.loads(stem.with_suffix(".json").read_text())
    config["format_version"] = FORMAT_VERSION - 1
    stem.with_suffix(".json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"format {FORMAT_VERSION - 1}.*reads {FORMAT_VERSION}"):
        Protector.load(stem)


def test_export_refuses_pickles(ldman_env, tmp_path):
    cfg = ldman_env["cfg"]
    stem = export_protector(tmp_path / "p", small_generator(cfg), ldman_env["surrogate"], cfg)
    torch.save({"evil": object()}, stem.with_suffix(".safetensors"))  # a pickle where tensors belong
    with pytest.raises(Exception):
        Protector.load(stem)


# ----------------------------------------------------------------------------------------------- tune


def test_two_trial_tune_run_nests_mlflow_runs_and_reruns_the_best_with_another_seed(
        ldman_env, ray_cluster, tmp_path, monkeypatch, params):
    import functools

    import mlflow

    from invisible_face.method.tuning import OBJECTIVE, tune_weights
    from invisible_face.protect.answers import start_check
    from invisible_face.tracking import setup_mlflow, tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = setup_mlflow("tune", root=tmp_path)
    tcfg = {**params["tune"], "num_samples": 2, "grace_period": 2}  # epochs 1: no early stop
    scaling = {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1, "max_failures": 0, "keep_checkpoints": 1}
    base = ldman_env["config"]
    make_check = functools.partial(start_check, ldman_env["cfg"], artifacts=ldman_env["root"], within=2)
    with mlflow.start_run(run_name="tune") as parent:
        tracking = {"uri": tracking_uri(), "experiment_id": experiment_id, "parent_run_id": parent.info.run_id}
        best, trials, again = tune_weights(base, tcfg, make_check, scaling, tmp_path / "ray", tracking, seed=0)
    assert len(trials) == 2 and trials[OBJECTIVE].notna().all() and trials["val_steps_mean"].notna().all()
    assert again[OBJECTIVE] is not None and 0 <= again[OBJECTIVE] <= 1  # the best, with the next seed
    weights, refine = best["ldman"]["loss_weights"], best["protector"]["refine"]
    assert set(weights) == set(base["loss_weights"]) and weights["distill"] == base["loss_weights"]["distill"]
    for name, (low, high) in tcfg["weight_bounds"].items():
        assert low <= weights[name] <= high, name
    for name, (low, high) in tcfg["refine_bounds"].items():
        assert low <= refine[name] <= high, name
    assert weights["per"] in set(trials["w_per"])  # the best is one of the trials
    children = mlflow.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and children[f"metrics.{OBJECTIVE}"].notna().all()
    mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------------------------------ the sets


def test_the_sets_are_the_given_labels_or_the_plausible_classes_with_the_exports_cover(
        ldman_env, tmp_path, monkeypatch, spy_refinement):
    import invisible_face.protect.protector as protector_module

    cfg = copy.deepcopy(ldman_env["cfg"])
    cfg["directions"]["cover"] = 0.6  # not the default, so the export's own cover is what is checked
    cfg["protector"]["refine"].update(stop_margin=100.0, steps=1, crop_fallback=False)  # G never suffices
    protector = Protector.load(export_protector(tmp_path / "p", small_generator(cfg), ldman_env["surrogate"], cfg))
    assert protector.config["directions"]["cover"] == 0.6
    to_g = []
    real = protector_module.generator_protect

    def spy(*args, **kw):
        delta, classes = real(*args, **kw)
        to_g.append(classes)
        return delta, classes

    monkeypatch.setattr(protector_module, "generator_protect", spy)
    chip = as_chip(ldman_env["images"][2])
    labels = {"gender": 1, "age_bin": 4, "race": 3}
    _, records = protector.protect_chip(chip, labels)
    assert records[0].path == "not_protected"
    for k, v in labels.items():
        one_hot = [[c == v for c in range(ATTRS[k])]]
        assert to_g[0][k].tolist() == one_hot and spy_refinement[0]["classes"][k].tolist() == one_hot, k

    to_g.clear()
    spy_refinement.clear()
    protector.protect_chip(chip)
    with torch.no_grad():  # the clean call on the working frame, as DP and the refinement see the face
        frame = to_frame(torch.from_numpy(chip).permute(2, 0, 1).float() / 255, cfg["protector"]["frame_size"])
        logits = protector.surrogate(frame[None])
    for k, v in logits.items():
        expected = plausible_classes(v, 0.6)
        assert torch.equal(to_g[0][k], expected) and torch.equal(spy_refinement[0]["classes"][k], expected), k
