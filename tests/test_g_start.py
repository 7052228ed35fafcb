"""What G's start buys: the step-capped and from-zero variants, their records, table, figure and headline
figures, on fake records and score rows (no trained models)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from PIL import Image

from invisible_face.evaluate.g_start import g_start_figure, g_start_metrics, g_start_table, record_figures
from invisible_face.evaluate.methods import TEST_CHIP_VARIANTS, VARIANTS, on_test_chips
from invisible_face.params import PROJECT_ROOT, load_params


def _record(path: str, ms: float, steps: int) -> SimpleNamespace:
    return SimpleNamespace(path=path, ms=ms, steps=steps)


def _reach(kb: float, mosr: float, zoo: float, chips: int) -> dict:
    return {"known_backbone_fooled_mean": kb, "mosr": mosr, "zoo_fooled_mean": zoo, "ssim": 0.95,
            "face_ssim": 0.94, "ms_per_image": 100.0, "chips": chips}


def _runs() -> tuple[dict, dict]:
    """Score rows and per-face records of G only, G + 2 steps, G + the full refinement and from zero
    (G + 1 and + 4 did not run)."""
    results = {"invisible_face_g_only": _reach(0.5, 0.3, 0.05, 4),
               "invisible_face_g_steps_2": _reach(0.7, 0.5, 0.08, 4),
               "invisible_face_g_start": _reach(0.8, 0.6, 0.1, 6),
               "invisible_face_from_zero": _reach(0.75, 0.62, 0.09, 6),
               "pgd": _reach(0.2, 0.9, 0.3, 6)}
    records = {"invisible_face_g_only": [_record("generator", 10.0, 0), _record("not_protected", 12.0, 0)] * 2,
               "invisible_face_g_steps_2": [_record("generator", 10.0, 0), _record("refined", 30.0, 2)] * 2,
               "invisible_face_g_start": [_record("generator", 10.0, 0), _record("refined", 50.0, 4),
                                          _record("refined", 70.0, 6)] * 2,
               "invisible_face_from_zero": [_record("refined", 80.0, 6), _record("refined", 120.0, 9),
                                            _record("not_protected", 200.0, 12)] * 2}
    return results, records


def test_the_variants_start_from_g_with_capped_steps_or_from_zero_on_the_test_chips():
    for k in (1, 2, 4):
        override = {"start": "generator", "refine": {"steps": k, "crop_fallback": False}}
        assert VARIANTS[f"invisible_face_g_steps_{k}"] == (override, False)
    assert VARIANTS["invisible_face_from_zero"] == ({"start": "zero"}, False)
    assert VARIANTS["invisible_face_g_start"] == ({"start": "generator"}, False)
    assert TEST_CHIP_VARIANTS <= set(VARIANTS)
    # G's start and from zero are compared with each other and the deployed headline, on the same (test) chips
    assert on_test_chips("invisible_face") and on_test_chips("pgd") and on_test_chips("invisible_face_from_zero")
    assert on_test_chips("invisible_face_g_start")
    assert not on_test_chips("invisible_face_g_steps_2") and not on_test_chips("invisible_face_light")


def test_every_variant_params_and_the_paper_profile_name_is_one_and_the_g_start_points_run():
    defaults = load_params(PROJECT_ROOT / "params.yaml")["evaluate"]["variants"]
    paper = load_params(PROJECT_ROOT / "profiles" / "paper.yaml")["evaluate"]["variants"]
    g_start = {"invisible_face_g_only", "invisible_face_from_zero", "invisible_face_g_start",
               *(f"invisible_face_g_steps_{k}" for k in (1, 2, 4))}
    for variants in (defaults, paper):
        assert set(variants) <= set(VARIANTS) and g_start <= set(variants)


def test_record_figures_count_any_protecting_path_and_take_the_median_ms_and_mean_steps():
    figures = record_figures([_record("generator", 10.0, 0), _record("refined", 30.0, 3),
                              _record("not_protected", 90.0, 6), _record("refined", 50.0, 3)])
    assert figures == {"protected_share": 0.75, "alone_share": 0.25, "ms_median": 40.0, "steps_mean": 3.0}
    assert record_figures([]) == {"protected_share": None, "alone_share": None, "ms_median": None, "steps_mean": None}


def test_the_table_has_a_row_per_point_that_ran_in_step_order(tmp_path):
    results, records = _runs()
    table = g_start_table(results, records)
    assert list(table["steps_cap"]) == [0, 2, "full", "from_zero"]  # pgd is no point; G + 1 and + 4 did not run
    assert list(table.columns) == ["label", "steps_cap", "protected_share", "alone_share",
                                   "known_backbone_fooled_mean", "mosr", "zoo_fooled_mean", "ms_median", "steps_mean",
                                   "chips"]
    rows = table.set_index("steps_cap")
    assert rows.loc[0, "protected_share"] == 0.5 and rows.loc[2, "protected_share"] == 1.0
    assert rows.loc["from_zero", "protected_share"] == pytest.approx(2 / 3) and rows.loc["full", "ms_median"] == 50.0
    assert rows.loc["full", "steps_mean"] == pytest.approx(10 / 3) and rows.loc["from_zero", "steps_mean"] == 9.0
    assert rows.loc[0, "chips"] == 4 and rows.loc["from_zero", "chips"] == 6 and rows.loc[2, "mosr"] == 0.5
    table.to_csv(tmp_path / "g_start.csv", index=False)
    assert len(pd.read_csv(tmp_path / "g_start.csv")) == 4
    g_start_figure(table, tmp_path / "g_start.png")
    assert Image.open(tmp_path / "g_start.png").size[0] > 0


def test_metrics_set_g_start_against_zero_and_each_cap_s_share_and_time():
    results, records = _runs()
    metrics = g_start_metrics(g_start_table(results, records))
    assert metrics["g_steps_0_protected_share"] == 0.5 and metrics["g_steps_0_ms_median"] == 11.0
    assert metrics["g_steps_2_protected_share"] == 1.0 and metrics["g_steps_2_ms_median"] == 20.0
    assert "g_steps_1_protected_share" not in metrics and "g_steps_full_protected_share" not in metrics
    assert metrics["refine_steps_mean_from_zero"] == 9.0 and metrics["protect_ms_median_from_zero"] == 120.0
    assert metrics["refine_steps_mean_g_start"] == pytest.approx(10 / 3) and metrics["protected_share_g_start"] == 1.0
    assert metrics["g_only_protected_share"] == pytest.approx(1 / 3)  # G's start alone, on the test chips
    assert metrics["steps_ratio_g_start_to_zero"] == pytest.approx((10 / 3) / 9)
    assert metrics["g_start_minus_from_zero_known_backbone_fooled_mean"] == pytest.approx(0.05)
    assert metrics["g_start_minus_from_zero_mosr"] == pytest.approx(-0.02)
    assert metrics["g_start_minus_from_zero_zoo_fooled_mean"] == pytest.approx(0.01)
    # without the from-zero run, no comparison; a missing reach figure gives None, not NaN
    del records["invisible_face_from_zero"]
    assert not any("from_zero" in k for k in g_start_metrics(g_start_table(results, records)))
    results, records = _runs()
    results["invisible_face_from_zero"]["zoo_fooled_mean"] = None
    assert g_start_metrics(g_start_table(results, records))["g_start_minus_from_zero_zoo_fooled_mean"] is None


def test_the_top_figures_hold_the_from_zero_variant_and_the_g_start_metrics():
    from invisible_face.evaluate.headline import top_figures
    from invisible_face.protect.protector import PATHS

    results, records = _runs()
    results = {name: {**row, "psnr": 35.0, "h_pn": 0.8, "truth_in_cover": 0.75, "mosr_face": 0.5}
               for name, row in results.items()}
    robust = {"invisible_face": {"mosr_after_jpeg75": 0.3}}
    table = g_start_table(results, records)
    results["invisible_face"] = results["invisible_face_g_start"]  # deployed with G's start
    deployed = records["invisible_face_g_start"]
    top = top_figures(results, robust, deployed, ["face"], PATHS, pd.DataFrame(), pd.DataFrame(
        columns=["family", "psnr", "known_backbone_fooled_mean"]), table)
    assert top["from_zero_mosr"] == 0.62 and top["from_zero_known_backbone_fooled_mean"] == 0.75
    assert top["from_zero_face_mosr"] == 0.5 and top["g_steps_2_zoo_fooled_mean"] == 0.08
    assert top["refine_steps_mean"] == pytest.approx(10 / 3) and top["protect_ms_median"] == 50.0
    assert top["steps_ratio_g_start_to_zero"] == pytest.approx(top["refine_steps_mean"]
                                                              / top["refine_steps_mean_from_zero"])
    assert top["g_start_minus_from_zero_mosr"] == pytest.approx(top["protector_mosr"] - top["from_zero_mosr"])
    assert "steps_ratio_g_start_to_zero" not in top_figures(results, robust, deployed, ["face"],
                                                            PATHS, pd.DataFrame(), pd.DataFrame(
                                                                columns=["family", "psnr",
                                                                         "known_backbone_fooled_mean"]))


class _FakeProtector:
    """Inverts each chip, one record per face (``by``: its own name, ``ms``), a variant per override."""

    def __init__(self, name: str = "deployed"):
        self.name, self.settings = name, {"strengths": {"light": {}, "strong": {}}}

    def variant(self, override: dict) -> "_FakeProtector":
        return _FakeProtector(str(override))

    def with_strength(self, name: str) -> "_FakeProtector":
        return _FakeProtector(name)

    def protect_chips(self, images, labels=None):
        return [(255 - image, [SimpleNamespace(by=self.name, ms=1.0)]) for image in images]


def test_each_variant_collects_its_own_records_and_from_zero_runs_on_the_test_chips():
    from invisible_face.evaluate.evaluation import TestSet
    from invisible_face.evaluate.experiment import run_all
    from invisible_face.evaluate.methods import protector_methods

    found = protector_methods(_FakeProtector(), ["invisible_face_g_steps_2", "invisible_face_from_zero"],
                              {"budgets": [], "targets": []})
    assert list(found.variant_records) == ["invisible_face_g_steps_2", "invisible_face_from_zero"]
    data = TestSet(torch.rand(5, 3, 8, 8), {"a": torch.tensor([0, 1, 0, 1, 0])})
    judges = SimpleNamespace(surrogate=lambda x: {"a": torch.zeros(len(x), 2)},
                             score=lambda protected, on: {"mosr": 0.0})
    run = run_all(found, data, data.head(2), judges)
    assert {name: row["chips"] for name, row in run.results.items()} == {
        "invisible_face_variant_chips": 2, "invisible_face": 5, "invisible_face_light": 2,
        "invisible_face_strong": 2, "invisible_face_g_steps_2": 2, "invisible_face_from_zero": 5}
    by = lambda records: [r.by for r in records]
    assert by(run.variant_records["invisible_face_g_steps_2"]) == [str(VARIANTS["invisible_face_g_steps_2"][0])] * 2
    assert by(run.variant_records["invisible_face_from_zero"]) == ["{'start': 'zero'}"] * 5
    assert by(run.test_records) == ["deployed"] * 5  # the deployed protector's own, as before
