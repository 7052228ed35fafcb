"""Data validation gate: metadata table, Great Expectations suites, quarantine, dedup, splits.

The expectation suites are the single definition of what a good row is: the rows that GX reports
as unexpected are exactly the rows that go to quarantine, each with the expectation as its reason.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from invisible_face.data.labels import LabelError, age_bin, parse_utkface_name

METADATA_COLUMNS = [
    "file", "age", "gender", "race", "age_bin", "label_error",
    "sha256", "width", "height", "mode", "decodable", "decode_error", "size_bytes",
]


class ValidationFailed(RuntimeError):
    """The dataset fails the gate: too many bad rows, a broken schema or a skewed class balance."""


# --------------------------------------------------------------------------- metadata table


def describe_image(path: Path, age_edges: list[int]) -> dict[str, Any]:
    """One metadata row: parsed labels, content hash, decode status and geometry of an image."""
    data = path.read_bytes()
    row: dict[str, Any] = {
        "file": path.name, "age": None, "gender": None, "race": None, "age_bin": None,
        "label_error": None, "sha256": hashlib.sha256(data).hexdigest(),
        "width": None, "height": None, "mode": None, "decodable": False, "decode_error": None,
        "size_bytes": len(data),
    }
    try:
        label = parse_utkface_name(path.name)
        row.update(age=label.age, gender=label.gender, race=label.race,
                   age_bin=age_bin(label.age, age_edges))
    except LabelError as err:
        row["label_error"] = str(err)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a truncated file only fails when the pixels are decoded
            row.update(width=img.width, height=img.height, mode=img.mode, decodable=True)
    except Exception as err:  # PIL raises many types for bad files; all mean "not decodable"
        row["decode_error"] = f"{type(err).__name__}: {err}"
    return row


def build_metadata(image_dir: str | Path, age_edges: list[int], limit: int | None = None) -> pd.DataFrame:
    """Metadata table of every file in ``image_dir`` (sorted by name; the first ``limit`` only)."""
    paths = sorted(p for p in Path(image_dir).iterdir() if p.is_file())
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise ValidationFailed(f"no files found in {image_dir}: run `dvc pull` first")
    rows = [describe_image(p, age_edges) for p in tqdm(paths, desc="scan images", unit="img")]
    table = pd.DataFrame(rows, columns=METADATA_COLUMNS)
    for col in ("age", "gender", "race", "age_bin", "width", "height"):
        table[col] = table[col].astype("Int64")
    return table


# --------------------------------------------------------------------------- GX suites


def _gx_validate(df: pd.DataFrame, name: str, expectations: list) -> Any:
    """Run expectations over a dataframe with an ephemeral GX 1.x context; return the result."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # our own bar is enough
    batch_def = (
        context.data_sources.add_pandas(name=f"{name}_source")
        .add_dataframe_asset(name=f"{name}_asset")
        .add_batch_definition_whole_dataframe(f"{name}_batch")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch_def, suite=suite)
    )
    return validation.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["file"]},
    )


def row_expectations(cfg: dict[str, Any]) -> list:
    """Per-row rules: a row breaking any of them is quarantined with the rule as reason."""
    import great_expectations.expectations as gxe

    attrs = cfg["data"]["attributes"]
    width, height = cfg["validate"]["expected_size"]
    lo, hi = cfg["validate"]["age_range"]
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="age"),
        gxe.ExpectColumnValuesToNotBeNull(column="gender"),
        gxe.ExpectColumnValuesToNotBeNull(column="race"),
        gxe.ExpectColumnValuesToBeBetween(column="age", min_value=lo, max_value=hi),
        gxe.ExpectColumnValuesToBeInSet(column="gender", value_set=list(range(len(attrs["gender"]["classes"])))),
        gxe.ExpectColumnValuesToBeInSet(column="race", value_set=list(range(len(attrs["race"]["classes"])))),
        gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=[cfg["validate"]["expected_mode"]]),
        gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[width]),
        gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[height]),
    ]


