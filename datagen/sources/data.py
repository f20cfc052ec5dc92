"""Data sources: the user's own files, named once in a recipe's `data:` section.

Syntax (final)::

    data:                                   # paths relative to the recipe file
      tickets: {path: examples/tickets.jsonl}          # id_column: id (default "id"; absent or null -> row number)
      docs: {path: examples/api_docs, chunks: {size: 1200, overlap: 200, unit: chars}}
      prompts: {path: examples/prompts.jsonl}
    templates:
      - name: ticket_questions              # a template file whose slots may be drawn from data:
        count: 30
        sampling: {temperature: [0.3, 0.7, 1.0]}      # optional, overrides the template's own
      - from: prompts                       # bring-your-own prompts (datagen.sources.prompts)

In a template YAML, `ticket: {from: tickets}` (one row per prompt) and `shots: {from: tickets, k: 3}`
(k rows, a list) are slots drawn from a source (datagen.sources.templates), and `sampling:
{temperature: [0.3, 0.7]}` or `{temperature: {min: 0.2, max: 1.0}}` draws a sampling parameter per
prompt. `--set data.NAME.path=FILE` swaps a file (relative to the working directory).

Formats, from the suffix or the folder's layout:
- `.jsonl` / `.ndjson` / `.json` (one JSON object a line), `.csv` (a header line; every value read
  as text; an empty cell is null), `.parquet`;
- a folder written by `datasets.Dataset.save_to_disk` (its `train` split for a DatasetDict);
- a folder of Parquet or JSONL files as `datasets.load_dataset(FOLDER)` reads it (`data/train-*.parquet`;
  the files whose name starts with `train` when several splits are there);
- a folder of `.txt` / `.md` documents: one row per file, or per chunk with `chunks:` (size and
  overlap in characters, or in tokens of `chunks.tokenizer`, default the embedded model's); a
  chunk row has `id` (`file#n`, n from 0), `file` (path in the folder), `chunk` (n) and `text`.

Every source is a polars LazyFrame with its columns plus `_row` (0-based position) and `_id` (the id
as text): files are scanned, not loaded into Python objects; rows are fetched by position only when
a prompt needs them (`Source.rows`), and bring-your-own prompts stream in record batches
(`Source.batches`). Text files are checked line by line first (UTF-8, one JSON object a line, the
CSV header's field count), so that a bad file is one DatagenError naming the file, the row and,
where one is to blame, the column.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import polars as pl
from pydantic import Field, model_validator

from datagen.errors import DatagenError, first_line
from datagen.paths import RecipePath
from datagen.rows import StrictModel

ROW = "_row"  # 0-based position of the row in its source
ID = "_id"  # the row's id as text: its id column, or the 1-based row number
TEXT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
DOCUMENT_SUFFIXES = (".txt", ".md")
BATCH_ROWS = 16_384  # rows per record batch when a source streams (larger batches cost memory, not speed)


class ChunkConfig(StrictModel):
    """How a folder of documents is cut: windows of `size` units, each starting `size - overlap`
    after the previous one, cut back to the last whitespace when one is in the window's last fifth."""

    size: int = Field(ge=1, le=1_000_000)
    overlap: int = Field(0, ge=0)
    unit: Literal["chars", "tokens"] = "chars"
    tokenizer: RecipePath | None = Field(None, description="unit tokens: a tokenizer.json or a model folder holding one (default: the embedded model's)")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChunkConfig":
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class DataConfig(StrictModel):
    """One source of the recipe's `data:` section."""

    path: RecipePath
    id_column: str | None = Field("id", description="the column holding each row's id; absent (default 'id') or null: the 1-based row number")
    chunks: ChunkConfig | None = Field(None, description="a folder of .txt/.md documents: cut each into chunks")


