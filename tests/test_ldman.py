import copy

import numpy as np
import pytest
import torch

from conftest import write_chip
from invisible_face.directions import directional_perturbation, pack_signs
from invisible_face.ldman import Generator
from invisible_face.ldman_training import protect_chips, train_ldman
from invisible_face.models import build_classifier, save_classifier
from invisible_face.protector import Protector, export_protector
from invisible_face.denoiser import Denoiser

ATTRS = {"gender": 2, "age_bin": 5, "race": 5}


@pytest.fixture(scope="module")
def ldman_env(tmp_path_factory, params):
    """A tiny but complete set of LD-MAN inputs: chips, manifest, surrogate, RP, regions, directions."""
    import pandas as pd

    root = tmp_path_factory.mktemp("ldman")
    (root / "img").mkdir()
    rows = []
    for i in range(12):
        name = f"{20 + i}_{i % 2}_{i % 5}_2017011617{i:07d}.jpg.chip.jpg"
        write_chip(root / "img" / name, seed=i, size=(64, 64))
        rows.append({"file": name, "age": 20 + i, "gender": i % 2, "race": i % 5, "age_bin": 1,
                     "split": "surrogate_train" if i < 8 else "val"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    torch.manual_seed(0)
    surrogate = build_classifier("resnet18", ATTRS, input_size=32).eval()
    save_classifier(surrogate, root / "surrogate.pt")
    torch.save(Denoiser(8).state_dict(), root / "rp.pt")
    files = np.array([r["file"] for r in rows])
    np.savez(root / "regions.npz", files=files, rect=np.tile(np.array([[16, 20, 44, 40]], np.float32), (12, 1)))
    from invisible_face.data import FaceAttributes

    faces = FaceAttributes(root / "manifest.csv", root / "img", ["surrogate_train"], list(ATTRS), size=64)
    images = torch.stack([faces[i][0] for i in range(len(faces))])
    labels = {k: faces.labels[k] for k in ATTRS}
    eps_d = directional_perturbation(surrogate, images, labels, 3, 0.05)
    np.savez(root / "directions.npz", files=faces.table["file"].to_numpy().astype(str),
             bits=np.stack([np.frombuffer(pack_signs(d)[0], np.uint8) for d in eps_d]), shape=np.array([3, 64, 64]))
    cfg = copy.deepcopy(params)
    lcfg = {**cfg["ldman"], "window": 32, "image_size": 64, "train_images": 8, "val_images": 4, "batch_size": 4,
            "epochs": 1, "g_width": 8, "g_blocks": 1, "d_width": 8}
    config = {**lcfg, "seed": 0, "attributes": ATTRS, "manifest": str(root / "manifest.csv"),
              "image_dir": str(root / "img"), "surrogate": str(root / "surrogate.pt"), "rp": str(root / "rp.pt"),
              "rp_width": 8, "regions": str(root / "regions.npz"), "directions": str(root / "directions.npz"),
              "n_neighbours": 3, "neighbourhood_radius": 0.05}
    cfg["ldman"] = lcfg
    return {"root": root, "config": config, "cfg": cfg, "surrogate": surrogate, "images": images}


def test_budget_and_region_are_never_exceeded(ldman_env):
    cfg = ldman_env["config"]
    images = ldman_env["images"][:4]
    rects = torch.tensor([[10.0, 12.0, 30.0, 50.0]] * 4)
    g = Generator(cfg["epsilon"], width=8, blocks=1)
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(50)  # a wild generator must still be clipped
        x_adv, eps_l, _ = protect_chips(g, images, rects, torch.sign(torch.randn_like(images)), cfg)
    delta = x_adv - images
    assert delta.abs().max() <= cfg["epsilon"] + 1e-6
    assert delta.abs().max() > cfg["epsilon"] / 2
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[12:50, 10:30] = False
    assert delta[:, :, outside].abs().max() == 0
    assert ((x_adv >= 0) & (x_adv <= 1)).all()


def test_two_step_fit_with_two_ray_workers(ldman_env, ray_cluster, tmp_path):
    config = ldman_env["config"]  # 8 chips, global batch 4 over 2 workers: 2 steps per epoch
    generator, history = train_ldman(config, name="tiny-ldman", storage_path=tmp_path,
                                     scaling={"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1,
                                              "max_failures": 0, "keep_checkpoints": 1})
    assert len(history) == 1 and len(history[0]["steps"]) == 2
    for key in ("adv", "per", "nat", "sem", "adv_rp", "gan", "d", "total"):
        assert np.isfinite([s[key] for s in history[0]["steps"]]).all(), key
    assert 0 <= history[0]["val_mosr"] <= 1 and 0 < history[0]["val_ssim"] <= 1
    assert isinstance(generator, Generator) and not generator.training


def test_export_round_trip_gives_identical_output(ldman_env, tmp_path):
    cfg = ldman_env["cfg"]
    torch.manual_seed(1)
    g = Generator(cfg["ldman"]["epsilon"], width=8, blocks=1).eval()
    stem = export_protector(tmp_path / "protector", g, ldman_env["surrogate"], cfg)
    loaded = Protector.load(stem.with_suffix(".json"))
    # the loaded surrogate runs channels-last like every trained model (models.classifier_from_state)
    direct = Protector(loaded.config, g, copy.deepcopy(ldman_env["surrogate"]).to(memory_format=torch.channels_last))
    chip = (ldman_env["images"][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded CPU reductions differ in the last bits from call to call
    try:
        out_loaded, rec_loaded = loaded.protect_chip(chip)
        out_direct, rec_direct = direct.protect_chip(chip)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(out_loaded, out_direct)
    assert rec_loaded[0].region == rec_direct[0].region
    assert np.abs(out_loaded.astype(int) - chip.astype(int)).max() <= round(255 * cfg["ldman"]["epsilon"]) + 1


def test_protector_changes_only_the_reported_region_within_budget(ldman_env, tmp_path):
    cfg = copy.deepcopy(ldman_env["cfg"])
    cfg["protector"]["refine"].update(steps=5, growth=[0.0, 1.0], crop_fallback=False)
    protector = Protector.load(export_protector(tmp_path / "p", Generator(cfg["ldman"]["epsilon"], 8, 1),
                                                ldman_env["surrogate"], cfg))
    chip = (ldman_env["images"][1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out, records = protector.protect_chip(chip)
    diff = np.abs(out.astype(int) - chip.astype(int))
    assert diff.max() <= round(255 * cfg["ldman"]["epsilon"]) + 1 and diff.max() > 0
    x0, y0, x1, y1 = (int(round(v)) for v in records[0].region)
    inside = np.zeros(chip.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    assert not diff[~inside].any()


def test_refinement_steers_from_the_given_labels_or_the_plausible_classes(ldman_env, tmp_path, monkeypatch):
    import invisible_face.protector as protector_module
    from invisible_face.refine import plausible_classes

    cfg = copy.deepcopy(ldman_env["cfg"])
    cfg["protector"]["use_dp"] = True  # DP's own labels (the model's calls) must not leak into the refinement
    protector = Protector.load(export_protector(tmp_path / "p", Generator(cfg["ldman"]["epsilon"], 8, 1),
                                                ldman_env["surrogate"], cfg))
    seen = []
    real = protector_module.refine_perturbation
    monkeypatch.setattr(protector_module, "refine_perturbation",
                        lambda *args, **kw: seen.append(args[4]) or real(*args, **kw))
    chip = (ldman_env["images"][2].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    labels = {"gender": 1, "age_bin": 4, "race": 3}
    protector.protect_chip(chip, labels)
    for k, v in labels.items():
        assert seen[0][k].tolist() == [[c == v for c in range(ATTRS[k])]]
    seen.clear()
    protector.protect_chip(chip)
    with torch.no_grad():
        logits = protector.surrogate(torch.from_numpy(chip).permute(2, 0, 1)[None].float() / 255)
    for k, v in logits.items():
        assert torch.equal(seen[0][k], plausible_classes(v, cfg["protector"]["refine"]["cover"]))


def test_export_refuses_pickles(ldman_env, tmp_path):
    cfg = ldman_env["cfg"]
    stem = export_protector(tmp_path / "p", Generator(cfg["ldman"]["epsilon"], 8, 1), ldman_env["surrogate"], cfg)
    torch.save({"evil": object()}, stem.with_suffix(".safetensors"))  # a pickle where tensors belong
    with pytest.raises(Exception):
        Protector.load(stem)


def test_two_trial_tune_run_nests_mlflow_runs(ldman_env, ray_cluster, tmp_path, monkeypatch, params):
    import mlflow

    from invisible_face.tracking import setup_mlflow, tracking_uri
    from invisible_face.tuning import tune_weights

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = setup_mlflow("tune", root=tmp_path)
    tcfg = {**params["tune"], "num_samples": 2, "grace_period": 2}  # epochs 1: no early stop
    scaling = {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1, "max_failures": 0, "keep_checkpoints": 1}
    with mlflow.start_run(run_name="tune") as parent:
        tracking = {"uri": tracking_uri(), "experiment_id": experiment_id, "parent_run_id": parent.info.run_id}
        best, trials = tune_weights(ldman_env["config"], tcfg, scaling, tmp_path / "ray", tracking, seed=0)
    assert len(trials) == 2 and trials["val_hpn"].notna().all()
    assert len(best["loss_weights"]) == 5 and tcfg["beta_bounds"][0] <= best["beta"] <= tcfg["beta_bounds"][1]
    assert best["loss_weights"][0] in set(trials["w_adv"])  # the best is one of the trials
    children = mlflow.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and children["metrics.val_hpn"].notna().all()
    mlflow.set_tracking_uri(None)


def test_protector_without_refinement_regions_still_reports_its_calls(ldman_env, tmp_path):
    cfg = copy.deepcopy(ldman_env["cfg"])
    cfg["protector"]["refine"].update(growth=[], crop_fallback=False)  # steps, but no region to take them in
    protector = Protector.load(export_protector(tmp_path / "p", Generator(cfg["ldman"]["epsilon"], 8, 1),
                                                ldman_env["surrogate"], cfg))
    chip = (ldman_env["images"][3].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    chip.setflags(write=False)  # as np.asarray(PIL image) gives
    out, records = protector.protect_chip(chip)
    assert set(records[0].predicted_after) == set(ATTRS) and out.shape == chip.shape
