"""The LLM step: a prompt (Jinja over the row's columns and its template's slots) sent to a model,
n completions per row, each a child row; an optional parser turns the text into named columns.

Generation is the first LLM step (datagen.llm.generate); this one answers, rewrites or extends what an
earlier step wrote. A child row's `messages` is the request it sent and `completion` its text, so
SFT and DPO builders work on the last step's output as on generation's; the parent's text stays as
`generate_completion` (first generation's) and `<label>_completion` (each LLM step's own), and every other column of the parent is carried. Provenance is a tree:
`parent_id` (the parent's candidate_id), `group_id` (the same: the row this step expanded, which
group-scope steps such as vote group by) and `lineage` (the ancestors' ids, prompt first). Child ids
are `<parent id>-<label>-<k>`; each request's seed comes from the sampling seed, the step's label and
the parent's id, so a shard reproduces on its own whatever the batch holds.

A failure on one row (a prompt that cannot render, a failed request, a text the parser cannot read)
is a verdict on that row (`render_error`, `generate_error`, `parse_error`), never a crashed run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import jinja2
import jsonschema
import polars as pl
import regex
from pydantic import Field, PrivateAttr, model_validator

from datagen.text import strict_json
from datagen.llm import ChatRequest, make_backend
from datagen.llm.stage_model import StageModel
from datagen.llm.generate import request_seed
from datagen.rows import BackendConfig, SamplingConfig, StrictModel
from datagen.steps.base import COLUMN, StageConfigBase, Step, StepContext
from datagen.sources.templates import MAX_RENDERED_CHARS, _environment, _undeclared, bounded_rendering

# Names a prompt may use besides the row's columns: every slot of the row's template (`slots`).
SLOTS_VARIABLE = "slots"


class JsonParser(StrictModel):
    """Structured output: the request carries the schema; each top-level property becomes a column
    (strings as they are, other values as JSON text)."""

    kind: Literal["json"] = "json"
    json_schema: dict[str, Any] = Field(alias="schema", description="a JSON schema with an object at the top")

    model_config = StrictModel.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _valid_schema(self) -> "JsonParser":
        try:
            jsonschema.Draft202012Validator.check_schema(self.json_schema)
        except jsonschema.SchemaError as err:
            raise ValueError(f"schema: not a valid JSON schema: {err.message}") from None
        properties = self.json_schema.get("properties")
        if self.json_schema.get("type") != "object" or not isinstance(properties, dict) or not properties:
            raise ValueError("schema: must be an object with properties (each becomes a column)")
        for name in properties:
            if not re.fullmatch(COLUMN, name):
                raise ValueError(f"schema: property {name!r} cannot be a column name (letters, digits, _)")
        return self

    def columns(self) -> list[str]:
        return list(self.json_schema["properties"])

    def parse(self, text: str) -> dict[str, str | None]:
        value = strict_json.loads(text.strip())
        jsonschema.Draft202012Validator(self.json_schema).validate(value)
        return {name: _as_text(value.get(name)) for name in self.columns()}


class RegexParser(StrictModel):
    """Named groups of the first match become columns (the `regex` package, time-limited per match)."""

    kind: Literal["regex"] = "regex"
    pattern: str
    timeout_seconds: float = Field(1.0, gt=0, le=60)
    _compiled: Any = PrivateAttr()

    @model_validator(mode="after")
    def _compile(self) -> "RegexParser":
        try:
            self._compiled = regex.compile(self.pattern, regex.DOTALL)
        except regex.error as err:
            raise ValueError(f"invalid regular expression {self.pattern!r}: {err}") from None
        if not self._compiled.groupindex:
            raise ValueError(f"pattern {self.pattern!r} has no named group (?P<name>...) to write a column")
        return self

    def columns(self) -> list[str]:
        return list(self._compiled.groupindex)

    def parse(self, text: str) -> dict[str, str | None]:
        match = self._compiled.search(text, timeout=self.timeout_seconds)
        if match is None:
            raise ValueError(f"no match of /{self.pattern}/")
        return {name: match.group(name) for name in self.columns()}


class SectionsParser(StrictModel):
    """'Problem: ... Solution: ...' texts: each heading (at the start of a line, followed by a
    colon, any case, optionally in ** or #) starts a section; column = the heading in snake case."""

    kind: Literal["sections"] = "sections"
    headings: list[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9 _]*$")]] = Field(min_length=1)

    def columns(self) -> list[str]:
        return [re.sub(r"\W+", "_", h.strip().lower()) for h in self.headings]

    def parse(self, text: str) -> dict[str, str | None]:
        names = "|".join(re.escape(h) for h in self.headings)
        marks = list(re.finditer(rf"(?im)^[ \t#*]*({names})[ \t*]*:[ \t*]*", text))
        found: dict[str, str] = {}
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            column = re.sub(r"\W+", "_", mark.group(1).strip().lower())
            found.setdefault(column, text[mark.end() : end].strip())
        missing = [c for c in self.columns() if not found.get(c)]
        if missing:
            raise ValueError(f"no {missing[0]!r} section")
        return {c: found[c] for c in self.columns()}


Parser = Annotated[Union[JsonParser, RegexParser, SectionsParser], Field(discriminator="kind")]


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


class LlmConfig(StageConfigBase):
    stage: Literal["llm"] = "llm"
    expands: ClassVar[bool] = True
    needs_context: ClassVar[bool] = True

    system: str | None = Field(None, description="Jinja over the row's columns and its template's slots")
    user: str = Field(description="Jinja over the row's columns and its template's slots")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="n completions per row, each a child row")
    backend: BackendConfig | None = Field(None, description="the model to ask; the generator's when unset")
    parser: Parser | None = None
    vary: dict[Annotated[str, Field(pattern=COLUMN)], list[str]] | None = Field(
        None,
        description="one column -> values: one request per value for every row (the value is a prompt variable and the child's column), e.g. {tone: [formal, playful, concise]}",
    )

    @model_validator(mode="after")
    def _one_varied_column(self) -> "LlmConfig":
        if self.vary is not None:
            if len(self.vary) != 1 or not all(self.vary.values()) or any(len(set(v)) != len(v) for v in self.vary.values()):
                raise ValueError("vary: one column with a list of distinct values")
        return self

    def variants(self) -> list[tuple[str | None, str | None]]:
        """(column, value) per request of a row: [(None, None)] without `vary`."""
        if self.vary is None:
            return [(None, None)]
        (column, values), = self.vary.items()
        return [(column, value) for value in values]

    @model_validator(mode="after")
    def _compile(self) -> "LlmConfig":
        self.compiled()  # syntax errors now, before any model starts
        clash = set(self.parser.columns() if self.parser else []) & {"completion", "messages", "candidate_id", "keep"}
        if clash:
            raise ValueError(f"parser: would overwrite the column {sorted(clash)[0]!r}")
        return self

    def compiled(self) -> dict[str, jinja2.Template]:
        """The prompts compiled in the templates' sandbox (compiled where used: compiled templates
        do not pickle, and a Ray worker gets the config)."""
        env, out = _environment(), {}
        for field in ("system", "user"):
            text = getattr(self, field)
            if text is None:
                continue
            try:
                out[field] = env.from_string(text)
            except jinja2.TemplateSyntaxError as err:
                raise ValueError(f"{field}: Jinja syntax error on line {err.lineno}: {err.message}") from None
        return out

    def views(self) -> dict[str, str]:
        return {}

    def reads(self) -> set[str]:
        env = _environment()
        names: set[str] = set()
        for text in (self.system, self.user):
            if text is not None:
                names |= _undeclared(env.parse(text))
        return names - {SLOTS_VARIABLE} - set(self.vary or {})

    def writes(self) -> set[str]:
        parsed = (set(self.parser.columns()) if self.parser else set()) | set(self.vary or {})
        return super().writes() | parsed | {f"{self.label}_error", f"{self.label}_completion", "generate_completion", "parent_id", "group_id", "lineage", "step"}

    def model_backend(self, context: StepContext) -> BackendConfig:
        return self.backend if self.backend is not None else context.generator

    def build_step(self, context: StepContext) -> "LlmStep":
        return LlmStep(self, context)


