import numpy as np
import pytest
import torch

from invisible_face.evaluate.evaluation import DnCNN, purify, train_purifier


def test_purifier_learns_to_undo_a_perturbation():
    torch.manual_seed(0)
    clean = torch.rand(16, 3, 32, 32) * 0.8 + 0.1
    protected = clean + torch.tensor([0.05, -0.05, 0.05]).view(1, 3, 1, 1)  # a colour cast to learn away
    cfg = {"depth": 3, "width": 16, "epochs": 60, "crop": 32, "batch_size": 8, "lr": 0.005}
    purifier = train_purifier(protected, clean, cfg, seed=0)
    before = (protected - clean).abs().mean()
    after = (purify(purifier, protected) - clean).abs().mean()
    assert after < 0.5 * before


def test_dncnn_keeps_shape_and_range():
    out = DnCNN(depth=4, width=8).eval()(torch.rand(2, 3, 20, 28))
    assert out.shape == (2, 3, 20, 28) and out.min() >= 0 and out.max() <= 1


def test_sample_rows_is_a_seeded_nested_sample_not_the_first_rows():
    import pandas as pd

    from invisible_face.data.faces import sample_rows

    # names sort by age, as UTKFace's do: the first rows in file order are the youngest
    table = pd.DataFrame({"file": [f"{age:03d}_0_0.jpg" for age in range(100)], "split": ["test"] * 100})
    a, b = sample_rows(table, ["test"], 20, seed=0), sample_rows(table, ["test"], 20, seed=0)
    assert a.equals(b) and len(a) == 20 and a["file"].is_monotonic_increasing
    assert a["file"].iloc[-1] > "050"  # reaches past the first half, unlike head(20)
    assert not a.equals(sample_rows(table, ["test"], 20, seed=1))
    assert set(sample_rows(table, ["test"], 8, seed=0)["file"]) < set(a["file"])  # a smaller sample is inside
    assert len(sample_rows(table, ["test"], None, seed=0)) == 100 and sample_rows(table, ["val"], 5, 0).empty


def test_truth_in_cover_counts_faces_whose_truth_the_label_free_protector_steers_from():
    from invisible_face.evaluate.evaluation import truth_in_cover

    class Fixed(torch.nn.Module):  # calls class 0 of "a" for bright images, class 1 for dark ones
        def forward(self, x):
            z = 20 * (x.mean((1, 2, 3)) - 0.5)
            return {"a": torch.stack([z, -z], 1)}

    x = torch.cat([torch.full((3, 3, 4, 4), 0.9), torch.full((1, 3, 4, 4), 0.1)])
    calls = torch.tensor([0, 0, 0, 1])
    clean = Fixed()(x)
    assert truth_in_cover(clean, {"a": calls}, cover=0.9) == 1.0
    # a binary attribute's other class is never in the set: a wrong call cannot be steered onto a wrong class
    assert truth_in_cover(clean, {"a": 1 - calls}, cover=0.99) == 0.0
    assert truth_in_cover(clean, {"a": torch.tensor([0, 0, 1, 1])}, cover=0.9) == 0.75


def test_score_embeds_the_clean_faces_once_and_scores_identity_and_the_embedding_adversary():
    from invisible_face.evaluate.evaluation import TestSet, score
    from invisible_face.models.embedding_adversary import EmbeddingAdversary
    from invisible_face.models.networks import build_classifier

    embedded = []

    def embed(x):  # a stand-in for the face embedding: the first 128 pixel values
        embedded.append(len(x))
        return x.flatten(1)[:, :128].numpy()

    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    images[:, 0, 0, 0] = torch.tensor([0.1, 0.9, 0.2, 0.8])  # the value the adversary reads, far from its threshold
    labels = {"a": (images.flatten(1)[:, 0] > 0.5).long()}
    adversary = EmbeddingAdversary({"a": 2})  # reads its call off the first value, as the labels do
    train = torch.rand(4096, 128)
    adversary.fit(train.numpy(), {"a": (train[:, 0] > 0.5).long()}, epochs=300, lr=0.05)
    data = TestSet(images, labels)
    model = build_classifier("resnet18", {"a": 2}, input_size=32).eval()
    same = score(images.clone(), data, model, {}, embed, adversary)
    assert data.clean_embeddings is not None and embedded == [4, 4]
    assert same["identity_distance"] == 0.0 and same["identity_kept"] == 1.0
    assert same["known_backbone_fooled_a"] == 0.0 and same["known_backbone_mosr"] == 0.0
    flipped = images.clone()
    flipped[:, 0, 0, 0] = 1 - flipped[:, 0, 0, 0]  # every call of the adversary turns
    other = score(flipped, data, model, {}, embed, adversary)
    assert embedded == [4, 4, 4]  # the clean chips were embedded once
    assert other["identity_distance"] > 0 and other["known_backbone_fooled_a"] == 1.0
    assert other["known_backbone_mosr"] == 1.0 and other["perceptual"] == "surrogate_features"


