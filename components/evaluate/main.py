"""evaluate stage: the protector against the baselines on the test split, logged to MLflow.

Outputs (artifacts/evaluate/): metrics.json (the headline figures, then per method), results.csv,
transfer.csv (method x model MOSR), robustness.csv + robustness.png (MOSR after each post-processing,
every method), frontier.csv + frontier.png (the adversaries' MOSR against PSNR at several strengths of
each method), budget_frontier.csv + budget_frontier.png (reach against face SSIM, the perceptual and the
uniform budget at matched visibility), g_start.csv + g_start.png (reach and protected share against ms per
face: G's start at each refinement step cap, the deployed protector and the refinement from zero),
region_crops.png (forehead, cheek and hair at 2x per preset), grid_<method>.png, perturbation_kde.png,
report.md (beside the paper's Tables I, II, V, VI and IX).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np

from invisible_face.data.synthetic_photos import LAYOUTS, write_photos
from invisible_face.evaluate.budgets import budget_frontier_figure, budget_frontier_table, region_crops
from invisible_face.evaluate.evaluation import (
    TestSet,
    frontier_figure,
    frontier_table,
    perturbation_kde,
    truth_in_cover,
)
from invisible_face.evaluate.experiment import (
    AdaptiveAttacker,
    Judges,
    method_metrics,
    mlflow_metrics,
    preset_crops,
    run_all,
    write_tables,
)
from invisible_face.evaluate.g_start import g_start_figure, g_start_table
from invisible_face.evaluate.headline import top_figures
from invisible_face.evaluate.methods import VARIANTS, chips_of, evaluation_methods, frontier_families
from invisible_face.evaluate.report import render_report
from invisible_face.method.ldman_training import chip_masks, chip_points
from invisible_face.models.classifiers import classifier_path, surrogate_path
from invisible_face.models.embedding_adversary import EmbeddingAdversary, chip_embeddings
from invisible_face.models.face_backbone import FaceBackboneSurrogate
from invisible_face.models.networks import load_classifier
from invisible_face.models.perceptual import Perceptual
from invisible_face.protect.photo_io import read_photo
from invisible_face.protect.protector import PATHS, Protector, photo_face_crops, protection_grid
from invisible_face.stage import Stage, stage_parser


def photo_crops(protector: Protector, cfg: dict, out: Path) -> None:
    """In-the-wild-like photos (chips composed at photo scale) at 2x, where a change shows on skin: each
    face of params ``evaluate.photos``, clean, protected, and under the uniform budget before it."""
    print("evaluate: photo crops", flush=True)
    with tempfile.TemporaryDirectory() as photos:
        write_photos(cfg["data"]["image_dir"], photos, {k: LAYOUTS[k] for k in cfg["evaluate"]["photos"]})
        for photo_name in cfg["evaluate"]["photos"]:
            clean = read_photo((Path(photos) / photo_name).read_bytes()).rgb
            protected, records = protector.protect(clean)
            uniform, _ = protector.variant(VARIANTS["invisible_face_uniform"][0]).protect(clean)
            photo_face_crops(clean, {"standard": protected, "uniform 8/255 (before)": uniform}, records,
                             out / f"photo_crops_{Path(photo_name).stem}.png")


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/evaluate")
    parser.add_argument("--model", default="artifacts/export/protector")
    parser.add_argument("--landmarks", default="artifacts/landmarks/landmarks.npz")
    stage = Stage.start(parser, experiment="evaluate")
    cfg, out = stage.params, stage.out
    ecfg = cfg["evaluate"]
    faces = chips_of(cfg, "test", ecfg["test_images"])
    # face pixels (face SSIM / PSNR, texture ratio): the protector's face mask from the landmarks stage's points
    files, landmarks = faces.table["file"].tolist(), dict(np.load(stage.args.landmarks))
    side = cfg["validate"]["expected_size"][0]
    masks = chip_masks(files, landmarks, side, cfg["ldman"]["image_size"], cfg["protector"]["mask"])
    faces_points = chip_points(files, landmarks, side, cfg["ldman"]["image_size"])
    data = TestSet(faces.images.float() / 255, dict(faces.labels), face_masks=masks)
    surrogate = load_classifier(surrogate_path(cfg))  # the white-box ResNet-18: MOSR, robustness, the baselines
    face_cfg = cfg["classifiers"].get("face_surrogate")  # the ensemble's other member, scored white-box too
    members = {face_cfg["name"]: FaceBackboneSurrogate.load(classifier_path(face_cfg["name"]))} if face_cfg else {}
    zoo = {m["name"]: load_classifier(classifier_path(m["name"])) for m in cfg["classifiers"]["zoo"]}
    # dlib's own face embeddings of the written images: identity kept, and the known-backbone adversary's input (a
    # box: the protector never calls it)
    embed = lambda x: chip_embeddings(x, cfg["landmarks"]["fallback_box"])
    adversary = EmbeddingAdversary.load(classifier_path(cfg["classifiers"]["embedding_adversary"]["name"]))
    perceptual = Perceptual("auto", surrogate)  # LPIPS when its backbone is cached; which ran is in metrics
    protector = Protector.load(stage.args.model)
    judges = Judges(surrogate, zoo, embed, adversary, perceptual, members)

    methods = evaluation_methods(protector, surrogate, cfg)
    # the adaptive attacker's own photos: chips of the adversary's split
    adaptive_chips = chips_of(cfg, "target_train", ecfg["adaptive"]["train_images"]).images.float() / 255
    adaptive = AdaptiveAttacker.of(adaptive_chips, surrogate, ecfg["adaptive"], cfg["seed"])
    # the presets and variants run on the first ``variant_images`` of the same chips (each takes seconds a face)
    variant_data = data.head(ecfg["variant_images"])
    n = ecfg["grid_images"]
    run = run_all(methods, data, variant_data, judges, adaptive, ecfg["adaptive"]["methods"],
                  grid=lambda name, clean, x: protection_grid(clean[:n], x[:n], out / f"grid_{name}.png"))
    results, robust = run.results, run.robust
    photo_crops(protector, cfg, out)
    perturbation_kde({k: v for k, v in run.deltas.items() if not k.startswith("invisible_face_")},
                     cfg["ldman"]["epsilon"], out / "perturbation_kde.png")
    frontier = frontier_table(results, frontier_families(methods.budgets, ecfg["frontier"]["baselines"]))
    frontier.to_csv(out / "frontier.csv", index=False)
    frontier_figure(frontier, out / "frontier.png")
    budget_table = budget_frontier_table(results, methods.points)
    budget_table.to_csv(out / "budget_frontier.csv", index=False)
    budget_frontier_figure(budget_table, out / "budget_frontier.png")
    g_table = g_start_table(results, run.variant_records)
    g_table.to_csv(out / "g_start.csv", index=False)
    g_start_figure(g_table, out / "g_start.png")
    # forehead, cheek and hair of the first faces at 2x, clean and at each preset
    clean_crops = variant_data.images[:ecfg["crop_faces"]]
    region_crops(clean_crops, preset_crops(clean_crops, run.deltas), faces_points[:ecfg["crop_faces"]],
                 out / "region_crops.png")

    table, robust_table = write_tables(results, robust, list(zoo), out)
    metrics = method_metrics(results, robust)
    # how far label-free protection can go with this surrogate: see truth_in_cover
    results["invisible_face"]["truth_in_cover"] = truth_in_cover(data.clean_calls("surrogate", surrogate), data.labels,
                                                                 protector.config["directions"]["cover"])
    top = top_figures(results, robust, run.test_records, list(members), PATHS, budget_table, frontier, g_table)
    metrics = {**top, **metrics}
    stage.write_metrics(metrics, show=False)
    (out / "report.md").write_text(render_report(results, robust_table, frontier, len(data.images), list(zoo),
                                                 list(data.labels), top))

    with stage.run("evaluate", params={f"evaluate.{k}": v for k, v in ecfg.items()}):
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.log_artifacts(str(out))
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
