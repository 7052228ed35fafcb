"""``invisible-face`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="invisible-face", description="Invisible-Face tools")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="copy your own UTKFace images into data/ as a new DVC version")
    ingest.add_argument("source", help="folder holding UTKFace *.jpg.chip.jpg files (searched recursively)")
    ingest.add_argument("--repo", default=".", help="project root (default: current directory)")
    ingest.add_argument("--replace", action="store_true", help="remove the current data/utkface first")

    protect = sub.add_parser("protect", help="protect the faces in photos")
    protect.add_argument("inputs", nargs="+", help="image files or folders (still photos: an animated GIF, APNG or "
                         "WebP, or a multi-page TIFF, is reported as an error naming why, and not written)")
    protect.add_argument("--out", required=True, help="output folder (file names and formats are kept)")
    protect.add_argument("--model", default="artifacts/export/protector", help="protector export (stem or .json)")
    protect.add_argument("--aligned", action="store_true", help="each image is one aligned face crop")
    protect.add_argument("--report", help="write a JSON report of every file here")
    protect.add_argument("--strength", choices=("light", "standard", "strong"), default="standard",
                         help="light: least visible, not checked against recompression; standard: survives a "
                         "JPEG re-encode at quality 75; strong: survives quality 50, more visible (docs/design.md)")

    args = parser.parse_args(argv)
    if args.command == "protect":
        from invisible_face.protect.batch import protect_files

        return protect_files(args.inputs, args.out, args.model, args.aligned, args.report, args.strength)
    if args.command == "ingest":
        from invisible_face.data.ingest import ingest_folder

        count = ingest_folder(args.source, args.repo, args.replace)
        print(f"ingested {count} images into data/utkface; next: git add data.dvc && git commit, "
              "then dvc push -r <your remote>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