def test_score_reports_transfer_per_attribute_against_each_zoo_models_clean_calls():
    from invisible_face.evaluate.evaluation import TestSet, score
    from invisible_face.models.networks import build_classifier

    class Brightness(torch.nn.Module):  # calls "a" = 1 for bright chips; "b" always 0
        def forward(self, x):
            z = 20 * (x.mean((1, 2, 3)) - 0.5)
            return {"a": torch.stack([-z, z], 1), "b": torch.stack([torch.ones_like(z), -torch.ones_like(z)], 1)}

    images = torch.cat([torch.full((3, 3, 8, 8), 0.8), torch.full((1, 3, 8, 8), 0.2)])
    data = TestSet(images, {"a": torch.tensor([1, 1, 1, 0]), "b": torch.tensor([0, 0, 1, 0])})
    darker = images.clone()
    darker[:2] = 0.2  # two of the three bright chips now read dark: "a" goes wrong on them
    surrogate = build_classifier("resnet18", {"a": 2, "b": 2}, input_size=32).eval()
    row = score(darker, data, surrogate, {"zoo": Brightness()}, None)
    assert row["fooled_zoo_a"] == 0.5 and row["fooled_transfer_a"] == 0.5  # 2 of the 4 right calls
    assert row["fooled_zoo_b"] == 0.0  # "b" never moves (its one wrong clean call does not count)
    assert row["mosr_zoo"] == 0.0 and set(data.clean_logits) == {"surrogate", "zoo"}


def _headline_inputs() -> tuple[dict, dict, list]:
    """Score rows of the deployed protector and some variants, its robustness, and its per-face records."""
    from invisible_face.protect.protector import FaceRecord

    record = lambda path, ms: FaceRecord(box=[], region=[], detected=True, score=1.0, ms=ms, path=path)
    records = [record("generator", 40.0), record("generator", 50.0), record("refined", 200.0),
               record("not_protected", 500.0)]
    row = {"mosr": 0.8, "ssim": 0.95, "psnr": 35.0, "h_pn": 0.8, "truth_in_cover": 0.75, "mosr_face": 0.7,
           "known_backbone_mosr": 0.6, "known_backbone_fooled_gender": 0.9, "zoo_fooled_mean": 0.1,
           "identity_kept": 0.8, "fooled_face_gender": 0.5, "texture_ratio": 0.9, "face_ssim": 0.93}
    keep = {**row, "known_backbone_mosr": 0.5, "identity_kept": 0.95}
    results = {"invisible_face": row, "invisible_face_g_only": {**row, "mosr": 0.4},
               "invisible_face_keep_identity": keep, "invisible_face_light": {**row, "identity_kept": 1.0},
               "invisible_face_variant_chips": {**row, "mosr": 0.7},
               "invisible_face_slow": {**row, "mosr_face": 0.75, "zoo_fooled_mean": 0.12, "ms_per_image": 900.0}}
    return results, {"invisible_face": {"mosr_after_jpeg75": 0.6, "mosr_after_resize_half": 0.8}}, records


