"""validate stage: metadata table -> GX suites -> quarantine, dedup -> stratified split manifest.

Outputs (artifacts/validate/): manifest.csv (the clean rows with their split, read by every later
stage), metadata.csv, quarantine.csv, duplicates.csv, report.md, metrics.json.
"""

from __future__ import annotations

import sys

from invisible_face.data.validation import ValidationFailed, render_report, validate_dataset
from invisible_face.stage import Stage, stage_parser


def main() -> int:
    stage = Stage.start(stage_parser(__doc__, "artifacts/validate"))
    out = stage.out
    try:
        outcome = validate_dataset(stage.params)
    except ValidationFailed as err:
        print(f"validate: FAILED: {err}", file=sys.stderr)
        return 1

    outcome.manifest.to_csv(out / "manifest.csv", index=False)
    outcome.metadata.to_csv(out / "metadata.csv", index=False)
    outcome.quarantine.to_csv(out / "quarantine.csv", index=False)
    outcome.duplicates.to_csv(out / "duplicates.csv", index=False)
    (out / "report.md").write_text(render_report(outcome))
    stage.write_metrics(outcome.metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
