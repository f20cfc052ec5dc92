"""Bring-your-own prompts: a data source whose rows ARE the prompts.

A recipe's `templates:` entry `{from: prompts}` makes one prompt per row of the source `prompts`:
its `column` (default `prompt`) is the user turn, after an optional `system` message, or its
`messages_column` holds whole conversations (lists of {role, content}, the last one the user's),
used as they are; `reference_column` (default `reference`, when the source has it) fills the
prompt's `reference` (what a judge with show_reference, or a verifier, compares against). `count` takes that many rows, drawn without replacement from the seed and kept in
file order; `sampling` draws sampling parameters per prompt (datagen.sources.slots). Each prompt
row has template_id = the entry's name (the source's by default), `slots` = {source: id},
`source_ids` = ["SOURCE:ID"], and a prompt_id from the source, the id and the content, so that a
changed row is a new prompt. Rows stream through in record batches (Source.batches): only one
batch at a time is ever Python objects.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterator

import numpy as np
import polars as pl

from datagen.errors import DatagenError
from datagen.sources.data import ID, ROW, Source
from datagen.sources.slots import draw_sampling, unit

DEFAULT_COLUMN = "prompt"
ROLES = ("system", "user", "assistant")


def check_prompt_source(use, source: Source, field: str, recipe_path=None) -> None:
    """The columns a bring-your-own entry reads exist and hold what it needs in every row: text for
    `column`, conversations ending with a user turn for `messages_column`. Raises DatagenError
    naming the file, the row and the column."""
    user = f"{field} (from: {source.name})"
    if use.reference_column is not None and use.reference_column not in source.columns:
        raise source.fail(f"{user} reads references from the column {use.reference_column!r}, which the source does not have (columns: {', '.join(source.columns)})")
    if use.count is not None and use.count > source.height:
        raise DatagenError(f"count {use.count} is more than the {source.height} rows of the source {source.name!r}", recipe_path, f"{field}.count")
    if use.messages_column is None:
        column = use.column or DEFAULT_COLUMN
        source.check_columns({column}, user)
        dtype = source.frame.collect_schema()[column]
        if dtype != pl.String:
            raise source.fail(f"{user} reads the column {column!r} as the user turn, but it holds {dtype}, not text")
        empty = source.frame.filter(pl.col(column).str.strip_chars() == "").select(ROW).head(1).collect()
        if empty.height:
            raise source.fail(f"{source.where(empty[ROW][0], column)} is empty, and {user} needs it")
        return
    column = use.messages_column
    source.check_columns({column}, user)
    dtype = source.frame.collect_schema()[column]
    fields = {f.name for f in dtype.inner.fields} if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct) else set()
    if not {"role", "content"} <= fields:
        raise source.fail(f"{user}: the column {column!r} must hold lists of {{role, content}} messages (it holds {dtype})")
    message = pl.col(column)
    bad = (
        (message.list.len() == 0)
        | (message.list.last().struct.field("role") != "user")
        | message.list.eval(~pl.element().struct.field("role").is_in(ROLES) | pl.element().struct.field("content").is_null()).list.any()
    )
    found = source.frame.filter(bad).select(ROW).head(1).collect()
    if found.height:
        raise source.fail(f"{source.where(found[ROW][0], column)}: a conversation of messages with roles {'/'.join(ROLES)} and content, the last one the user's")


def _selected(use, source: Source, seed: int) -> np.ndarray | None:
    """The row positions to use (sorted), or None for all."""
    if use.count is None or use.count == source.height:
        return None
    rng = np.random.default_rng([seed, int(unit(seed, "prompts", use.name) * 2**32)])
    return np.sort(rng.choice(source.height, use.count, replace=False))


def source_prompts(use, source: Source, seed: int, extra: dict[str, pl.DataType]) -> Iterator[pl.DataFrame]:
    """The prompt frames of a bring-your-own entry, batch by batch, in PROMPT_SCHEMA plus `extra`
    (source_ids, and the sampling columns)."""
    from datagen.llm.generate import MESSAGE, PROMPT_SCHEMA

    column = use.messages_column or use.column or DEFAULT_COLUMN
    reference = use.reference_column or ("reference" if "reference" in source.columns else None)
    wanted = _selected(use, source, seed)
    for batch in source.batches([column] + ([reference] if reference and reference != column else [])):
        if wanted is not None:
            batch = batch.filter(pl.col(ROW).is_in(wanted[(wanted >= batch[ROW].min()) & (wanted <= batch[ROW].max())]))
            if not batch.height:
                continue
        if use.messages_column is not None:
            messages = pl.col(column).list.eval(pl.struct(pl.element().struct.field("role").cast(pl.String), pl.element().struct.field("content").cast(pl.String)))
            contents = [json.dumps(m) for m in batch[column].to_list()]
        else:
            turns = [pl.struct(role=pl.lit("user"), content=pl.col(column))]
            if use.system:
                turns.insert(0, pl.struct(role=pl.lit("system"), content=pl.lit(use.system)))
            messages = pl.concat_list(turns)
            contents = [json.dumps([use.system, text]) for text in batch[column]]
        if reference is not None:  # a changed reference is a new prompt too: every row of it carries the reference
            contents = [json.dumps([c, r]) for c, r in zip(contents, batch[reference].cast(pl.String))]
        ids = batch[ID].to_list()
        prompt_ids = [hashlib.sha256(json.dumps([use.name, source.name, i, c]).encode()).hexdigest()[:16] for i, c in zip(ids, contents)]
        frame = batch.select(messages.cast(pl.List(MESSAGE)).alias("messages")).with_columns(
            prompt_id=pl.Series(prompt_ids, dtype=pl.String),
            template_id=pl.lit(use.name, dtype=pl.String),
            slots=pl.Series([json.dumps({source.name: i}) for i in ids], dtype=pl.String),
            seed=pl.lit(seed, dtype=pl.Int64),
            source_ids=pl.Series([[f"{source.name}:{i}"] for i in ids], dtype=pl.List(pl.String)),
        )
        if reference is not None:
            frame = frame.with_columns(batch[reference].cast(pl.String).alias("reference"))
        if use.sampling is not None:
            drawn = [draw_sampling(use.sampling, seed, pid) for pid in prompt_ids]
            frame = frame.with_columns(pl.Series(name, [d.get(name) for d in drawn], dtype=pl.Float64) for name in extra if name in drawn[0])
        schema = PROMPT_SCHEMA | extra
        yield frame.select(pl.col(name) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name) for name, dtype in schema.items())
