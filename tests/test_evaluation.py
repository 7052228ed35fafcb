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


def test_headline_counts_paths_and_retention_from_the_deployed_records():
    import importlib.util

    from invisible_face.params import PROJECT_ROOT
    from invisible_face.protect.protector import FaceRecord

    spec = importlib.util.spec_from_file_location("evaluate_main", PROJECT_ROOT / "components/evaluate/main.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
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
    top = evaluate.headline(results, {"invisible_face": {"mosr_after_jpeg75": 0.6, "mosr_after_resize_half": 0.8}},
                            records, ["face"])
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
    import importlib.util

    import pandas as pd

    from invisible_face.params import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("evaluate_main", PROJECT_ROOT / "components/evaluate/main.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    frontier = pd.DataFrame({"family": ["invisible_face", "pgd", "pgd", "narrow", "narrow"],
                             "psnr": [34.0, 37.0, 31.0, 40.0, 38.0], "fooled": [0.3, 0.1, 0.4, 0.05, 0.06]})
    at = evaluate.at_equal_psnr(frontier, 34.0, "fooled")
    assert at == {"pgd": pytest.approx(0.25), "narrow": None}  # halfway between 31 and 37 dB; 34 dB is outside 38-40
