import yaml

from invisible_face.protect.cli import main
from repo_copy import run


def test_ingest_makes_a_new_dvc_version(tmp_path, chip_folder):
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    nested = chip_folder / "sub"
    nested.mkdir()
    moved = next(chip_folder.glob("*.jpg"))
    moved.rename(nested / moved.name)
    assert main(["ingest", str(chip_folder), "--repo", str(repo)]) == 0
    out = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    n_images = len(list(chip_folder.rglob("*.jpg")))
    assert out["path"] == "data" and out["nfiles"] == n_images
    assert (repo / "data/utkface" / moved.name).exists()  # found in a subfolder, stored flat