@dataclass(frozen=True)
class Rendered:
    messages: list[dict[str, str]] | None
    error: str | None


def render_requests(config: LlmConfig, rows: list[dict[str, Any]]) -> list[Rendered]:
    """Each (row, variant)'s messages, row by row, or why it cannot render (an undefined column,
    a sandbox refusal)."""
    out, compiled = [], config.compiled()
    for row, (column, value) in ((row, variant) for row in rows for variant in config.variants()):
        slots = json.loads(row.get("slots") or "{}")
        variables = slots | {k: v for k, v in row.items() if not k.startswith("_")} | {SLOTS_VARIABLE: slots}
        if column is not None:
            variables[column] = value
        messages, error = [], None
        for role in ("system", "user"):
            template = compiled.get(role)
            if template is None:
                continue
            try:
                text = template.render(**variables).strip()
            except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, RecursionError) as err:
                error = f"{role}: {type(err).__name__}: {err}"
                break
            if len(text) > MAX_RENDERED_CHARS:
                error = f"{role}: renders to {len(text)} characters, more than {MAX_RENDERED_CHARS}"
                break
            if text:
                messages.append({"role": role, "content": text})
        if error is None and not any(m["role"] == "user" for m in messages):
            error = "user: renders to an empty message"
        out.append(Rendered(None if error else messages, error))
    return out