@dataclass
class Source:
    """An opened source. `frame` has the source's columns plus ROW and ID; `columns` are the
    source's own. Raises nothing after open_source: every check is done there."""

    name: str
    path: Path
    kind: str  # jsonl | csv | parquet | arrow | documents
    frame: pl.LazyFrame
    columns: list[str]
    height: int
    digest: str  # sha256 of the content (every file, for a folder), 20 hex digits
    parquet_files: list[Path] = field(default_factory=list)  # the files a parquet source streams from
    id_column: str | None = None

    def where(self, row: int, column: str | None = None) -> str:
        """'row N' (1-based, with its id) and the column, for an error message."""
        text = f"row {row + 1}"
        if self.id_column is not None:
            found = self.frame.filter(pl.col(ROW) == row).select(ID).collect()
            if found.height:
                text += f" (id {found[ID][0]})"
        return text + (f", column {column!r}" if column is not None else "")

    def fail(self, message: str) -> DatagenError:
        return DatagenError(message, self.path, f"data.{self.name}")

    def check_columns(self, needed: set[str], user: str) -> None:
        """Every column in `needed` exists and is never null; `user` names who needs them."""
        unknown = sorted(needed - set(self.columns))
        if unknown:
            raise self.fail(f"{user} uses the column {unknown[0]!r}, which the source does not have (columns: {', '.join(self.columns)})")
        for column in sorted(needed):
            found = self.frame.filter(pl.col(column).is_null()).select(ROW).head(1).collect()
            if found.height:
                raise self.fail(f"{self.where(found[ROW][0], column)} has no value (null, or an empty CSV cell), and {user} needs it")

    def rows(self, positions: list[int]) -> list[dict[str, Any]]:
        """The rows at `positions` (0-based; repeats allowed), in that order, as dicts of the
        source's columns plus ID."""
        wanted = sorted(set(positions))
        found = self._parquet_rows(wanted) if self.kind == "parquet" else self.frame.filter(pl.col(ROW).is_in(wanted)).collect()
        by_row = {r[ROW]: r for r in found.iter_rows(named=True)}
        return [{k: v for k, v in by_row[p].items() if k != ROW} for p in positions]

    def _parquet_rows(self, wanted: list[int]) -> pl.DataFrame:
        """The rows at sorted positions `wanted`, read one row group at a time (pyarrow), so that
        only the groups holding them are ever in memory."""
        import pyarrow.parquet as pq

        frames, offset, i = [], 0, 0
        for path in self.parquet_files:
            with pq.ParquetFile(path) as file:
                for group in range(file.metadata.num_row_groups):
                    size = file.metadata.row_group(group).num_rows
                    local = []
                    while i < len(wanted) and wanted[i] < offset + size:
                        local.append(wanted[i] - offset)
                        i += 1
                    if local:
                        table = file.read_row_group(group).take(local)
                        frame = pl.from_arrow(table)
                        assert isinstance(frame, pl.DataFrame)
                        frames.append(frame.with_columns(pl.Series(ROW, [offset + p for p in local], dtype=pl.Int64)))
                    offset += size
        return pl.concat(frames, how="vertical_relaxed").with_columns(_id_expr(self.id_column))

    def column_values(self, column: str) -> pl.Series:
        """One column, in row order (for weights)."""
        return self.frame.select(column).collect()[column]

    def batches(self, columns: list[str]) -> Iterator[pl.DataFrame]:
        """The rows in order, `columns` plus ROW and ID, in frames of at most BATCH_ROWS rows: a
        Parquet source streams record batches from its files (pyarrow), the others from the frame."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            offset = 0
            for path in self.parquet_files:
                with pq.ParquetFile(path) as file:
                    read = [c for c in dict.fromkeys(columns + ([self.id_column] if self.id_column else [])) if c not in (ID, ROW)]
                    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=read):
                        frame = pl.from_arrow(batch)
                        assert isinstance(frame, pl.DataFrame)
                        frame = frame.with_row_index(ROW, offset).with_columns(pl.col(ROW).cast(pl.Int64))
                        offset += frame.height
                        yield frame.with_columns(_id_expr(self.id_column)).select(list(dict.fromkeys(columns + [ROW, ID])))
            return
        for frame in self.frame.select(list(dict.fromkeys(columns + [ROW, ID]))).collect().iter_slices(BATCH_ROWS):
            yield frame


def _id_expr(id_column: str | None) -> pl.Expr:
    if id_column is None:
        return (pl.col(ROW) + 1).cast(pl.String).alias(ID)
    return pl.col(id_column).cast(pl.String).alias(ID)


def open_sources(configs: dict[str, DataConfig], recipe_path: Path) -> dict[str, Source]:
    """Every source of a recipe, opened and checked (see open_source)."""
    return {name: open_source(name, config, recipe_path) for name, config in configs.items()}


def open_source(name: str, config: DataConfig, recipe_path: Path | None = None) -> Source:
    """Open and check one source: it exists, reads in its format (UTF-8, well-formed lines, no
    ragged CSV row), has at least one row, and its ids (when it has an id column) are present and
    distinct. Raises DatagenError naming the file, the row and the column."""
    path = Path(config.path)
    field_name = f"data.{name}.path"
    if not path.exists():
        raise DatagenError(f"file not found: {path}", recipe_path, field_name)
    if config.chunks is not None and not path.is_dir():
        raise DatagenError("chunks: needs a folder of .txt/.md documents", recipe_path, f"data.{name}.chunks")
    kind, files = _detect(path, recipe_path, field_name)
    if kind == "documents":
        frame = _documents(path, files, config.chunks)
    elif kind == "jsonl":
        frame = _jsonl(files)
    elif kind == "csv":
        frame = _csv(files)
    elif kind == "parquet":
        frame = _scan(lambda: pl.scan_parquet(files), files[0])
    else:
        frame = _arrow(path)
    columns = frame.collect_schema().names()
    height = _scalar(frame.select(pl.len()), files[0])
    if height == 0:
        raise DatagenError("the source has no rows", path, f"data.{name}")
    id_column = config.id_column
    if id_column is not None and id_column not in columns:
        if "id_column" in config.model_fields_set:
            raise DatagenError(f"no id column {id_column!r} (columns: {', '.join(columns)})", path, f"data.{name}.id_column")
        id_column = None  # the default 'id' is optional: rows are numbered instead
    frame = frame.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
    frame = frame.with_columns(_id_expr(id_column))
    source = Source(name, path, kind, frame, columns, height, _digest(files), files if kind == "parquet" else [], id_column)
    if id_column is not None:
        source.check_columns({id_column}, f"the id column of data.{name}")
        counts = frame.group_by(ID).agg(pl.len().alias("n"), pl.col(ROW).sort().get(1, null_on_oob=True)).filter(pl.col("n") > 1).sort(ROW).head(1).collect()
        if counts.height:
            raise DatagenError(f"{source.where(counts[ROW][0], id_column)}: the id {counts[ID][0]!r} is not unique", path, f"data.{name}")
    return source


def _detect(path: Path, recipe_path: Path | None, field_name: str) -> tuple[str, list[Path]]:
    if path.is_file():
        kind = TEXT_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DatagenError(f"unknown format {path.suffix!r} (known: {', '.join(TEXT_SUFFIXES)}, or a folder)", recipe_path, field_name)
        return kind, [path]
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return "arrow", sorted(path.rglob("*.arrow"))
    for suffix, kind in ((".parquet", "parquet"), (".jsonl", "jsonl")):
        files = sorted(p for p in path.rglob(f"*{suffix}") if not any(part.startswith(".") for part in p.relative_to(path).parts))
        if files:
            train = [p for p in files if p.name.startswith("train")]
            return kind, train or files
    documents = sorted(p for p in path.rglob("*") if p.suffix.lower() in DOCUMENT_SUFFIXES and p.is_file())
    if documents:
        return "documents", documents
    raise DatagenError("the folder holds no data (.parquet, .jsonl, a save_to_disk dataset, or .txt/.md documents)", path, field_name)


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]


def _scalar(frame: pl.LazyFrame, path: Path) -> int:
    try:
        return int(frame.collect().item())
    except pl.exceptions.PolarsError as err:
        raise DatagenError(f"cannot read: {first_line(err)}", path) from None


def _scan(scan, path: Path) -> pl.LazyFrame:
    try:
        frame = scan()
        frame.collect_schema()
        return frame
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DatagenError(f"cannot read: {first_line(err)}", path) from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of a UTF-8 file, read in blocks; a byte sequence that is not
    UTF-8 is a DatagenError naming its line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    number, pending = 1, ""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            try:
                text = pending + decoder.decode(block)
            except UnicodeDecodeError as err:
                line = number + (pending + block[: err.start].decode("utf-8", "replace")).count("\n")
                raise DatagenError(f"line {line}: not UTF-8 text (byte 0x{block[err.start]:02x}); save the file as UTF-8", path) from None
            parts = text.split("\n")
            pending = parts.pop()
            for part in parts:
                yield number, part
                number += 1
        try:
            pending += decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DatagenError(f"line {number}: not UTF-8 text (the file ends inside a character)", path) from None
    if pending:
        yield number, pending


def _jsonl(files: list[Path]) -> pl.LazyFrame:
    rows = 0
    for path in files:
        row = 0
        for number, line in _lines(path):
            if not line.strip():
                continue
            row += 1
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatagenError(f"row {row} (line {number}): not JSON ({err.msg})", path) from None
            if not isinstance(value, dict):
                raise DatagenError(f"row {row} (line {number}): not a JSON object", path)
        rows += row
    if not rows:
        return pl.LazyFrame()
    return _scan(lambda: pl.scan_ndjson(files, infer_schema_length=None), files[0])


def _csv(files: list[Path]) -> pl.LazyFrame:
    for path in files:
        lines = (line + "\n" for _, line in _lines(path))
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            raise DatagenError("no header line", path)
        if len(set(header)) != len(header) or not all(h.strip() for h in header):
            raise DatagenError("the header needs distinct, non-empty column names", path)
        for row, record in enumerate(reader, start=1):
            if record and len(record) != len(header):
                if len(record) > len(header):
                    raise DatagenError(f"row {row} (line {reader.line_num}): {len(record)} fields, the header has {len(header)} (a value with an unquoted comma?)", path)
                raise DatagenError(f"row {row} (line {reader.line_num}): {len(record)} fields, the header has {len(header)}: column {header[len(record)]!r} is missing", path)
    return _scan(lambda: pl.scan_csv(files, infer_schema=False), files[0])


def _arrow(path: Path) -> pl.LazyFrame:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; one line for the user
        raise DatagenError(f"cannot read the saved dataset: {first_line(err)}", path) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds and len(ds) != 1:
            raise DatagenError(f"a DatasetDict without a 'train' split (splits: {', '.join(ds)})", path)
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    table = ds.data.table  # memory-mapped Arrow
    if ds._indices is not None:  # a select/shuffle kept as an index mapping
        table = ds.flatten_indices().data.table
    frame = pl.from_arrow(table, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()


def _documents(root: Path, files: list[Path], chunks: ChunkConfig | None) -> pl.LazyFrame:
    cut = _chunker(chunks) if chunks is not None else None
    rows: list[dict[str, Any]] = []
    for path in files:
        text = "\n".join(line for _, line in _lines(path))
        name = path.relative_to(root).as_posix()
        pieces = cut(text) if cut is not None else [text]
        for n, piece in enumerate(p for p in pieces if p.strip()):
            rows.append({"id": f"{name}#{n}", "file": name, "chunk": n, "text": piece})
    return pl.DataFrame(rows, schema={"id": pl.String, "file": pl.String, "chunk": pl.Int64, "text": pl.String}).lazy()


def _chunker(config: ChunkConfig):
    if config.unit == "chars":
        return lambda text: chunk_spans(text, list(range(len(text) + 1)), config.size, config.overlap)
    tokenizer = _tokenizer(config.tokenizer)

    def cut(text: str) -> list[str]:
        offsets = [start for start, _ in tokenizer.encode(text, add_special_tokens=False).offsets]
        return chunk_spans(text, offsets + [len(text)], config.size, config.overlap)

    return cut


def chunk_spans(text: str, bounds: list[int], size: int, overlap: int) -> list[str]:
    """`text` cut into windows of `size` units where unit i starts at character bounds[i]
    (bounds ends with len(text)); consecutive windows share `overlap` units. A window that would
    end inside a word ends instead at the last whitespace in its last fifth, if any."""
    units = len(bounds) - 1
    pieces, start = [], 0
    while start < units:
        end = min(start + size, units)
        if end < units:
            floor = start + max(1, size - size // 5)
            for e in range(end, floor - 1, -1):
                if text[bounds[e] - 1].isspace():
                    end = e
                    break
        pieces.append(text[bounds[start]:bounds[end]].strip())
        if end >= units:
            break
        start = max(end - overlap, start + 1)
    return pieces


def _tokenizer(ref: str | None):
    from tokenizers import Tokenizer

    if ref is None:
        from datagen.llm.embedded import embedded_model_dir

        ref = str(embedded_model_dir())
    path = Path(ref)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DatagenError(f"no tokenizer.json at {path}", None, "chunks.tokenizer")
    return Tokenizer.from_file(str(file))
