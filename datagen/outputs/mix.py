"""The final mix (`output.mix`): a weight per row from a score formula, a rank, the top k rows per
template or slot value, and real rows from a data source beside the generated ones.

Order of operations on the built rows (datagen.outputs.build_output):
  1. `weight`: the formula (datagen.outputs.formula) over the rows' numeric columns -> `weight`.
  2. `rank_by` (default: the weight when there is one): `rank` 1 = best within each group of
     `per` (the whole output without `per`); rows without a value rank last, ties keep row order.
     The output is ordered by group, then rank.
  3. `top_k`: only the k best-ranked rows of each group are written.
  4. `real`: rows of a data source written as they are (a ticket's text as the user turn, its real
     answer as the assistant turn), `count` of them or a `ratio` of the written rows, sampled
     without replacement with the recipe seed. They carry `origin: real`, `source_ids`
     (["NAME:ID"]) and `weight` (`real.weight`, default: the highest synthetic weight); every
     generated row carries `origin: synthetic`.
"""

from __future__ import annotations

import difflib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from datagen.errors import DatagenError
from datagen.outputs.formula import Formula, FormulaError, parse_formula
from datagen.rows import StrictModel
from datagen.sources.templates import MAX_RENDERED_CHARS, _environment, _undeclared, bounded_rendering

if TYPE_CHECKING:
    from datagen.sources.data import Source

ORIGIN, REAL, SYNTHETIC = "origin", "real", "synthetic"
WEIGHT, RANK, SOURCE_IDS = "weight", "rank", "source_ids"
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})


class RealRowsConfig(StrictModel):
    """Real rows in the mix: each row of the data source `from` becomes one output row whose user
    turn is `user` (Jinja over the row's columns, in the templates' sandbox) and whose assistant
    turn is the row's `answer` column. Rows whose answer is null or blank are left out (counted)."""

    source: str = Field(alias="from", pattern=r"^[A-Za-z0-9_.-]+$", description="the data source (a name under data:) whose rows are written")
    system: str | None = Field(None, description="Jinja over the source row's columns: the system turn, if any")
    user: str = Field(description="Jinja over the source row's columns: the user turn (e.g. '{{ subject }}\\n\\n{{ body }}')")
    answer: str = Field("answer", description="the column holding the real answer (the assistant turn)")
    count: int | None = Field(None, ge=0, le=1_000_000, description="real rows to write (all there are, if fewer)")
    ratio: float | None = Field(None, ge=0.0, lt=1.0, description="real rows / all written rows, rounded (capped by the rows there are)")
    weight: float | None = Field(None, allow_inf_nan=False, description="the weight of a real row; default: the highest weight of a generated row")

    model_config = StrictModel.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _count_or_ratio(self) -> "RealRowsConfig":
        if self.count is not None and self.ratio is not None:
            raise ValueError("give count or ratio, not both")
        self.compiled()
        return self

    def compiled(self) -> dict[str, jinja2.Template]:
        env, out = _environment(), {}
        for role in ("system", "user"):
            text = getattr(self, role)
            if text is None:
                continue
            try:
                out[role] = env.from_string(text)
            except jinja2.TemplateSyntaxError as err:
                raise ValueError(f"{role}: Jinja syntax error on line {err.lineno}: {err.message}") from None
        return out

    def wanted(self, synthetic: int, available: int) -> int:
        """How many real rows to write beside `synthetic` generated ones, given `available`."""
        if self.count is not None:
            n = self.count
        elif self.ratio is not None:
            n = round(self.ratio * synthetic / (1 - self.ratio))
        else:
            n = available
        return min(n, available)