class ModelStep(Step):
    """A step that calls a model (llm, converse): `engine` is the backend config it uses (what the
    Ray executor places on actors), `seed` the base of its per-request seeds, `model` the backend,
    opened on the first request and closed by the executor after the step's last shard, and
    `source` the recipe path its rendering errors name."""

    kind: ClassVar[str]

    def __init__(self, config: Any, context: StepContext):
        self.config, self.label = config, config.label
        backend = self.engine = config.model_backend(context)
        self.seed = config.sampling.seed if config.sampling.seed is not None else context.sampling_seed
        self.model = StageModel(lambda: make_backend(backend, self.seed), self.kind, f"stages.{config.label}", backend)
        self.source = context.source


class LlmStep(ModelStep):
    """Built LlmConfig: one backend call per batch."""

    kind = "llm"

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        c, L = self.config, self.label
        rows = batch.to_dicts()
        variants = c.variants()
        rendered = bounded_rendering(lambda: render_requests(c, rows), Path(self.source), len(rows) * len(variants)) if rows else []
        # one request per (row, variant), row by row; its seed from the step, the parent and the variant
        jobs = [(i, v) for i in range(len(rows)) for v in range(len(variants))]
        seeds = [request_seed(self.seed, f"{L}:{rows[i]['candidate_id']}" + ("" if variants[v][0] is None else f":{variants[v][1]}")) for i, v in jobs]
        schema = c.parser.json_schema if isinstance(c.parser, JsonParser) else None
        asked = [q for q, r in enumerate(rendered) if r.messages is not None]
        requests = [ChatRequest(messages=rendered[q].messages, seed=seeds[q], json_schema=schema) for q in asked]
        generations = dict(zip(asked, self.model.ask(requests, c.sampling)))
        sampling_json = json.dumps(c.sampling.model_dump(mode="json") | {"seed": self.seed}, sort_keys=True)
        parsed_columns = c.parser.columns() if c.parser else []
        varied = [column for column, _ in variants if column is not None]
        model_name = self.model.backend.model_name if self.model.backend is not None else None
        children = []
        for q, (i, v) in enumerate(jobs):
            row, (column, value) = rows[i], variants[v]
            parent = row["candidate_id"]
            base = row | {
                "parent_id": parent,
                "group_id": parent,
                "lineage": list(row.get("lineage") or [row["prompt_id"]]) + [parent],
                "step": L,
                # first generation's text, kept beside every later step's own (<label>_completion)
                "generate_completion": row["completion"] if row.get("step") is None else row.get("generate_completion"),
                "sample_seed": seeds[q],
                "sampling": sampling_json,
                "model": model_name or row.get("model"),
                "backend": self.engine.kind,
            } | {name: None for name in parsed_columns}
            if column is not None:
                base[column] = value
            first = v * c.sampling.n  # child k: variant v's sample s is k = v * n + s
            generation = generations.get(q)
            if generation is None or generation.error is not None:
                reason = "render_error" if generation is None else "generate_error"
                error = rendered[q].error if generation is None else generation.error
                messages = rendered[q].messages or []
                children.append(base | self._child(parent, first, messages, None, "error", 0, 0) | {f"{L}_keep": False, f"{L}_reason": reason, f"{L}_error": error}
                                | {f"{L}_prompt_tokens": 0, f"{L}_completion_tokens": 0})
                continue
            for s, completion in enumerate(generation.completions):
                child = base | self._child(parent, first + s, rendered[q].messages, completion.text, completion.finish_reason, generation.prompt_tokens, completion.completion_tokens)
                child |= {f"{L}_keep": True, f"{L}_reason": None, f"{L}_error": None}
                # the request's prompt counted once, on its first child, so the column sums to what was sent
                child |= {f"{L}_prompt_tokens": generation.prompt_tokens if s == 0 else 0, f"{L}_completion_tokens": completion.completion_tokens}
                if c.parser is not None:
                    try:
                        child |= c.parser.parse(completion.text)
                    except (ValueError, TimeoutError, jsonschema.ValidationError, AttributeError) as err:
                        message = err.message if isinstance(err, jsonschema.ValidationError) else str(err)
                        child |= {f"{L}_keep": False, f"{L}_reason": "parse_error", f"{L}_error": message[:300]}
                children.append(child)
        new = {
            "parent_id": pl.String, "group_id": pl.String, "lineage": pl.List(pl.String), "step": pl.String,
            "generate_completion": pl.String, f"{L}_completion": pl.String,
            f"{L}_keep": pl.Boolean, f"{L}_reason": pl.String, f"{L}_error": pl.String,
            f"{L}_prompt_tokens": pl.Int64, f"{L}_completion_tokens": pl.Int64,
        } | {name: pl.String for name in [*parsed_columns, *varied]}
        for row in children:
            row[f"{L}_completion"] = row["completion"]
        schema = dict(batch.schema) | new
        if not children:
            return pl.DataFrame(schema=schema)
        return pl.DataFrame([{name: row.get(name) for name in schema} for row in children], schema=schema)

    def _child(self, parent: str, k: int, messages, text, finish, prompt_tokens, tokens) -> dict[str, Any]:
        return {
            "candidate_id": f"{parent}-{self.label}-{k}",
            "sample_index": k,
            "messages": messages,
            "completion": text,
            "finish_reason": finish,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens,
        }

    def summarize(self, outputs: pl.LazyFrame) -> dict[str, Any] | None:
        L = self.label
        mine = outputs.filter(pl.col("step") == L)
        figures = mine.select(
            pl.len().alias("children"),
            pl.col("parent_id").n_unique().alias("parents"),
            pl.col("completion_tokens").sum().alias("tokens"),
        ).collect()
        return {name: int(figures[name][0] or 0) for name in figures.columns}

    def close(self) -> None:
        self.model.close()


