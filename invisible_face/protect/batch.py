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
    """Protect every input file into ``out_dir`` at a ``strength`` preset (None: as exported);
    exit code 0 only if every file was protected."""
    protector = Protector.load(model).with_strength(strength)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in tqdm(collect(inputs), desc="protect", unit="photo"):
        t0 = time.perf_counter()
        row = {"file": str(path), "output": None, "faces": []}
        try:
            photo = read_photo(path.read_bytes())
            rgb, records = (protector.protect_chip if aligned else protector.protect)(photo.rgb)
            target = out / path.name
            target.write_bytes(write_photo(photo, rgb))  # unchanged pixels when no face, metadata stripped
            row.update(status="protected" if records else "no_face", output=str(target),
                       faces=records_as_dicts(records))
        except (PhotoError, OSError) as err:
            row.update(status="error", reason=str(err))
        row["ms"] = 1000 * (time.perf_counter() - t0)
        rows.append(row)
        tqdm.write(f"{row['status']:9s} {path}" + (f": {row.get('reason')}" if row["status"] == "error" else ""))
    if report:
        Path(report).write_text(json.dumps(rows, indent=2))
    return 0 if rows and all(r["status"] == "protected" for r in rows) else 1