def test_headline_counts_paths_and_retention_from_the_deployed_records():
    from invisible_face.evaluate.headline import headline
    from invisible_face.protect.protector import PATHS

    results, robust, records = _headline_inputs()
    top = headline(results, robust, records, ["face"], PATHS)
    assert top["g_only_protected_share"] == 0.5 and top["path_share_refined"] == 0.25
    assert top["protect_ms_median"] == 125.0 and top["protect_ms_median_generator"] == 45.0
    assert top["g_only_mosr"] == 0.4 and top["protector_mosr"] == 0.8
    assert abs(top["jpeg75_retention"] - 0.75) < 1e-9 and top["half_scale_retention"] == 1.0
    assert "jpeg50_retention" not in top  # not measured, not reported
    # the tiers: white-box members, the known backbone, the zoo; identity per preset; the keep_identity run
    assert top["face_mosr"] == 0.7 and top["known_backbone_fooled_gender"] == 0.9 and top["zoo_fooled_mean"] == 0.1
    assert top["identity_kept_light"] == 1.0 and "identity_kept_strong" not in top
    assert top["keep_identity_identity_kept"] == 0.95 and top["keep_identity_known_backbone_mosr"] == 0.5
    assert abs(top["protector_mosr_of_ceiling"] - 0.8 / 0.75) < 1e-9 and top["label_free_ceiling"] == 0.75
    # naturalness on the face, and the variants a change is judged against, on the same chips
    assert top["texture_ratio"] == 0.9 and top["face_ssim"] == 0.93
    assert top["variant_chips_mosr"] == 0.7 and top["slow_face_mosr"] == 0.75 and top["slow_zoo_fooled_mean"] == 0.12
    assert top["slow_ms_per_image"] == 900.0 and not any(k.startswith("visibility_") for k in top)


def test_face_naturalness_scores_the_face_box_and_where_the_change_went():
    from invisible_face.evaluate.evaluation import face_naturalness

    torch.manual_seed(0)
    clean = torch.full((2, 3, 32, 32), 0.5)
    clean[..., 8:24, 16:24] = torch.rand(2, 3, 16, 8)  # texture in the right half of the face
    masks = torch.zeros(2, 1, 32, 32)
    masks[..., 8:24, 8:24] = 1.0
    protected = clean.clone()
    protected[..., 8:24, 8:16] += 0.03  # the change on the smooth half of the face only
    protected[..., :4, :4] += 0.3      # and a large one outside the face, which the face figures ignore
    row = face_naturalness(clean, protected, masks)
    assert row["texture_ratio"] > 1.5
    assert abs(row["face_psnr"] - 10 * np.log10(1 / (0.03 ** 2 / 2))) < 0.05  # half the box changed by 0.03
    assert 0 < row["face_ssim"] < 1


def test_photo_face_crops_show_every_face_at_twice_its_size(tmp_path):
    from PIL import Image

    from invisible_face.protect.protector import FaceRecord, photo_face_crops

    clean = np.zeros((100, 120, 3), np.uint8)
    records = [FaceRecord(box=[10, 10, 50, 50], region=[], detected=True, score=1.0, ms=0.0),
               FaceRecord(box=[60, 20, 90, 50], region=[], detected=True, score=1.0, ms=0.0)]
    photo_face_crops(clean, {"protected": clean + 10}, records, tmp_path / "crops.png")
    with Image.open(tmp_path / "crops.png") as img:
        # two columns of 80 px tiles (the larger face at 2x), two rows, 4 px padding around each
        assert img.size == (2 * 80 + 3 * 4, 2 * 80 + 3 * 4)