def gate_expectations(cfg: dict[str, Any]) -> list:
    """Table-level rules over the clean, deduplicated table: schema, unique content, no nulls."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=METADATA_COLUMNS, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="sha256"),
        gxe.ExpectColumnValuesToBeUnique(column="file"),
        *[gxe.ExpectColumnValuesToNotBeNull(column=a) for a in cfg["data"]["attributes"]],
    ]


def balance_expectations(cfg: dict[str, Any], n_classes: int) -> list:
    """Rules over the long class-share table (attribute, class, share)."""
    import great_expectations.expectations as gxe

    lo, hi = cfg["validate"]["class_share_bounds"]
    return [
        gxe.ExpectColumnValuesToBeBetween(column="share", min_value=lo, max_value=hi),
        gxe.ExpectTableRowCountToEqual(value=n_classes),
    ]


def class_shares(clean: pd.DataFrame, attributes: dict[str, Any]) -> pd.DataFrame:
    """Share of every class of every attribute among the clean rows (0 for absent classes)."""
    rows = []
    for attr, spec in attributes.items():
        counts = clean[attr].value_counts()
        for idx, name in enumerate(spec["classes"]):
            rows.append({"attribute": attr, "class": name, "count": int(counts.get(idx, 0)),
                         "share": float(counts.get(idx, 0)) / max(len(clean), 1)})
    return pd.DataFrame(rows)


def summarise(result: Any) -> list[dict[str, Any]]:
    """Flatten a GX suite result into one dict per expectation for reports and quarantine."""
    out = []
    for r in result.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
        res = r.result or {}
        unexpected = [
            row["file"] for row in res.get("unexpected_index_list") or [] if isinstance(row, dict)
        ]
        out.append({
            "expectation": cfg.type, "kwargs": kwargs, "success": bool(r.success),
            "unexpected_count": res.get("unexpected_count", 0) or 0,
            "unexpected_files": unexpected, "observed_value": res.get("observed_value"),
        })
    return out


# --------------------------------------------------------------------------- quarantine, dedup


def quarantine_from(summary: list[dict[str, Any]], table: pd.DataFrame) -> pd.DataFrame:
    """Rows GX flagged, one line per file with every reason joined (nothing is dropped silently)."""
    reasons: dict[str, list[str]] = {}
    for item in summary:
        column = item["kwargs"].get("column", "")
        for f in item["unexpected_files"]:
            reasons.setdefault(f, []).append(f"{item['expectation']}({column})")
    bad = table[table["file"].isin(reasons)].copy()
    bad["reason"] = bad["file"].map(lambda f: "; ".join(reasons[f]))
    detail = bad["label_error"].fillna(bad["decode_error"]).fillna("")
    bad["detail"] = detail
    return bad[["file", "reason", "detail", "sha256"]].reset_index(drop=True)


def deduplicate(table: pd.DataFrame, attributes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Collapse byte-identical files to the first name in sort order.

    Returns (kept, duplicates, conflicts): ``duplicates`` lists each dropped copy and the file it
    copies; ``conflicts`` holds every copy of a content whose names disagree on a label, since
    then no copy can be trusted.
    """
    ordered = table.sort_values("file")
    groups = ordered.groupby("sha256", sort=False)
    n_labels = groups[attributes].transform("nunique", dropna=False).max(axis=1)
    conflict_mask = n_labels > 1
    conflicts = ordered[conflict_mask].copy()
    conflicts["reason"] = "duplicate content with conflicting labels"
    rest = ordered[~conflict_mask]
    first = rest.groupby("sha256", sort=False)["file"].transform("first")
    is_copy = rest["file"] != first
    duplicates = rest[is_copy].assign(duplicate_of=first[is_copy])[["file", "duplicate_of", "sha256"]]
    kept = rest[~is_copy]
    return kept.reset_index(drop=True), duplicates.reset_index(drop=True), conflicts.reset_index(drop=True)


# --------------------------------------------------------------------------- splits


def stratified_splits(table: pd.DataFrame, fractions: dict[str, float], strata: list[str], seed: int) -> pd.Series:
    """Assign each row a split name, stratified on ``strata``, deterministic under ``seed``.

    Within a stratum rows are shuffled and laid on [0, 1) with a random offset, then cut at the
    cumulative fractions: every stratum, even a single image, lands by chance rather than always
    in the first split, and large strata split in the given proportions.
    """
    total = sum(fractions.values())
    if not np.isclose(total, 1.0):
        raise ValueError(f"split fractions must sum to 1, got {total}")
    names = list(fractions)
    cuts = np.cumsum([fractions[n] for n in names])
    rng = np.random.default_rng(seed)
    split = pd.Series(index=table.index, dtype=object)
    for _, idx in sorted(table.groupby(strata, dropna=False).groups.items(), key=lambda kv: str(kv[0])):
        order = rng.permutation(np.asarray(idx))
        pos = (np.arange(len(order)) + rng.random()) / len(order)
        split.loc[order] = [names[int(np.searchsorted(cuts, p, side="right"))] for p in pos]
    return split


# --------------------------------------------------------------------------- the stage


@dataclass
class ValidationOutcome:
    metadata: pd.DataFrame
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    duplicates: pd.DataFrame
    shares: pd.DataFrame
    row_summary: list[dict[str, Any]]
    gate_summary: list[dict[str, Any]]
    balance_summary: list[dict[str, Any]]

    @property
    def metrics(self) -> dict[str, Any]:
        counts = self.manifest["split"].value_counts()
        return {
            "rows_scanned": len(self.metadata),
            "rows_valid": len(self.manifest),
            "rows_quarantined": len(self.quarantine),
            "duplicates_collapsed": len(self.duplicates),
            "bad_share": len(self.quarantine) / max(len(self.metadata), 1),
            "split_sizes": {k: int(v) for k, v in counts.items()},
        }


