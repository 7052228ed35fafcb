"""``invisible-face protect`` on photos composed from UTKFace chips (the ``photos`` fixture)."""

import json
import shutil
import subprocess

import numpy as np
from PIL import Image

from invisible_face.data.synthetic_photos import LAYOUTS, face_count
from invisible_face.protect.cli import main


def test_protect_photos_folder(tmp_path, tiny_protector, photos):
    inputs = tmp_path / "in"
    shutil.copytree(photos, inputs)
    (inputs / "notes.jpg").write_text("not an image at all")
    # a JPEG with EXIF (GPS included) and a rotation flag
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}
    Image.open(photos / "portrait.jpg").rotate(90, expand=True).save(inputs / "rotated_gps.jpg", exif=exif)

    out, report = tmp_path / "out", tmp_path / "report.json"
    code = main(["protect", str(inputs), "--out", str(out), "--model", str(tiny_protector), "--report", str(report)])
    rows = {r["file"].split("/")[-1]: r for r in json.loads(report.read_text())}
    assert code == 1  # one file is not an image (and one photo has no face)
    assert rows["notes.jpg"]["status"] == "error" and "not a readable image" in rows["notes.jpg"]["reason"]
    # every face composed into a photo is found (rolled, 60 px, at the edge, gray) and none elsewhere
    for name in [*LAYOUTS, "rotated_gps.jpg"]:
        faces = face_count(name) if name in LAYOUTS else 1
        assert len(rows[name]["faces"]) == faces, (name, rows[name])
        assert rows[name]["status"] == ("protected" if faces else "no_face"), (name, rows[name])
        assert (out / name).exists()

    png = Image.open(out / "rgba.png")
    assert png.format == "PNG" and png.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(png)[:, :, 3], np.asarray(Image.open(photos / "rgba.png"))[:, :, 3])
    rotated = Image.open(out / "rotated_gps.jpg")
    assert rotated.format == "JPEG" and not rotated.getexif() and "exif" not in rotated.info
    assert rotated.size == Image.open(photos / "portrait.jpg").size  # the EXIF rotation was applied
    original = np.asarray(Image.open(photos / "portrait.jpg").convert("RGB")).astype(int)
    protected = np.asarray(Image.open(out / "portrait.jpg").convert("RGB")).astype(int)
    assert protected.shape == original.shape and np.abs(protected - original).mean() < 3


def test_no_face_keeps_the_photo_and_says_so(tmp_path, tiny_protector):
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(tmp_path / "wall.png")
    report = tmp_path / "r.json"
    code = main(["protect", str(tmp_path / "wall.png"), "--out", str(tmp_path / "o"), "--model",
                 str(tiny_protector), "--report", str(report)])
    row = json.loads(report.read_text())[0]
    assert code == 1 and row["status"] == "no_face" and row["faces"] == []
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o/wall.png")), np.full((120, 160, 3), 200))


def test_aligned_chip_and_installed_entry_point(tmp_path, tiny_protector, chip_folder):
    chip = next(chip_folder.glob("25_*.jpg"))
    result = subprocess.run(["invisible-face", "protect", str(chip), "--aligned", "--out", str(tmp_path),
                             "--model", str(tiny_protector), "--report", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads((tmp_path / "r.json").read_text())[0]
    assert row["status"] == "protected" and len(row["faces"]) == 1
    assert Image.open(tmp_path / chip.name).size == (200, 200)


def test_animated_gif_is_refused_with_the_reason(tmp_path, tiny_protector, photos, capsys):
    """An animated GIF is not protected as its first frame alone: an error row naming why, no output
    file, a non-zero exit; the still photo beside it is protected as usual."""
    face = Image.open(photos / "portrait.jpg").convert("RGB")
    inputs = tmp_path / "in"
    inputs.mkdir()
    frames = [face.point(lambda v, k=k: v * (10 - k) // 10) for k in range(3)]
    frames[0].save(inputs / "clip.gif", save_all=True, append_images=frames[1:], duration=120, loop=0)
    face.save(inputs / "still.jpg")

    out, report = tmp_path / "out", tmp_path / "report.json"
    code = main(["protect", str(inputs), "--out", str(out), "--model", str(tiny_protector), "--report", str(report)])
    rows = {r["file"].split("/")[-1]: r for r in json.loads(report.read_text())}
    assert code == 1
    assert rows["clip.gif"]["status"] == "error" and rows["clip.gif"]["output"] is None
    assert rows["clip.gif"]["reason"].startswith("animated GIF (3 frames): only still photos are protected")
    assert not (out / "clip.gif").exists()
    assert rows["still.jpg"]["status"] == "protected" and (out / "still.jpg").exists()
    assert "animated GIF (3 frames)" in capsys.readouterr().out
