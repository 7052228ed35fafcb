"""validate stage: metadata table -> GX suites -> quarantine, dedup -> stratified split manifest.

Outputs (artifacts/validate/): manifest.csv (the clean rows with their split, read by every later
stage), metadata.csv, quarantine.csv, duplicates.csv, report.md, metrics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from invisible_face.data.validation import ValidationFailed, render_report, validate_dataset
from invisible_face.params import load_params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="artifacts/validate")
    args = parser.parse_args()

    cfg = load_params(args.params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        outcome = validate_dataset(cfg)
    except ValidationFailed as err:
        print(f"validate: FAILED: {err}", file=sys.stderr)
        return 1

    outcome.manifest.to_csv(out / "manifest.csv", index=False)
    outcome.metadata.to_csv(out / "metadata.csv", index=False)
    outcome.quarantine.to_csv(out / "quarantine.csv", index=False)
    outcome.duplicates.to_csv(out / "duplicates.csv", index=False)
    (out / "report.md").write_text(render_report(outcome))
    (out / "metrics.json").write_text(json.dumps(outcome.metrics, indent=2))
    print(json.dumps(outcome.metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