class MixConfig(StrictModel):
    """`output.mix`: see the module docstring. Formulas are checked when the recipe is read; the
    columns they name when the rows are built (a missing or non-numeric column: DatagenError)."""

    weight: str | None = Field(None, description="formula over numeric columns -> the `weight` column, e.g. '(2 * grounding_supported + grounding_relevant) / 15'")
    rank_by: str | None = Field(None, description="formula to rank by, best (highest) first -> the `rank` column; default: the weight")
    per: list[str] = Field(default_factory=list, description="columns or template slots whose values form the groups ranked and cut to top_k (e.g. [template_id, persona])")
    top_k: int | None = Field(None, ge=1, le=1_000_000, description="write only the k best-ranked rows of each group")
    real: RealRowsConfig | None = None

    @field_validator("weight", "rank_by")
    @classmethod
    def _parses(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                parse_formula(text)
            except FormulaError as err:
                raise ValueError(str(err)) from None
        return text

    @model_validator(mode="after")
    def _coherent(self) -> "MixConfig":
        if self.top_k is not None and self.ranking is None:
            raise ValueError("top_k needs rank_by or weight (the value the best rows are picked by)")
        if self.per and self.ranking is None:
            raise ValueError("per groups the ranking; it needs rank_by or weight")
        if len(set(self.per)) != len(self.per):
            raise ValueError("per lists a column twice")
        return self

    @property
    def ranking(self) -> str | None:
        return self.rank_by if self.rank_by is not None else self.weight

    def check_stages(self, stages: list[Any]) -> None:
        """Before anything runs: a formula column named after a judge's label (`judge_...`) must be
        one that judge writes (a misspelt criterion, say). ValueError naming the closest column.
        Other names (a sampling slot, another step's figure) are checked when the rows are built."""
        written = {stage.label: stage.writes() for stage in stages if stage.stage == "judge"}
        for field, formula in self.formulas().items():
            for name in formula.columns:
                owners = [label for label in written if name.startswith(f"{label}_")]
                if owners and not any(name in written[label] for label in owners):
                    columns = sorted(c for label in owners for c in written[label])
                    close = difflib.get_close_matches(name, columns, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f" (it writes {', '.join(columns)})"
                    raise ValueError(f"output.mix.{field}: the step {owners[0]!r} writes no column {name!r}{hint}")

    def check_sources(self, names: Any) -> None:
        """`real.from` must name a data source of the recipe (`names`: its data: section)."""
        if self.real is not None and self.real.source not in names:
            known = ", ".join(names) or "none"
            raise ValueError(f"output.mix.real.from: no data source {self.real.source!r} (data: {known})")

    def formulas(self) -> dict[str, Formula]:
        """field -> parsed formula, for the fields that hold one."""
        return {name: parse_formula(text) for name, text in (("weight", self.weight), ("rank_by", self.ranking)) if text is not None}


def _group_keys(rows: pl.DataFrame, per: list[str], source: str | None) -> list[pl.Expr]:
    """The `per` names as expressions: a column as it is, else the slot of that name (from the
    rows' `slots` JSON)."""
    keys = []
    for name in per:
        if name in rows.columns:
            if rows.schema[name].is_nested():
                raise DatagenError(f"per names {name!r}, which holds {rows.schema[name]}, not one value per row", source, "output.mix.per")
            keys.append(pl.col(name).cast(pl.String).alias(f"_per_{name}"))
        elif "slots" in rows.columns:
            keys.append(pl.col("slots").str.json_path_match(f"$.{name}").alias(f"_per_{name}"))
        else:
            raise DatagenError(f"per names {name!r}, which is neither a column of the output rows nor a slot", source, "output.mix.per")
    return keys


def _check_per(rows: pl.DataFrame, per: list[str], source: str | None) -> None:
    if not rows.height or "slots" not in rows.columns:
        return
    slot_names = set()
    for text in rows["slots"].drop_nulls().unique().head(1000):
        slot_names |= set(json.loads(text))
    for name in per:
        if name not in rows.columns and name not in slot_names:
            known = ", ".join(sorted(slot_names)) or "none"
            raise DatagenError(f"per names {name!r}, which is neither a column of the output rows nor a slot (slots: {known})", source, "output.mix.per")


def _evaluate(formula: Formula, rows: pl.DataFrame, field: str, source: str | None) -> pl.Series:
    try:
        return formula.evaluate(rows)
    except FormulaError as err:
        raise DatagenError(str(err), source, f"output.mix.{field}") from None


def apply_mix(rows: pl.DataFrame, mix: MixConfig, source: str | None = None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Steps 1-3 of the module docstring on the built (generated) rows. Returns the rows to write
    and the figures for the card. DatagenError (field output.mix.*) for a formula column the rows
    lack or that is not numeric, or a `per` name that is neither a column nor a slot."""
    stats: dict[str, Any] = {}
    formulas = mix.formulas()
    if rows.height == 0:  # nothing survived: a step that never saw a row may not have its columns
        missing = {c for f in formulas.values() for c in f.columns} - set(rows.columns)
        rows = rows.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in sorted(missing))
    if "weight" in formulas:
        rows = rows.with_columns(_evaluate(formulas["weight"], rows, "weight", source).alias(WEIGHT))
    if "rank_by" in formulas:
        value = rows[WEIGHT] if mix.rank_by is None else _evaluate(formulas["rank_by"], rows, "rank_by", source)
        _check_per(rows, mix.per, source)
        keys = _group_keys(rows, mix.per, source)
        key_names = [f"_per_{name}" for name in mix.per]
        ranked = rows.with_columns(*keys, value.alias("_rank_value")).with_row_index("_row")
        # Best first within each group; nulls last; equal values keep row order.
        ranked = ranked.sort([*key_names, "_rank_value", "_row"], descending=[False] * len(key_names) + [True, False], nulls_last=True)
        ranked = ranked.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(key_names or pl.lit(0)).alias(RANK))
        before = ranked.height
        groups = ranked.select(key_names).n_unique() if key_names else (1 if before else 0)
        unranked = int(ranked["_rank_value"].null_count())
        if mix.top_k is not None:
            ranked = ranked.filter(pl.col(RANK) <= mix.top_k)
        stats["rank"] = {"by": formulas["rank_by"].text, "per": mix.per, "groups": groups, "unranked": unranked}
        if mix.top_k is not None:
            stats["rank"] |= {"top_k": mix.top_k, "rows_in": before, "kept": ranked.height}
        rows = ranked.drop(["_row", "_rank_value", *key_names])
    # Distributions over the rows written (after the top-k cut): the weight and every score it reads.
    if "weight" in formulas:
        stats["weight"] = {"formula": formulas["weight"].text} | distribution(rows[WEIGHT])
    read = sorted({c for f in formulas.values() for c in f.columns})
    if read:
        stats["scores"] = {c: distribution(rows[c].cast(pl.Float64)) for c in read}
    return rows, stats


def distribution(values: pl.Series) -> dict[str, Any]:
    """count, nulls, mean and quantiles (min, p10, p25, median, p75, p90, max) of a numeric series."""
    present = values.drop_nulls().cast(pl.Float64).to_numpy()
    figures: dict[str, Any] = {"rows": len(values), "null": int(values.null_count())}
    if len(present):
        names = ("min", "p10", "p25", "median", "p75", "p90", "max")
        quantiles = np.quantile(present, [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1])
        figures |= {"mean": round(float(present.mean()), 4)} | {k: round(float(v), 4) for k, v in zip(names, quantiles)}
    return figures


def _render(template: jinja2.Template, row: dict[str, Any], role: str, where: str, recipe: str | None) -> str:
    try:
        text = template.render(**row).strip()
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, RecursionError) as err:
        raise DatagenError(f"{where}: {role}: {type(err).__name__}: {err}", recipe, f"output.mix.real.{role}") from None
    if len(text) > MAX_RENDERED_CHARS:
        raise DatagenError(f"{where}: {role} renders to {len(text)} characters, more than {MAX_RENDERED_CHARS}", recipe, f"output.mix.real.{role}")
    return text


def real_rows(source: "Source", config: RealRowsConfig, fmt: str, synthetic: int, seed: int, weight: float | None, recipe: str | None = None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The real rows to write beside `synthetic` generated rows, from an opened data source
    (datagen.sources.data.Source), in the output format `fmt` (sft: `messages`; prompt_completion:
    `prompt` + `completion`), with `origin: real`, `source_ids` (["NAME:ID"]) and `weight` when given.

    Only the answer column is read for every row; the picked rows (sampled without replacement
    with `seed`, written in the source's order) are fetched by position. The answer is optional in
    a source's data contract: rows without one, or a source without the column, give no real row.
    DatagenError (naming `recipe`, the output.mix.real field, the source's file and the row) for a
    user/system turn that cannot render for a picked row (see check_real_source, run before)."""
    from datagen.sources.data import ID, ROW

    name = config.source
    if config.answer in source.columns:
        answer = pl.col(config.answer).cast(pl.String)
        usable = source.frame.filter(answer.is_not_null() & (answer.str.strip_chars() != "")).select(ROW).collect()[ROW].to_list()
    else:
        usable = []
    n = config.wanted(synthetic, len(usable))
    picked = sorted(random.Random(f"{seed}:mix.real:{name}").sample(usable, n))
    fetched = source.rows(picked)
    # As Source.where words it, without a lookup per row.
    places = [f"data source {name!r} ({source.path}), row {p + 1}" + (f" (id {row[ID]})" if source.id_column is not None else "") for p, row in zip(picked, fetched)]

    def render() -> list[dict[str, Any]]:
        templates, records = config.compiled(), []
        for where, row in zip(places, fetched):
            variables = {k: v for k, v in row.items() if k != ID}
            turns = [{"role": role, "content": _render(templates[role], variables, role, where, recipe)} for role in ("system", "user") if role in templates]
            turns = [t for t in turns if t["content"]]
            if not any(t["role"] == "user" for t in turns):
                raise DatagenError(f"{where}: user renders to an empty message", recipe, "output.mix.real.user")
            reply = {"role": "assistant", "content": str(row[config.answer])}
            head = {"messages": turns + [reply]} if fmt == "sft" else {"prompt": turns, "completion": [reply]}
            records.append(head | {ORIGIN: REAL, SOURCE_IDS: [f"{name}:{row[ID]}"]})
        return records

    # In the templates' bounded child (time and memory limits), like every other rendering.
    records = bounded_rendering(render, Path(recipe or source.path), len(picked)) if picked else []
    schema = ({"messages": pl.List(MESSAGE)} if fmt == "sft" else {"prompt": pl.List(MESSAGE), "completion": pl.List(MESSAGE)}) | {ORIGIN: pl.String, SOURCE_IDS: pl.List(pl.String)}
    frame = pl.DataFrame(records, schema=schema)
    if weight is not None:
        frame = frame.with_columns(pl.lit(weight, dtype=pl.Float64).alias(WEIGHT))
    wanted = config.count if config.count is not None else (f"ratio {config.ratio}" if config.ratio is not None else "all")
    stats = {"source": name, "rows": source.height, "without_answer": source.height - len(usable), "wanted": wanted, "written": frame.height}
    if config.answer not in source.columns:
        stats["no_answer_column"] = config.answer
    return frame, stats


def check_real_source(config: RealRowsConfig, source: "Source", recipe: Path | str | None = None) -> None:
    """Before anything runs: every column the real rows' user/system turns read exists in the
    source and is never null there (datagen.sources.data.Source.check_columns: DatagenError naming
    the file, row and column). The answer column may be missing or null (no real row then)."""
    env = _environment()
    needed = set()
    for text in (config.system, config.user):
        if text is not None:
            needed |= _undeclared(env.parse(text))
    unknown = sorted(needed - set(source.columns))
    if unknown:
        raise DatagenError(f"the real rows' turns use the column {unknown[0]!r}, which the data source {config.source!r} ({source.path}) does not have (columns: {', '.join(source.columns)})", recipe, "output.mix.real")
    source.check_columns(needed, "output.mix.real")


def mix_lines(stats: dict[str, Any] | None) -> list[str]:
    """The dataset card's lines for the mix: origin counts, the weight and score distributions,
    the ranking and top-k cut. Empty without a mix."""
    mix = (stats or {}).get("mix")
    if not mix:
        return []
    lines = ["", "## Mix", ""]
    origin = mix.get("origin", {})
    lines.append(f"- Rows by origin: synthetic {origin.get(SYNTHETIC, 0)}, real {origin.get(REAL, 0)}")
    if "real" in mix:
        r = mix["real"]
        missing = f"; it has no column `{r['no_answer_column']}`" if "no_answer_column" in r else ""
        lines.append(f"- Real rows: {r['written']} from the data source `{r['source']}` ({r['rows']} rows, {r['without_answer']} without an answer{missing})")
    if "rank" in mix:
        r = mix["rank"]
        per = ", ".join(r["per"]) or "the whole output"
        lines.append(f"- Ranked by `{r['by']}` per {per} ({r['groups']} groups; {r['unranked']} rows without a value rank last)")
        if "top_k" in r:
            lines.append(f"- Top {r['top_k']} per group: {r['kept']} of {r['rows_in']} rows kept")
    figures = ([("weight", mix["weight"])] if "weight" in mix else []) + list(mix.get("scores", {}).items())
    if figures:
        if "weight" in mix:
            lines.append(f"- Weight: `{mix['weight']['formula']}` (synthetic rows; null where a score is missing)")
        columns = ["rows", "null", "mean", "min", "p10", "p25", "median", "p75", "p90", "max"]
        lines += ["", "| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        lines += [f"| {name} | " + " | ".join(str(values.get(c, "-")) for c in columns) + " |" for name, values in figures]
    return lines
