"""Does the generator earn its place: the protector from G's start with its refinement capped at 0, 1, 2
and 4 steps and in full, and the same refinement from zero (no G), whatever start the export deploys;
a table and a figure of each point's reach against its time per face, and the flat figures of
metrics.json (G's start against zero on the same chips: reach, steps and time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from invisible_face.evaluate.budgets import PANELS

# the points, in the order of the table: method -> (label, the refinement's step cap from G's start;
# "full": the deployed schedule from G's start, crop fallback included; "from_zero": that schedule without G)
POINTS = {
    "invisible_face_g_only": ("G only", 0),
    "invisible_face_g_steps_1": ("G + 1 step", 1),
    "invisible_face_g_steps_2": ("G + 2 steps", 2),
    "invisible_face_g_steps_4": ("G + 4 steps", 4),
    "invisible_face_g_start": ("G + refinement", "full"),
    "invisible_face_from_zero": ("from zero (no G)", "from_zero"),
}
REACH = tuple(PANELS)  # known_backbone_fooled_mean, mosr (the surrogate's), zoo_fooled_mean


def record_figures(records: Sequence[Any]) -> dict[str, float | None]:
    """One run's per-face records (FaceRecords: ``.path``, ``.ms``, ``.steps``) -> ``protected_share``
    (faces the stop rule counts protected on the whole ensemble: any path but ``not_protected``),
    ``ms_median`` (each face's share of its batch's time) and ``steps_mean``; None without records."""
    if not records:
        return {"protected_share": None, "alone_share": None, "ms_median": None, "steps_mean": None}
    return {"protected_share": float(np.mean([r.path != "not_protected" for r in records])),
            "alone_share": float(np.mean([r.path == "generator" for r in records])),
            "ms_median": float(np.median([r.ms for r in records])),
            "steps_mean": float(np.mean([r.steps for r in records]))}


def g_start_table(results: dict[str, dict], records: dict[str, Sequence[Any]]) -> pd.DataFrame:
    """One row per point of :data:`POINTS` that ran (in ``results`` and ``records``): label, steps_cap,
    :func:`record_figures`, the :data:`REACH` figures and the chips it ran on.
    results: method -> its score row; records: method -> its per-face records on those chips."""
    rows = [{"label": label, "steps_cap": cap, **record_figures(records[name]),
             **{k: results[name].get(k) for k in REACH}, "chips": results[name].get("chips")}
            for name, (label, cap) in POINTS.items() if name in results and name in records]
    columns = ["label", "steps_cap", "protected_share", "alone_share", *REACH, "ms_median", "steps_mean", "chips"]
    return pd.DataFrame(rows, columns=columns)


def _number(v: Any) -> float | None:
    """A figure for metrics.json: None for a missing or non-finite one."""
    return None if v is None or not np.isfinite(v) else float(v)


def g_start_metrics(table: pd.DataFrame) -> dict[str, float | None]:
    """The table flat for metrics.json: ``g_steps_<cap>_protected_share`` and ``g_steps_<cap>_ms_median``
    per capped point (G only is cap 0: ``g_only_protected_share`` is already G's share under the deployed
    run); with both the full G-start and the from-zero point (the same chips): ``refine_steps_mean_<start>``,
    ``protect_ms_median_<start>`` and ``protected_share_<start>`` for start g_start and from_zero,
    ``steps_ratio_g_start_to_zero`` and ``g_start_minus_from_zero_<reach>`` (each of :data:`REACH`)."""
    by_cap = {row["steps_cap"]: row for _, row in table.iterrows()}
    out = {}
    for cap, row in by_cap.items():
        if not isinstance(cap, str):
            out |= {f"g_steps_{cap}_{k}": _number(row[k]) for k in ("protected_share", "ms_median")}
    if "full" in by_cap and "from_zero" in by_cap:
        full, zero = by_cap["full"], by_cap["from_zero"]
        for name, row in (("g_start", full), ("from_zero", zero)):
            out |= {f"refine_steps_mean_{name}": _number(row["steps_mean"]),
                    f"protect_ms_median_{name}": _number(row["ms_median"]),
                    f"protected_share_{name}": _number(row["protected_share"])}
        out["steps_ratio_g_start_to_zero"] = _number(full["steps_mean"] / zero["steps_mean"]) \
            if zero["steps_mean"] else None
        # G alone on the whole ensemble, on the test chips, whatever start the export deploys
        out["g_only_protected_share"] = _number(full["alone_share"])
        for k in REACH:
            both = _number(full[k]) is not None and _number(zero[k]) is not None
            out[f"g_start_minus_from_zero_{k}"] = float(full[k] - zero[k]) if both else None
    return out


def g_start_figure(table: pd.DataFrame, path: str | Path) -> None:
    """The protected share and each reach figure against the median ms per face (log scale): G's start
    at each step cap joined by a line, the from-zero point apart; each point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"protected_share": "protected on the whole ensemble (stop rule)", **PANELS}
    from_g = table[table["steps_cap"] != "from_zero"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (y, label) in zip(axes[0], panels.items()):
        ax.plot(from_g["ms_median"], from_g[y], marker="o", label="from G's start")
        zero = table[table["steps_cap"] == "from_zero"]
        ax.plot(zero["ms_median"], zero[y], marker="s", linestyle="none", color="tab:red", label="from zero")
        for _, r in table.iterrows():
            ax.annotate(r["label"], (r["ms_median"], r[y]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="median ms per face", ylabel=label, xscale="log", ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("What G's start buys: reach against time per face (further left and higher is better)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
