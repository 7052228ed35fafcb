"""UTKFace labels: parse ``[age]_[gender]_[race]_[date&time].jpg.chip.jpg`` file names.

Attributes and their classes come from ``params.yaml`` (``attributes``); this module only knows
how UTKFace spells the raw fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<stamp>\d+)\.jpg\.chip\.jpg$")


class LabelError(ValueError):
    """A file name that does not carry a complete, well-formed UTKFace label."""


@dataclass(frozen=True)
class FaceLabel:
    age: int
    gender: int
    race: int


def parse_utkface_name(name: str) -> FaceLabel:
    """Parse a UTKFace chip name; raise :class:`LabelError` saying what is wrong.

    Range checks are not done here: the validation suite owns them, so that an out-of-range
    value is reported by the same expectation that a reviewer reads in the report.
    """
    match = _NAME.match(name)
    if match is None:
        fields = name.split(".")[0].split("_")
        raise LabelError(
            f"{name!r}: expected age_gender_race_datetime.jpg.chip.jpg, got {len(fields)} field(s)"
        )
    return FaceLabel(int(match["age"]), int(match["gender"]), int(match["race"]))


def age_bin(age: int, edges: list[int]) -> int:
    """Index of the age bin: ``edges`` are the lower bounds, e.g. [0, 20, 40, 60, 80]."""
    if age < edges[0]:
        raise LabelError(f"age {age} is below the first bin edge {edges[0]}")
    return max(i for i, lower in enumerate(edges) if age >= lower)
