import numpy as np
import pandas as pd
import pytest

from invisible_face.data.validation import (
    ValidationFailed,
    build_metadata,
    render_report,
    stratified_splits,
    validate_dataset,
)

BAD = {
    "39_1_20170116174525125.jpg.chip.jpg": "expect_column_values_to_not_be_null(race)",
    "40_1_1_20170116999999999.jpg.chip.jpg": "decodable",
    "41_1_2_20170116888888888.jpg.chip.jpg": "decodable",
    "50_0_3_20170116777777777.jpg.chip.jpg": "(mode)",
    "51_0_3_20170116666666666.jpg.chip.jpg": "(width)",
    "130_0_3_20170116555555555.jpg.chip.jpg": "expect_column_values_to_be_between(age)",
    "52_7_3_20170116444444444.jpg.chip.jpg": "(gender)",
}


def test_metadata_table_describes_each_file(small_cfg, chip_folder):
    table = build_metadata(chip_folder, small_cfg["data"]["age_bin_edges"])
    assert len(table) == len(list(chip_folder.iterdir()))
    row = table.set_index("file").loc["25_0_1_20170116170000007.jpg.chip.jpg"]
    assert (row.age, row.gender, row.race, row.age_bin) == (25, 0, 1, 1)
    assert (row.width, row.height, row["mode"], row.decodable) == (200, 200, "RGB", True)
    text = table.set_index("file").loc["40_1_1_20170116999999999.jpg.chip.jpg"]
    assert not text.decodable and "UnidentifiedImageError" in text.decode_error


def test_quarantine_keeps_every_bad_row_with_its_reason(small_cfg):
    outcome = validate_dataset(small_cfg)
    quarantined = outcome.quarantine.set_index("file")["reason"].to_dict()
    assert set(quarantined) == set(BAD)
    for name, reason_part in BAD.items():
        assert reason_part in quarantined[name], (name, quarantined[name])
    # nothing silently dropped: every scanned row is valid, quarantined or a collapsed duplicate
    assert len(outcome.manifest) + len(outcome.quarantine) + len(outcome.duplicates) == len(outcome.metadata)
    assert outcome.duplicates.iloc[0]["duplicate_of"] == "25_0_1_20170116170000007.jpg.chip.jpg"
    report = render_report(outcome)
    assert "39_1_20170116174525125.jpg.chip.jpg" in report and "25_0_1_20170117000000001" in report


def test_stage_fails_when_bad_share_passes_threshold(small_cfg):
    small_cfg["validate"]["max_bad_share"] = 0.05
    with pytest.raises(ValidationFailed, match="max_bad_share"):
        validate_dataset(small_cfg)


def test_suite_fails_on_a_corrupted_table(small_cfg, chip_folder):
    table = build_metadata(chip_folder, small_cfg["data"]["age_bin_edges"])
    with pytest.raises(ValidationFailed, match="schema is broken"):
        validate_dataset(small_cfg, table.drop(columns=["sha256"]))
    # every row's label wiped: the quarantine share explodes and the gate stops the stage
    corrupted = table.assign(gender=pd.array([None] * len(table), dtype="Int64"))
    with pytest.raises(ValidationFailed, match="failed validation"):
        validate_dataset(small_cfg, corrupted)


def test_class_balance_bounds_are_enforced(small_cfg):
    small_cfg["validate"]["class_share_bounds"] = [0.3, 0.95]  # five race classes cannot all hold 30 %
    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_between"):
        validate_dataset(small_cfg)


def test_conflicting_duplicates_are_quarantined(small_cfg, chip_folder):
    original = next(chip_folder.glob("45_1_4_*.jpg.chip.jpg"))
    (chip_folder / "46_0_4_20170118000000000.jpg.chip.jpg").write_bytes(original.read_bytes())
    outcome = validate_dataset(small_cfg)
    reasons = outcome.quarantine.set_index("file")["reason"]
    assert "conflicting labels" in reasons["46_0_4_20170118000000000.jpg.chip.jpg"]
    assert "conflicting labels" in reasons[original.name]


def test_splits_are_disjoint_stratified_and_seeded(small_cfg):
    outcome = validate_dataset(small_cfg)
    manifest = outcome.manifest
    by_hash = manifest.groupby("sha256")["split"].nunique()
    assert (by_hash == 1).all() and manifest["sha256"].is_unique
    assert set(manifest["split"]) == set(small_cfg["validate"]["splits"])
    again = validate_dataset(small_cfg).manifest
    assert manifest["split"].tolist() == again["split"].tolist()


def test_split_proportions_follow_fractions():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"gender": rng.integers(0, 2, 5000), "race": rng.integers(0, 5, 5000)})
    fractions = {"a": 0.4, "b": 0.3, "c": 0.1, "d": 0.2}
    split = stratified_splits(table, fractions, ["gender", "race"], seed=3)
    shares = split.value_counts(normalize=True)
    for name, frac in fractions.items():
        assert abs(shares[name] - frac) < 0.01
    # stratified: each gender holds about the same share of every split
    per_gender = pd.crosstab(table["gender"], split, normalize="index")
    assert (per_gender.max() - per_gender.min()).max() < 0.02
    assert not split.equals(stratified_splits(table, fractions, ["gender", "race"], seed=4))