def test_frontier_has_one_curve_per_method_and_robustness_one_row_per_method(tmp_path):
    from invisible_face.evaluate.evaluation import frontier_figure, frontier_table, robustness_figure, robustness_table

    row = lambda psnr, fooled: {"psnr": psnr, "ssim": 0.9, "mosr": 0.9, "zoo_fooled_mean": fooled,
                                "known_backbone_mosr": fooled / 2, "known_backbone_fooled_mean": fooled}
    results = {"ours_light": row(38, 0.1), "ours": row(35, 0.2), "pgd_eps4": row(36, 0.05), "pgd": row(30, 0.15)}
    table = frontier_table(results, {"ours": ["ours_light", "ours", "missing"], "pgd": ["pgd_eps4", "pgd"]})
    assert list(table["method"]) == ["ours_light", "ours", "pgd_eps4", "pgd"]  # methods not run are left out
    drawn = frontier_figure(table, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    assert drawn["known_backbone_mosr"] == ["ours", "pgd"] and drawn["zoo_fooled_mean"] == ["ours", "pgd"]

    robust = {"ours": {"mosr_after_jpeg75": 0.5, "mosr_after_dncnn": 0.7}, "pgd": {"mosr_after_jpeg75": 0.8}}
    table = robustness_table(results, robust)
    assert table.loc["ours", "before"] == 0.9 and table.loc["ours", "jpeg75"] == 0.5
    assert np.isnan(table.loc["pgd", "dncnn"])  # pgd never faced the adaptive attacker
    robustness_figure(table, tmp_path / "robustness.png")
    assert (tmp_path / "robustness.png").stat().st_size > 1000


def test_baselines_are_read_at_the_protectors_psnr_without_extrapolation():
    import pandas as pd

    from invisible_face.evaluate.headline import at_equal_psnr

    frontier = pd.DataFrame({"family": ["invisible_face", "pgd", "pgd", "narrow", "narrow"],
                             "psnr": [34.0, 37.0, 31.0, 40.0, 38.0], "fooled": [0.3, 0.1, 0.4, 0.05, 0.06]})
    at = at_equal_psnr(frontier, 34.0, "fooled")
    assert at == {"pgd": pytest.approx(0.25), "narrow": None}  # halfway between 31 and 37 dB; 34 dB is outside 38-40


# ------------------------------------------------------------------ the evaluate stage's experiment design


class _FakeProtector:
    """What the evaluation calls of a Protector: ``settings`` (params ``protector``), ``variant``,
    ``with_strength``, ``protect_chips``."""

    def __init__(self, settings: dict, calls: list | None = None, batches: list | None = None):
        self.settings = settings
        self.calls = [] if calls is None else calls  # each chip's labels (None: not told)
        self.batches = [] if batches is None else batches  # the chips of each protect_chips call

    def variant(self, override: dict) -> "_FakeProtector":
        from invisible_face.params import deep_merge

        return _FakeProtector(deep_merge(self.settings, override), self.calls, self.batches)

    def with_strength(self, name: str) -> "_FakeProtector":
        return self.variant(self.settings["strengths"][name] or {})

    def protect_chips(self, images: list[np.ndarray], labels: list[dict] | None = None):
        assert labels is None or len(labels) == len(images)
        self.batches.append(len(images))
        out = []
        for i, image in enumerate(images):
            self.calls.append(None if labels is None else labels[i])
            out.append((255 - image, [f"record {len(self.calls)}"]))
        return out


def _protector_settings() -> dict:
    return {"visibility": {"budget": "perceptual", "face_ssim": 0.95, "chroma_share": 0.5},
            "refine": {"steps": 14},
            "strengths": {"light": {"visibility": {"face_ssim": 0.97}}, "standard": {},
                          "strong": {"visibility": {"face_ssim": 0.93}}}}


def test_protector_method_protects_each_chip_and_is_told_the_labels_only_when_asked():
    from invisible_face.evaluate.methods import protector_method

    protector, records = _FakeProtector({}), []
    images = torch.rand(2, 3, 4, 4)
    labels = {"a": torch.tensor([1, 0]), "b": torch.tensor([2, 1])}
    out = protector_method(protector, records=records)(images, labels)
    assert out.shape == images.shape and torch.allclose(out, 1 - images, atol=1 / 255)  # the fake inverts
    assert protector.calls == [None, None] and records == ["record 1", "record 2"]
    assert protector.batches == [2]  # the chips go in one batched call
    protector_method(protector, known_labels=True)(images, labels)
    assert protector.calls[2:] == [{"a": 1, "b": 2}, {"a": 0, "b": 1}]


def test_a_budget_frontier_point_with_a_presets_config_reuses_that_presets_run():
    from invisible_face.evaluate.methods import protector_methods

    frontier = {"budgets": ["uniform", "perceptual"], "targets": [0.93, 0.95, 0.97]}
    found = protector_methods(_FakeProtector(_protector_settings()), ["invisible_face_g_only"], frontier)
    # the perceptual budget at 0.95 is the deployed config (its run on the variants' chips), 0.93 and 0.97 the presets
    assert found.points == {("uniform", 0.93): "invisible_face_uniform_ssim93",
                            ("uniform", 0.95): "invisible_face_uniform_ssim95",
                            ("uniform", 0.97): "invisible_face_uniform_ssim97",
                            ("perceptual", 0.93): "invisible_face_strong",
                            ("perceptual", 0.95): "invisible_face_variant_chips",
                            ("perceptual", 0.97): "invisible_face_light"}
    assert list(found.methods) == ["invisible_face", "invisible_face_light", "invisible_face_strong",
                                   "invisible_face_g_only", "invisible_face_uniform_ssim93",
                                   "invisible_face_uniform_ssim95", "invisible_face_uniform_ssim97"]
    found.methods["invisible_face"](torch.rand(1, 3, 4, 4), {})
    found.methods["invisible_face_light"](torch.rand(1, 3, 4, 4), {})
    assert found.records == ["record 1"]  # the deployed protector's records only


def test_the_baselines_run_at_the_common_budget_and_the_frontiers_and_sort_into_families():
    from invisible_face.evaluate.methods import baseline_budgets, frontier_families

    budgets = baseline_budgets(["fgsm", "pgd"], {"baselines": ["pgd"], "epsilons": [8, 2, 4]}, 8 / 255)
    assert budgets == {"fgsm": 8 / 255, "pgd": 8 / 255, "pgd_eps2": 2 / 255, "pgd_eps4": 4 / 255}  # eps8 is pgd
    families = frontier_families(budgets, ["pgd"])
    assert families == {"invisible_face": ["invisible_face_light", "invisible_face", "invisible_face_strong"],
                        "pgd": ["pgd_eps2", "pgd_eps4", "pgd"]}


def test_evaluation_methods_put_the_baselines_after_the_protectors_each_at_its_budget(monkeypatch):
    from invisible_face.evaluate import methods as methods_module

    attacks = []
    monkeypatch.setattr(methods_module, "baseline_attack",
                        lambda name, model, x, y, e, steps, kappa: attacks.append((name, e, steps, kappa)) or x)
    cfg = {"ldman": {"epsilon": 8 / 255, "kappa": 0.5},
           "evaluate": {"variants": [], "budget_frontier": {"budgets": [], "targets": []}, "baselines": ["pgd"],
                        "frontier": {"baselines": ["pgd"], "epsilons": [4]}, "baseline_steps": 3}}
    found = methods_module.evaluation_methods(_FakeProtector(_protector_settings()), None, cfg)
    assert list(found.methods)[-2:] == ["pgd", "pgd_eps4"] and found.budgets == {"pgd": 8 / 255, "pgd_eps4": 4 / 255}
    for name in ("pgd", "pgd_eps4"):
        found.methods[name](torch.rand(1, 3, 4, 4), {})
    assert attacks == [("pgd", 8 / 255, 3, 0.5), ("pgd", 4 / 255, 3, 0.5)]


def test_chips_of_reads_a_seeded_sample_of_a_split_from_the_validated_manifest(tmp_path, monkeypatch):
    import pandas as pd
    from PIL import Image

    from invisible_face.evaluate.methods import chips_of

    monkeypatch.chdir(tmp_path)
    (tmp_path / "artifacts/validate").mkdir(parents=True)
    (tmp_path / "images").mkdir()
    files = [f"{i:02d}.jpg" for i in range(6)]
    for f in files:
        Image.new("RGB", (20, 20), (10, 20, 30)).save(tmp_path / "images" / f)
    pd.DataFrame({"file": files, "split": ["test"] * 4 + ["val"] * 2, "gender": [0, 1, 0, 1, 0, 1]}).to_csv(
        tmp_path / "artifacts/validate/manifest.csv", index=False)
    cfg = {"data": {"image_dir": "images", "attributes": {"gender": {"classes": ["m", "f"]}}},
           "ldman": {"image_size": 8}, "seed": 0}
    faces = chips_of(cfg, "test", 3)
    assert faces.images.shape == (3, 3, 8, 8) and set(faces.table["file"]) < set(files[:4])
    assert list(faces.labels) == ["gender"] and faces.table["file"].equals(chips_of(cfg, "test", 3).table["file"])


class _Brightness(torch.nn.Module):
    """Calls "a" = 1 for bright chips."""

    def forward(self, x):
        z = 20 * (x.mean((1, 2, 3)) - 0.5)
        return {"a": torch.stack([-z, z], 1)}


def test_run_all_scores_every_method_on_its_chips_and_attacks_the_named_ones(capsys):
    from types import SimpleNamespace

    from invisible_face.evaluate.evaluation import TestSet
    from invisible_face.evaluate.experiment import AdaptiveAttacker, run_all
    from invisible_face.evaluate.methods import Methods

    torch.manual_seed(0)
    data = TestSet(torch.rand(6, 3, 16, 16), {"a": torch.tensor([0, 1, 0, 1, 0, 1])})
    variant_data = data.head(2)
    records: list = []

    def deployed(x, y):  # a record per face, each with its ms (its share of its batch's time)
        start = len(records)
        records.extend([SimpleNamespace(ms=100.0 + start + i) for i in range(len(x))])
        return x * 0.9

    methods = Methods({"invisible_face": deployed, "invisible_face_light": lambda x, y: x * 0.95,
                       "pgd": lambda x, y: x * 0.8, "pgd_eps2": lambda x, y: x * 0.99}, records)
    judges = SimpleNamespace(surrogate=_Brightness(), zoo={"zoo": _Brightness()},
                             score=lambda protected, on: {"mosr": float(protected.mean())})
    cfg = {"depth": 3, "width": 4, "lr": 0.01, "epochs": 1, "crop": 8, "batch_size": 4}
    adaptive = AdaptiveAttacker.of(torch.rand(4, 3, 16, 16), judges.surrogate, cfg, seed=0)
    grids = []
    run = run_all(methods, data, variant_data, judges, adaptive, ["pgd", "invisible_face"],
                  grid=lambda name, clean, x: grids.append((name, len(clean))))
    assert list(run.results) == ["invisible_face_variant_chips", "invisible_face", "invisible_face_light", "pgd",
                                 "pgd_eps2"]
    chips = {name: row["chips"] for name, row in run.results.items()}
    assert chips == {"invisible_face_variant_chips": 2, "invisible_face": 6, "invisible_face_light": 2, "pgd": 6,
                     "pgd_eps2": 6}
    # the deployed protector's time on the variants' chips: its records' ms on those first chips
    assert run.results["invisible_face_variant_chips"]["ms_per_image"] == 100.5
    assert [r.ms for r in run.test_records] == [100.0 + i for i in range(6)]
    assert len(records) == 10  # the attacker's own chips came after
    assert {"mosr_after_jpeg75", "mosr_after_dncnn", "mosr_zoo_after_dncnn"} <= set(run.robust["pgd"])
    assert "mosr_after_dncnn" not in run.robust["invisible_face_light"] and "mosr_after_dncnn" in run.robust[
        "invisible_face"]
    assert grids == [("invisible_face", 6), ("invisible_face_light", 2), ("pgd", 6)] and "pgd_eps2" not in run.deltas
    assert torch.allclose(run.deltas["pgd"], -0.2 * data.images, atol=1 / 255)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["evaluate: invisible_face (6 chips)", "evaluate: adaptive DnCNN attacker against invisible_face",
                     "evaluate: invisible_face_light (2 chips)", "evaluate: pgd (6 chips)",
                     "evaluate: adaptive DnCNN attacker against pgd", "evaluate: pgd_eps2 (6 chips)"]


def test_preset_crops_add_each_presets_change_to_the_first_chips():
    from invisible_face.evaluate.experiment import preset_crops

    clean = torch.zeros(2, 3, 4, 4)
    deltas = {"invisible_face_light": torch.full((3, 3, 4, 4), 0.1), "invisible_face": torch.full((5, 3, 4, 4), 0.2),
              "invisible_face_strong": torch.full((3, 3, 4, 4), 0.3)}
    crops = preset_crops(clean, deltas)
    assert list(crops) == ["light", "standard", "strong"]
    assert [round(float(c.mean()), 3) for c in crops.values()] == [0.1, 0.2, 0.3] and crops["standard"].shape[0] == 2


def test_write_tables_writes_results_transfer_stability_and_robustness(tmp_path):
    import pandas as pd

    from invisible_face.evaluate.experiment import write_tables

    row = lambda m: {"mosr": m, "mosr_zoo": m / 2, "mosr_1_attributes": m, "mosr_2_attributes": m / 4,
                     "perceptual": "x"}
    results = {"ours": row(0.8), "pgd": row(0.4)}
    table, robust = write_tables(results, {"ours": {"mosr_after_jpeg75": 0.6}, "pgd": {"mosr_after_jpeg75": 0.1}},
                                 ["zoo"], tmp_path)
    assert list(table.index) == ["ours", "pgd"] and robust.loc["ours", "jpeg75"] == 0.6
    transfer = pd.read_csv(tmp_path / "transfer.csv", index_col=0)
    assert list(transfer.columns) == ["mosr_surrogate", "mosr_zoo"] and transfer.loc["pgd", "mosr_zoo"] == 0.2
    stability = pd.read_csv(tmp_path / "stability.csv", index_col=0)
    assert list(stability.index) == [1, 2] and stability.loc[2, "ours"] == 0.2
    assert {p.name for p in tmp_path.iterdir()} == {"results.csv", "transfer.csv", "stability.csv", "robustness.csv",
                                                   "robustness.png"}


def test_method_metrics_and_their_mlflow_names():
    from invisible_face.evaluate.experiment import method_metrics, mlflow_metrics

    results = {"ours": {"mosr": 0.5, "psnr": float("inf"), "transfer_drop": float("nan"), "perceptual": "lpips"}}
    metrics = method_metrics(results, {"ours": {"mosr_after_jpeg75": 0.25}})
    assert metrics == {"ours": {"mosr": 0.5, "psnr": None, "transfer_drop": None, "perceptual": "lpips",
                                "mosr_after_jpeg75": 0.25}}
    assert np.isinf(results["ours"]["psnr"]) and "mosr_after_jpeg75" not in results["ours"]  # a copy
    flat = mlflow_metrics({"protector_mosr": 0.5, "label_free_ceiling": None, **metrics})
    assert flat == {"protector_mosr": 0.5, "ours.mosr": 0.5, "ours.mosr_after_jpeg75": 0.25}


def test_top_figures_add_the_budget_frontier_and_the_baselines_at_the_protectors_psnr():
    from invisible_face.evaluate.budgets import budget_frontier_table
    from invisible_face.evaluate.evaluation import frontier_table
    from invisible_face.evaluate.headline import headline, top_figures
    from invisible_face.protect.protector import PATHS

    results, robust, records = _headline_inputs()
    results["pgd_eps4"] = {"psnr": 38.0, "ssim": 0.9, "mosr": 0.3, "known_backbone_fooled_mean": 0.1}
    results["pgd"] = {"psnr": 32.0, "ssim": 0.8, "mosr": 0.9, "known_backbone_fooled_mean": 0.4}
    frontier = frontier_table(results, {"invisible_face": ["invisible_face"], "pgd": ["pgd_eps4", "pgd"]})
    budget_table = budget_frontier_table(results, {("perceptual", 0.95): "invisible_face_variant_chips"})
    top = top_figures(results, robust, records, ["face"], PATHS, budget_table, frontier)
    assert top["pgd_known_backbone_fooled_at_protector_psnr"] == pytest.approx(0.25)  # 35 dB: halfway
    assert top["frontier_perceptual_ssim95_mosr"] == 0.7
    first = headline(results, robust, records, ["face"], PATHS)
    assert list(top)[:len(first)] == list(first)  # the headline first


def test_the_report_sets_each_method_beside_the_papers_figures():
    from invisible_face.evaluate.evaluation import frontier_table, robustness_table
    from invisible_face.evaluate.report import PAPER, render_report

    row = lambda m, p: {"mosr": m, "mosr_correct": m, "ssim": 0.9, "psnr": p, "h_pn": 0.7, "ms_per_image": 12.0,
                        "mosr_1_attributes": m, "mosr_2_attributes": m / 2, "fooled_zoo_a": 0.1,
                        "zoo_fooled_mean": 0.1}
    results = {"invisible_face": {**row(0.8, 36.0), "truth_in_cover": 0.9}, "pgd": row(0.9, 30.0),
               "mine_eps2": row(0.2, float("nan"))}
    robust = robustness_table(results, {"invisible_face": {"mosr_after_jpeg75": 0.4},
                                        "pgd": {"mosr_after_jpeg75": 0.8}})
    frontier = frontier_table(results, {"invisible_face": ["invisible_face"], "pgd": ["pgd"]})
    text = render_report(results, robust, frontier, 6, ["zoo"], ["a", "b"], {"protector_mosr": 0.8})
    assert text.startswith("# Evaluation on 6 test chips (surrogate ResNet-18 white-box, zoo: zoo)\n")
    assert "| protector_mosr | 0.800 |" in text and "Label-free ceiling: on 0.900 of the chips" in text
    pgd = PAPER["pgd"]
    assert f"| {pgd['mosr']:.3f} / {pgd['ssim']:.2f} / {pgd['psnr']:.2f} |" in text
    assert "| mine_eps2 | 0.200 | 0.200 | 0.900 | - |" in text  # no PSNR: "-"; no paper figure either
    assert "| invisible_face | 0.50 |" in text and "| pgd | 0.89 |" in text  # retention: MOSR after / before
    assert "| pgd | 0.900 | 0.450 |" in text  # the MOSR over k = 1 and 2 attributes
