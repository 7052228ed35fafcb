"""The whole DAG, ``dvc pull`` + ``dvc repro`` on the quick profile, in a temporary copy."""

import json
import sys

import pytest

from repo_copy import copy_repo, run


@pytest.mark.e2e
def test_dvc_repro_quick_profile(tmp_path):
    import ray

    ray.shutdown()  # the stages start their own local Ray; two on 2 cores only get in each other's way
    repo = copy_repo(tmp_path / "repo")
    run(["dvc", "pull", "data.dvc"], repo)  # only the dataset: stage outputs are rebuilt
    run([sys.executable, "-m", "invisible_face.params", "quick"], repo)
    run(["dvc", "repro"], repo, timeout=1200)

    validate = json.loads((repo / "artifacts/validate/metrics.json").read_text())
    assert validate["rows_scanned"] == 400
    assert validate["rows_valid"] + validate["rows_quarantined"] + validate["duplicates_collapsed"] == 400
    assert set(validate["split_sizes"]) == {"surrogate_train", "target_train", "val", "test"}
    landmarks = json.loads((repo / "artifacts/landmarks/metrics.json").read_text())
    assert landmarks["images"] == validate["rows_valid"] and landmarks["coverage"] > 0.9

    status = run(["dvc", "status"], repo).stdout
    assert "up to date" in status.lower(), status
    shown = run(["dvc", "metrics", "show"], repo).stdout
    assert "rows_valid" in shown and "coverage" in shown
