"""``invisible-face protect``: protect files and folders, one report line per file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from invisible_face.protect.photo_io import PhotoError, read_photo, write_photo
from invisible_face.protect.protector import Protector, records_as_dicts


def collect(inputs: list[str]) -> list[Path]:
    """Files as given, and every file directly or deeper inside given folders (sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        files.extend(sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item])
    return files


def protect_files(inputs: list[str], out_dir: str, model: str, aligned: bool, report: str | None,
                  strength: str | None = None) -> int:
    """Protect every input file into ``out_dir`` at a ``strength`` preset (None: as exported), the faces
    of ``protector.batch_size`` photos at a time protected together; exit code 0 only if every file was
    protected. A file that cannot be read is reported and the others go on."""
    protector = Protector.load(model).with_strength(strength)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = collect(inputs)
    group = protector.settings["batch_size"]
    rows = []
    with tqdm(total=len(files), desc="protect", unit="photo") as progress:
        for start in range(0, len(files), group):
            rows += protect_group(protector, files[start:start + group], out, aligned)
            for row in rows[-len(files[start:start + group]):]:
                tqdm.write(f"{row['status']:9s} {row['file']}" +
                           (f": {row.get('reason')}" if row["status"] == "error" else ""))
            progress.update(len(files[start:start + group]))
    if report:
        Path(report).write_text(json.dumps(rows, indent=2))
    return 0 if rows and all(r["status"] == "protected" for r in rows) else 1


def protect_group(protector: Protector, paths: list[Path], out: Path, aligned: bool) -> list[dict]:
    """Protect the photos of ``paths`` together -> a report row per file (``ms``: the group's wall time
    shared over its photos)."""
    t0 = time.perf_counter()
    rows, photos = [], {}
    for path in paths:
        rows.append({"file": str(path), "output": None, "faces": []})
        try:
            photos[len(rows) - 1] = read_photo(path.read_bytes())
        except (PhotoError, OSError) as err:
            rows[-1].update(status="error", reason=str(err))
    images = [photo.rgb for photo in photos.values()]
    done = (protector.protect_chips if aligned else protector.protect_photos)(images) if images else []
    for (i, photo), (rgb, records) in zip(photos.items(), done):
        target = out / paths[i].name
        try:
            target.write_bytes(write_photo(photo, rgb))  # unchanged pixels when no face, metadata stripped
            rows[i].update(status="protected" if records else "no_face", output=str(target),
                           faces=records_as_dicts(records))
        except OSError as err:
            rows[i].update(status="error", reason=str(err))
    for row in rows:
        row["ms"] = 1000 * (time.perf_counter() - t0) / len(rows)
    return rows