class ParseConfig(StageConfigBase):
    """Parse a text column (default: the last generated text) into named columns with the same
    parsers as the LLM step, e.g. generation's structured output (`backend.sampling.json_schema`)
    into `question` / `answer`. A text the parser cannot read is dropped with reason `parse_error`."""

    stage: Literal["parse"] = "parse"
    parser: Parser

    def writes(self) -> set[str]:
        return super().writes() | set(self.parser.columns()) | {f"{self.label}_error"}

    def build(self) -> "ParseStep":
        return ParseStep(self)


class ParseStep(Step):
    def __init__(self, config: ParseConfig):
        self.config, self.label = config, config.label

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        L, parser = self.label, self.config.parser
        columns = parser.columns()
        values: dict[str, list[Any]] = {name: [] for name in [*columns, f"{L}_keep", f"{L}_reason", f"{L}_error"]}
        for text in batch["completion"].to_list():
            try:
                parsed, error = parser.parse(text or ""), None
            except (ValueError, TimeoutError, jsonschema.ValidationError, AttributeError) as err:
                parsed, error = dict.fromkeys(columns), (err.message if isinstance(err, jsonschema.ValidationError) else str(err))[:300]
            for name in columns:
                values[name].append(parsed[name])
            values[f"{L}_keep"].append(error is None)
            values[f"{L}_reason"].append(None if error is None else "parse_error")
            values[f"{L}_error"].append(error)
        schema = {name: pl.String for name in values} | {f"{L}_keep": pl.Boolean}
        return batch.with_columns(pl.DataFrame(values, schema=schema).get_columns())