def validate_dataset(cfg: dict[str, Any], table: pd.DataFrame | None = None) -> ValidationOutcome:
    """The validate stage's logic: scan (unless ``table`` is given), check, quarantine, split."""
    vcfg, dcfg = cfg["validate"], cfg["data"]
    attributes = list(dcfg["attributes"])
    if table is None:
        table = build_metadata(dcfg["image_dir"], dcfg["age_bin_edges"], vcfg.get("limit"))

    schema = _gx_validate(table, "schema", gate_expectations(cfg)[:1])
    if not schema.success:
        raise ValidationFailed(
            f"metadata table schema is broken: expected columns {METADATA_COLUMNS}, got {list(table.columns)}"
        )

    row_summary = summarise(_gx_validate(table, "rows", row_expectations(cfg)))
    quarantine = quarantine_from(row_summary, table)
    candidates = table[~table["file"].isin(quarantine["file"])]
    kept, duplicates, conflicts = deduplicate(candidates, attributes)
    if len(conflicts):
        quarantine = pd.concat(
            [quarantine, conflicts.assign(detail="")[["file", "reason", "detail", "sha256"]]],
            ignore_index=True,
        )

    bad_share = len(quarantine) / len(table)
    if bad_share > vcfg["max_bad_share"]:
        raise ValidationFailed(
            f"{len(quarantine)} of {len(table)} rows ({bad_share:.1%}) failed validation, more than "
            f"validate.max_bad_share={vcfg['max_bad_share']:.1%}; first reasons: "
            + "; ".join(f"{r.file}: {r.reason}" for r in quarantine.head(5).itertuples())
        )

    gate_summary = summarise(_gx_validate(kept, "gate", gate_expectations(cfg)))
    shares = class_shares(kept, dcfg["attributes"])
    balance_summary = summarise(_gx_validate(shares, "balance", balance_expectations(cfg, len(shares))))
    failed = [s for s in gate_summary + balance_summary if not s["success"]]
    if failed:
        raise ValidationFailed(
            "the clean table fails the gate: "
            + "; ".join(f"{s['expectation']} {s['kwargs']} observed {s['observed_value']}" for s in failed)
            + ("\n" + shares.to_string(index=False))
        )

    manifest = kept.drop(columns=["label_error", "decode_error", "decodable"]).copy()
    manifest["split"] = stratified_splits(manifest, vcfg["splits"], attributes, cfg["seed"]).values
    return ValidationOutcome(table, manifest, quarantine, duplicates, shares,
                             row_summary, gate_summary, balance_summary)


def render_report(outcome: ValidationOutcome) -> str:
    """Human-readable markdown report of a validation run."""
    m = outcome.metrics
    lines = [
        "# Data validation report", "",
        f"- rows scanned: {m['rows_scanned']}",
        f"- valid rows (after quarantine and deduplication): {m['rows_valid']}",
        f"- quarantined: {m['rows_quarantined']} ({m['bad_share']:.2%})",
        f"- byte-identical duplicates collapsed: {m['duplicates_collapsed']}", "",
        "## Expectations", "",
        "| suite | expectation | column | success | unexpected |", "|---|---|---|---|---|",
    ]
    for suite, summary in (("rows", outcome.row_summary), ("gate", outcome.gate_summary),
                           ("balance", outcome.balance_summary)):
        for s in summary:
            lines.append(f"| {suite} | {s['expectation']} | {s['kwargs'].get('column', '')} | "
                         f"{'yes' if s['success'] else 'NO'} | {s['unexpected_count']} |")
    lines += ["", "## Quarantined rows", ""]
    if len(outcome.quarantine):
        lines += ["| file | reason | detail |", "|---|---|---|"]
        lines += [f"| `{r.file}` | {r.reason} | {r.detail} |" for r in outcome.quarantine.itertuples()]
    else:
        lines.append("none")
    lines += ["", "## Duplicates collapsed (byte-identical content)", ""]
    if len(outcome.duplicates):
        lines += ["| dropped copy | kept file |", "|---|---|"]
        lines += [f"| `{r.file}` | `{r.duplicate_of}` |" for r in outcome.duplicates.itertuples()]
    else:
        lines.append("none")
    lines += ["", "## Class shares (clean rows)", "", "| attribute | class | count | share |", "|---|---|---|---|"]
    lines += [f"| {r.attribute} | {r._2} | {r.count} | {r.share:.3f} |" for r in outcome.shares.itertuples()]
    lines += ["", "## Splits", "", "| split | rows |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in m["split_sizes"].items()]
    return "\n".join(lines) + "\n"
