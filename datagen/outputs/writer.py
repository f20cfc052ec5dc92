"""Writes the built rows (see datagen.outputs) as a Hugging Face dataset: data/*.parquet plus a README.md dataset card."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import polars as pl
import pyarrow as pa
import yaml

from datagen.run.run_dir import atomic_write_bytes
from datagen.run.tokens import token_lines, usage_record
from datagen.outputs.mix import mix_lines
from datagen.report.view import explain_no_pair
from datagen.report.sections import kept_errors, with_summary
from datagen.report.trust import card_lines

if TYPE_CHECKING:
    from datagen.recipe import LoadedRecipe

ROWS_PER_FILE = 100_000
# datasets 5.2's load_dataset raises for any split of 0 rows, whatever the files or the card say
# (arrow_reader.py: no file instruction for 0 examples; huggingface/datasets#8401); see test_writer.
EMPTY_NOTE = [
    "No row survived the stages (see below). `datasets.load_dataset` cannot load a split with no rows "
    '(datasets 5.2 raises "corresponds to no data"); with `streaming=True`, as '
    '`datasets.Dataset(pyarrow.parquet.read_table("data"))`, or read with polars or pandas, '
    "data/ gives an empty table with every column and its features.",
    "",
]


def _plain_types(schema: pa.Schema) -> pa.Schema:
    """large_string/large_list -> string/list: the types the Hub viewer and most readers expect."""

    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.string()
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return pa.list_(plain(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, plain(f.type)) for f in t])
        return t

    return pa.schema([pa.field(f.name, plain(f.type)) for f in schema])


def write_dataset(
    rows: pl.DataFrame,
    out: Path,
    loaded: "LoadedRecipe",
    stage_stats: list[dict[str, Any]],
    model: str | None = None,
    output_stats: dict[str, Any] | None = None,
) -> int:
    staging = out / ".data.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    n_files = max(1, -(-rows.height // ROWS_PER_FILE))  # one file even for 0 rows: it holds the columns
    features, num_bytes = None, 0
    datasets.disable_progress_bars()
    for i in range(n_files):
        # File by file: converting the whole frame to Arrow at once would copy every row.
        table = rows.slice(i * ROWS_PER_FILE, ROWS_PER_FILE).to_arrow()
        part = datasets.Dataset(table.cast(_plain_types(table.schema)))
        features, num_bytes = part.features, num_bytes + part.data.nbytes
        part.to_parquet(str(staging / f"train-{i:05d}-of-{n_files:05d}.parquet"))
    final = out / "data"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    card = dataset_card(loaded, features, rows.height, stage_stats, model or loaded.recipe.backend.model, output_stats, num_bytes)
    atomic_write_bytes(out / "README.md", card.encode())
    return rows.height


def dataset_card(
    loaded: "LoadedRecipe",
    features: datasets.Features,
    rows: int,
    stage_stats: list[dict[str, Any]],
    model: str,
    output_stats: dict[str, Any] | None = None,
    num_bytes: int = 0,
) -> str:
    recipe = loaded.recipe
    info = datasets.DatasetInfo(features=features)
    templates = ", ".join(f"{t.name} ({t.count if t.count is not None else 'all'})" for t in recipe.templates)
    drawn = recipe.backend.sampling.model_dump(mode="json")
    drawn["seed"] = recipe.sampling_seed  # as the rows record it
    sampling = json.dumps(drawn)
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        # datasets ignores a split entry without num_bytes (and says so on every load)
        "dataset_info": info._to_yaml_dict() | {"splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": rows}]},
        "tags": ["synthetic", "datagen", recipe.output.format],
    }
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {recipe.name}",
        "",
        recipe.description or "Synthetic data made with datagen.",
        "",
        f"- Rows: {rows} ({recipe.output.format} format)",
        *target_lines(output_stats),
        f"- Model: {model} via {recipe.backend.kind}",
        f"- Templates: {templates}",
        f"- Seed: {recipe.seed}; sampling of the generate step: {sampling}" + ("; the chain's own model steps record theirs in each row's `sampling`" if any(s.stage in ("llm", "converse") for s in recipe.stages) else ""),
        "",
        *(EMPTY_NOTE if rows == 0 else []),
        "## Rows through the stages",
        "",
        "| stage | rows in | kept | dropped | drop reasons |",
        "|---|---:|---:|---:|---|",
    ]
    for s in stage_stats:
        reasons = ", ".join(f"{r}: {c}" for r, c in sorted(s["dropped"].items())) or "-"
        dropped = sum(s["dropped"].values())
        errors = kept_errors(s)
        kept = f"{s['kept']} ({errors} with an error, not passed)" if errors else s["kept"]
        lines.append(f"| {s['stage']} | {s['rows_in']} | {kept} | {dropped} | {reasons} |")
    templates_seen = sorted({t for s in stage_stats for t in s["by_template"]})
    if len(stage_stats) > 1 and templates_seen:
        lines += ["", "Kept / in per template and stage:", "",
                  "| template | " + " | ".join(s["stage"] for s in stage_stats) + " |",
                  "|---|" + "---:|" * len(stage_stats)]
        for t in templates_seen:
            cells = [f"{s['by_template'][t][1]} / {s['by_template'][t][0]}" if t in s["by_template"] else "-" for s in stage_stats]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    for stage, section in with_summary(stage_stats):
        lines += section.card_lines(stage["stage"], stage["summary"])
    lines += card_lines(stage_stats, output_stats)
    lines += token_lines(usage_record(stage_stats, recipe.output.prices))
    if output_stats and output_stats.get("format") == "dpo":
        lines += pairs_section(output_stats)
    lines += mix_lines(output_stats)
    generate = stage_stats[0]
    lines += [
        "",
        f"Generation produced {generate['kept']} candidates ({generate.get('tokens', 0)} tokens) "
        f"from {generate['rows_in']} rows in {generate['seconds']:.1f} s.",
        "Every candidate, kept or dropped, with each stage's verdict is in `run/stages/` (Parquet).",
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(portable_paths(recipe.model_dump(mode="json"), loaded.path.parent), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def portable_paths(value: Any, base: Path) -> Any:
    """`value` (a recipe as plain data) with every absolute path that exists on this machine written
    relative to `base` (the recipe's folder), as a recipe file would name it: a card published with
    the dataset does not show the author's folders."""
    if isinstance(value, dict):
        return {k: portable_paths(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v, base) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and "\n" not in value and len(value) < 4096 and os.path.exists(value):
        return os.path.relpath(value, base)
    return value


def target_lines(output_stats: dict[str, Any] | None) -> list[str]:
    """A run to a target: one line, reached or not (datagen.run.target.Outcome.line)."""
    target = (output_stats or {}).get("target")
    return [f"- Target: {target['line']}"] if target else []


def pairs_section(stats: dict[str, Any]) -> list[str]:
    """The pair builder's figures: how many prompts gave pairs, why the others did not, and the
    length difference between chosen and rejected (a DPO model learns length if it is lopsided)."""
    lines = [
        "",
        "## Preference pairs",
        "",
        f"- Strategy: {stats['strategy']} (verdicts of the `{stats['stage']}` stage), {stats['style']} format, "
        f"up to {stats['pairs_per_prompt']} per prompt",
        f"- Pairs: {stats['pairs']} from {stats['prompts_with_pairs']} of {stats['prompts']} prompts",
    ]
    without = "; ".join(f"{k}: {v} ({explain_no_pair(k)})" for k, v in stats["prompts_without_pairs"].items()) or "-"
    skipped = ", ".join(f"{k}: {v}" for k, v in stats["skipped_options"].items()) or "-"
    lines += [f"- Prompts without a pair: {without}", f"- Candidate pairs skipped: {skipped}"]
    if stats.get("max_length_ratio") is not None:
        lines.append(f"- Length ratio limit (longer / shorter side): {stats['max_length_ratio']}")
    figures = [(name, stats[key]) for name, key in (("len(chosen) - len(rejected), chars", "length_delta_chars"), ("score margin", "score_margin")) if key in stats]
    if figures:
        columns = ["mean", "min", "p10", "p25", "median", "p75", "p90", "max"]
        lines += ["", "| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        lines += [f"| {name} | " + " | ".join(str(values[c]) for c in columns) + " |" for name, values in figures]
    if "length_delta_chars" in stats:
        lines += ["", f"Chosen is the longer side in {stats['length_delta_chars']['chosen_longer']:.0%} of pairs."]
    return lines
