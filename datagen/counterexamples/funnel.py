"""Per cluster: budget, candidates, kept, and why the rest were dropped (the counterexample
stage's summary; the dataset card and the HTML report show it in their cluster table)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl


def _empty_entry() -> dict[str, Any]:
    return {"candidates": 0, "kept": 0, "kept_corrections": 0, "tests_passed": 0, "dropped": Counter(), "corrected": set()}


def cluster_funnel(rows: pl.DataFrame) -> dict[int, dict[str, Any]]:
    """cluster id -> candidates, kept (new problems), kept_corrections, tests_passed (code rows whose
    own tests passed), dropped ("stage: reason" -> count, by the stage that dropped the row) and
    corrected (the failure ids of the kept corrections).

    `rows`: every candidate after the counterexample stage, with cluster_id, role, keep,
    dropped_by, failure_id and each stage's <label>_reason column."""
    funnel: dict[int, dict[str, Any]] = {}
    reason_columns = {c[: -len("_reason")] for c in rows.columns if c.endswith("_reason")}
    passed_columns = [c for c in rows.columns if c.endswith("_tests_passed")]
    for row in rows.iter_rows(named=True):
        entry = funnel.setdefault(row["cluster_id"], _empty_entry())
        entry["candidates"] += 1
        if any(row[c] for c in passed_columns):
            entry["tests_passed"] += 1
        if row["keep"]:
            entry["kept" if row["role"] == "counterexample" else "kept_corrections"] += 1
            if row["role"] != "counterexample" and row.get("failure_id") is not None:
                entry["corrected"].add(row["failure_id"])
            continue
        stage = row.get("dropped_by")
        reason = row.get(f"{stage}_reason") if stage in reason_columns else None
        entry["dropped"][f"{stage}: {reason}" if stage else "unknown"] += 1
    return funnel


def add_cluster_funnel(report: dict[str, Any], outputs: pl.LazyFrame) -> dict[str, Any]:
    """The plan report with each cluster's funnel added (zeros for a cluster with no candidates);
    `dropped` is written as one line ("stage: reason=n, ...") so the report's table shows it.

    The plan's `corrected_failure_ids` (the eval items asked again) become `asked_failure_ids`, and
    `corrected_failure_ids` lists those of them whose correction was kept: the eval items the
    dataset trains on, which the user removes from the held-out eval."""
    names = outputs.collect_schema().names()
    wanted = [c for c in names if c in ("cluster_id", "role", "keep", "dropped_by", "failure_id") or c.endswith("_reason") or c.endswith("_tests_passed")]
    funnel = cluster_funnel(outputs.select(wanted).collect()) if "cluster_id" in names else {}
    for cluster in report["clusters"]:
        entry = funnel.get(cluster["id"]) or _empty_entry()
        for name in ("candidates", "kept", "kept_corrections", "tests_passed"):
            cluster[name] = int(entry[name])
        cluster["dropped"] = ", ".join(f"{reason}={n}" for reason, n in sorted(entry["dropped"].items())) or "none"
        asked = cluster.get("corrected_failure_ids", [])
        cluster["asked_failure_ids"] = asked
        cluster["corrected_failure_ids"] = [i for i in asked if i in entry["corrected"]]
    if "corrected_failure_ids" in report:
        report["asked_failure_ids"] = report["corrected_failure_ids"]
        report["corrected_failure_ids"] = [i for cluster in report["clusters"] for i in cluster["corrected_failure_ids"]]
    return report
