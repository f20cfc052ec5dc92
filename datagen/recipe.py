"""Pipeline recipes: the pydantic model, `--set` overrides, and resolution of named templates."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field, ValidationError, field_validator, model_serializer, model_validator

from datagen.outputs.config import PairsConfig
from datagen.outputs.mix import MixConfig, check_real_source
from datagen.counterexamples.config import InputConfig
from datagen.credentials import find_secret, secret_message
from datagen.errors import DatagenError, expected_tags, from_validation_error
from datagen.llm.generate import CANDIDATE_SCHEMA, RESERVED_COLUMNS
from datagen.paths import BASE_DIR, RecipePath, command_line_value
from datagen.rows import BackendConfig, StrictModel
from datagen.steps import StageConfig
from datagen.sources.shipped import RESOURCES, recipe_file
from datagen.sources.data import DataConfig, Source, open_sources
from datagen.sources.prompts import check_prompt_source
from datagen.sources.slots import SamplingSlots
from datagen.sources.templates import Template, load_template
from datagen.yaml_io import parse_yaml, read_yaml


# Range checks made before anything is expanded: a count or seed past these is a typo or an attack.
MAX_COUNT = 1_000_000  # prompts per template
MAX_SEED = 2**63 - 1  # seeds are stored as Int64


class TemplateUse(StrictModel):
    """A template file (`name`) or a data source whose rows are the prompts (`from`; then `name`
    is the source's name unless given, and is the rows' template_id)."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    count: int | None = Field(None, ge=1, le=MAX_COUNT, description="prompts to draw; all combinations in product mode when unset")
    source: str | None = Field(None, alias="from", description="bring-your-own prompts: the data source whose rows are the prompts")
    column: str | None = Field(None, description="from: the column holding the user turn (default 'prompt')")
    messages_column: str | None = Field(None, description="from: a column of chat messages used as they are")
    system: str | None = Field(None, description="from: a system message put before each prompt")
    reference_column: str | None = Field(None, description="from: the column holding each prompt's reference answer (default 'reference' when the source has one)")
    sampling: SamplingSlots | None = Field(None, description="sampling parameters drawn per prompt (overrides the template's)")

    @model_validator(mode="after")
    def _template_or_source(self) -> "TemplateUse":
        if self.source is None:
            if self.name is None:
                raise ValueError("name: a template's name, or from: a data source whose rows are the prompts")
            for name in ("column", "messages_column", "system", "reference_column"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: only used with from: (rows of a data source as prompts)")
            return self
        if self.column is not None and self.messages_column is not None:
            raise ValueError("column and messages_column: give one (the user turn, or whole conversations)")
        if self.messages_column is not None and self.system is not None:
            raise ValueError("system: not used with messages_column (the conversations are used as they are)")
        if self.name is None:
            self.name = self.source
        return self

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: Any) -> dict[str, Any]:
        # Fields added with data sources are left out while unset, so that fingerprints of runs made
        # before them stay the same.
        data = handler(self)
        for key in ("source", "from", "column", "messages_column", "system", "reference_column", "sampling"):
            if key in data and data[key] is None:
                del data[key]
        return data


class Price(StrictModel):
    """USD per million tokens: `input` (prompt) and `output` (completion)."""

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)


class OutputConfig(StrictModel):
    dir: RecipePath | None = None
    format: Literal["sft", "prompt_completion", "dpo", "counterexamples"] = "sft"
    pairs: PairsConfig | None = Field(None, description="format dpo: how chosen/rejected pairs are built (default: strategy verified)")
    # Run to a target (datagen/run/target.py); neither enters a resume key, so raising them continues the run.
    target_rows: int | None = Field(None, ge=1, le=MAX_COUNT * 1024, description="stop as soon as this many output rows are kept; write exactly these")
    max_candidates: int | None = Field(None, ge=1, le=MAX_COUNT * 1024, description="with target_rows: the most candidates generation may make")
    prices: dict[str, Price] = Field(default_factory=dict, description="per model (as the recipe names it): USD per million tokens in/out, for the cost lines")
    mix: MixConfig | None = Field(None, description="the final mix: weight formula, rank, top k per group, real rows (datagen/outputs/mix.py)")

    @model_validator(mode="after")
    def _pairs_for_dpo(self) -> "OutputConfig":
        if self.format == "dpo" and self.pairs is None:
            self.pairs = PairsConfig()
        elif self.format != "dpo" and self.pairs is not None:
            raise ValueError("pairs only applies to format: dpo")
        if self.max_candidates is not None and self.target_rows is None:
            raise ValueError("max_candidates is the budget of a target run: set target_rows too")
        if self.target_rows is not None and self.format == "counterexamples":
            raise ValueError("target_rows: a counterexample run's size is its budget, not a target")
        if self.mix is not None and self.mix.real is not None and self.format not in ("sft", "prompt_completion"):
            raise ValueError(f"mix.real: real rows are written as sft or prompt_completion rows, not {self.format}")
        return self


class ExecutionConfig(StrictModel):
    shard_size: int = Field(64, ge=1, description="prompts per shard; one generate call per shard")


class Recipe(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    template_dirs: list[RecipePath] = Field(default_factory=lambda: ["../templates"], validate_default=True)
    templates: list[TemplateUse] = Field(min_length=1)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    stages: list[StageConfig] = Field(default_factory=list)
    output: OutputConfig = Field(default_factory=OutputConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    input: InputConfig | None = Field(None, description="failures to target: prompts come from their clusters instead of templates' slots")
    budget: int | None = Field(None, ge=1, le=MAX_COUNT, description="with input: prompts to spread across the failure clusters")
    data: dict[str, DataConfig] = Field(default_factory=dict, description="the user's data files, by name (datagen.sources.data)")

    @field_validator("data")
    @classmethod
    def _data_names(cls, data: dict) -> dict:
        import re

        for name in data:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"{name!r}: a source name is letters, digits, '_', '.' or '-'")
        return data

    @model_validator(mode="after")
    def _prompt_sources_exist(self) -> "Recipe":
        for i, use in enumerate(self.templates):
            if use.source is not None and use.source not in self.data:
                known = ", ".join(self.data) or "none"
                raise ValueError(f"templates[{i}].from: no data source {use.source!r} (data: {known})")
        return self

    @field_validator("stages")
    @classmethod
    def _distinct_labels(cls, stages: list) -> list:
        seen: set[str] = set()
        for stage in stages:
            if stage.label in seen or stage.label == "generate":
                raise ValueError(f"two stages are labelled {stage.label!r}; give one a distinct 'name'")
            clash = {f"{stage.label}_keep", f"{stage.label}_reason"} & RESERVED_COLUMNS
            if clash:
                raise ValueError(f"stage label {stage.label!r} would overwrite the column {sorted(clash)[0]!r}; choose another 'name'")
            seen.add(stage.label)
        return stages

    @model_validator(mode="after")
    def _stages_fit_generator_and_output(self) -> "Recipe":
        if self.output.pairs is not None:
            self.output.pairs.check_stages(self.stages)
        if self.output.mix is not None:
            self.output.mix.check_stages(self.stages)
            self.output.mix.check_sources(self.data)
        return self

    @model_validator(mode="after")
    def _counterexample_input(self) -> "Recipe":
        if self.input is None:
            for i, stage in enumerate(self.stages):
                if stage.stage == "counterexample":  # it checks against the failures and reports their clusters
                    raise ValueError(f"stages[{i}]: the {stage.label!r} stage needs the recipe's input section (the failures it checks against)")
            if self.budget is not None:
                raise ValueError("budget: only used with an input section (the failures to target)")
            if self.output.format == "counterexamples":
                raise ValueError("output.format: counterexamples needs an input section (the failures to target)")
            return self
        if self.budget is None:
            raise ValueError("budget: required with an input section (the prompts to spread across the failure clusters)")
        if self.output.format == "counterexamples" and not any(stage.stage == "counterexample" for stage in self.stages):
            raise ValueError("output.format: counterexamples needs a counterexample stage (it parses the new problems)")
        wanted = self.input.templates()
        listed = [t.name for t in self.templates]
        for name in wanted:
            if name not in listed:
                raise ValueError(f"templates: the input section uses the template {name!r}; list it under templates")
        for i, use in enumerate(self.templates):
            if use.name not in wanted:
                raise ValueError(f"templates[{i}]: {use.name!r} is not a template of the input section ({', '.join(wanted)})")
            if use.count is not None:
                raise ValueError(f"templates[{i}].count: with an input section the budget decides the number of prompts")
        return self

    @model_validator(mode="after")
    def _stage_templates_exist(self) -> "Recipe":
        names = {t.name for t in self.templates}
        for i, stage in enumerate(self.stages):
            unknown = sorted(set(stage.templates or []) - names)
            if unknown:
                raise ValueError(f"stages[{i}].templates: {unknown[0]!r} is not one of the recipe's templates ({', '.join(sorted(names))})")
        return self

    @property
    def sampling_seed(self) -> int:
        return self.backend.sampling.seed if self.backend.sampling.seed is not None else self.seed

    def backends(self) -> list[tuple[str, BackendConfig]]:
        """Every model the recipe runs, with its field: the generator's, then any stage's own (judge, revise, ...),
        then the counterexample input's diagnosis model."""
        found = [("backend", self.backend)]
        for i, stage in enumerate(self.stages):
            backend = getattr(stage, "backend", None)
            if isinstance(backend, BackendConfig):
                found.append((f"stages[{i}].{stage.stage}.backend", backend))
        if self.input is not None and self.input.diagnose is not None:
            found.append(("input.diagnose.backend", self.input.diagnose.backend))
        return found

    def embedding_models(self) -> list[tuple[str, str]]:
        """Every sentence-transformers model the recipe loads, with its field (collapse stages, counterexample input)."""
        found = [(f"stages[{i}].{stage.stage}.model", stage.model) for i, stage in enumerate(self.stages) if stage.stage == "collapse"]
        if self.input is not None:
            found.append(("input.embedding_model", self.input.embedding_model))
        return found


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    templates: dict[str, Template]
    sources: dict[str, Source] = field(default_factory=dict)  # the opened data sources, by name
    origins: dict[str, str] = field(default_factory=dict)  # field path -> the `--set` that wrote it
    _plan: Any = field(default=None, repr=False, compare=False)

    def blame(self, err: DatagenError) -> DatagenError:
        """`err` blamed on the `--set` that wrote its field, if one did (see blame_override); an
        error that names no file otherwise names the recipe file."""
        err = blame_override(err, self.path, self.origins)
        err.source = err.source or str(self.path)
        return err

    def counterexample_plan(self) -> Any:
        """The clustering plan (datagen.counterexamples.plan.Plan) of a recipe with an `input`
        section, made once per loaded recipe: prompt expansion and the counterexample step's report
        share it. None for a recipe without one."""
        if self.recipe.input is None:
            return None
        if self._plan is None:
            from datagen.counterexamples.plan import make_plan

            self._plan = make_plan(self.recipe.input, self.recipe.budget, self.recipe.seed)
        return self._plan

    def fingerprint(self) -> str:
        """Identifies what generation produces: templates (their text too), seed, backend, sharding.

        Filter stages are keyed separately (stage_keys), so changing a filter re-runs that
        stage and the ones after it, never generation.
        """
        h = hashlib.sha256()
        # Connection settings do not change what is generated; changing them must not void a run.
        connection = {"base_url", "api_key_env", "max_concurrency", "max_retries", "timeout_s"}
        recipe = self.recipe.model_dump(
            mode="json", include={"seed", "templates", "backend", "execution"}, exclude={"backend": connection}
        )
        if recipe["backend"].get("system_prompt") == "keep":  # the default: runs made before the option keep their fingerprint
            del recipe["backend"]["system_prompt"]
        h.update(json.dumps(recipe, sort_keys=True).encode())
        for name in sorted(self.templates):
            h.update(name.encode())
            h.update(self.templates[name].path.read_bytes())
        if self.recipe.input is not None:  # counterexample prompts come from the failures (and training set)
            h.update(json.dumps(self.recipe.model_dump(mode="json", include={"input", "budget"}), sort_keys=True).encode())
            for path in self.recipe.input.files():
                h.update(path.read_bytes() if path.is_file() else b"missing")
        return h.hexdigest()[:20]

    def stage_keys(self) -> list[str]:
        """One key per filter stage, chained: a stage's key changes when it or any stage before it does."""
        keys, previous = [], self.fingerprint()
        for stage in self.recipe.stages:
            h = hashlib.sha256((previous + json.dumps(stage.key_fields(), sort_keys=True)).encode())
            for path in stage.input_files():
                h.update(path.read_bytes() if path.is_file() else b"missing")
            previous = h.hexdigest()[:20]
            keys.append(previous)
        return keys


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise DatagenError("expected key.path=value", f"--set {text}")
    try:
        value = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else ""
    except DatagenError as err:
        if not err.message.startswith("YAML syntax error"):
            raise  # past a limit (aliases, depth)
        value = raw  # not YAML: the text as it is
    return key.strip().split("."), value


APPEND = "+"  # `--set stages.+={stage: length, min_chars: 10}` appends a stage


def _list_index(node: list, part: str, path: list[str], i: int, origin: str) -> int:
    """The item of a list a --set key part names: its position, or (for stages) its label, the
    `name` or else the `stage` kind of the item."""
    if part.isdigit():
        if int(part) >= len(node):
            raise DatagenError(f"no list item {part!r} at {'.'.join(path[:i]) or 'top level'} (it has {len(node)})", origin)
        return int(part)
    labels = [item.get("name") or item.get("stage") if isinstance(item, dict) else None for item in node]
    if part in labels:
        return labels.index(part)
    known = [label for label in labels if isinstance(label, str)]
    close = difflib.get_close_matches(part, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = f" ({', '.join(known)})" if known else ""
    raise DatagenError(f"no item named {part!r} in {'.'.join(path[:i]) or 'top level'}{listed}{hint}", origin)


def apply_override(data: dict, path: list[str], value: Any, origin: str) -> list[str]:
    """Set `value` at `path` in the recipe data; returns the path with list items as positions.

    A list item is addressed by its position (`stages.1.min_chars`) or, for items with a `name`
    or `stage` (stages), by their label (`stages.judge.min_score`); `stages.+=VALUE` appends VALUE.
    Raises DatagenError (source: `origin`) for an item that does not exist."""
    node: Any = data
    resolved: list[str] = []
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if part == APPEND:
                if not last:
                    raise DatagenError(f"{'.'.join(path[:i + 1])}: append a whole item ({'.'.join(path[:i + 1])}={{...}})", origin)
                node.append(value)
                resolved.append(str(len(node) - 1))
                return resolved
            part_key: Any = _list_index(node, part, path, i, origin)
        elif isinstance(node, dict):
            part_key = part
        else:
            raise DatagenError(f"{'.'.join(path[:i]) or 'top level'} is not a mapping", origin)
        resolved.append(str(part_key))
        if last:
            node[part_key] = value
        else:
            if isinstance(node, dict) and part_key not in node:
                node[part_key] = [] if path[i + 1] == APPEND else {}
            node = node[part_key]
    return resolved


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union, list, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def known_fields(loc: list[str]) -> list[str]:
    """The field names a recipe accepts next to the field at `loc` (a pydantic error location)."""
    models: list[type[BaseModel]] = [Recipe]
    for part in loc[:-1]:
        if part.isdigit():
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if fields:
            models = [model for field in fields for model in _models_in(field.annotation)]
            continue
        tagged = [m for m in models if "stage" in m.model_fields and part in typing.get_args(m.model_fields["stage"].annotation)]
        if not tagged:
            return []
        models = tagged
    return sorted({name for m in models for name, field in m.model_fields.items()} | {f.alias for m in models for f in m.model_fields.values() if f.alias})


def did_you_mean(err: ValidationError) -> str:
    """For an unknown field, or an unknown kind (`kind: maths`, `stage: lenght`): '; did you mean
    X?' naming the closest known one (difflib), else ''."""
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    if first.get("type") == "union_tag_invalid":
        close = difflib.get_close_matches(str((first.get("ctx") or {}).get("tag", "")), expected_tags(first), n=1)
        return f"; did you mean {close[0]!r}?" if close else ""
    if first.get("type") != "extra_forbidden" or not loc:
        return ""
    close = difflib.get_close_matches(loc[-1], known_fields(loc), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _within(loc: list[str], key: list[str]) -> bool:
    """Whether an error at `loc` is inside the overridden `key`. Pydantic puts a stage's kind
    after its list index (stages.1.dedup.reference), which the --set key does not have."""
    i = 0
    for part in key:
        if i < len(loc) and loc[i] == part:
            i += 1
        elif 0 < i < len(loc) - 1 and loc[i - 1].isdigit() and loc[i + 1] == part:
            i += 2
        else:
            return False
    return True


def _error_source(err: ValidationError, recipe_path: Path, overrides: dict[str, str]) -> str:
    """The `--set` that wrote the field in error, or a field inside it (a check across fields of
    one object, min_chars > max_chars, reports at the object), else the recipe file."""
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    if not loc:  # a check over the whole recipe names its field first in the message: "stages[2].templates: ..."
        named = re.match(r"([A-Za-z_][\w.\[\]]*):", first.get("msg", "").removeprefix("Value error, "))
        loc = re.sub(r"\[(\d+)\]", r".\1", named.group(1)).split(".") if named else []
    for key, origin in overrides.items():
        if loc and _within(loc, key.split(".")):
            return origin
    for key, origin in overrides.items():
        if loc and (_within(key.split("."), loc) or _within(key.split("."), _without_kinds(loc))):
            return origin
    return str(recipe_path)


def _without_kinds(loc: list[str]) -> list[str]:
    """`loc` without the kind pydantic puts after a stage's list index (stages.1.length -> stages.1)."""
    return [part for i, part in enumerate(loc) if not (i and loc[i - 1].isdigit() and not part.isdigit())]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> LoadedRecipe:
    """The recipe file at `path` (or the shipped recipe of that name, datagen.sources.shipped.recipe_file),
    with `--set` overrides applied, validated with every template it names.

    Raises DatagenError (naming the file and field) for anything wrong in it."""
    path = recipe_file(path)
    data = read_yaml(path, "recipe file")
    in_file = set(data.get("data") or {}) if isinstance(data, dict) and isinstance(data.get("data"), dict) else set()
    origins: dict[str, str] = {}
    for text in overrides or []:
        keys, value = parse_override(text)
        origin = f"--set {text}"
        found = find_secret(value, ".".join(keys))
        if found:  # named without its value, which the line must not echo
            raise DatagenError(secret_message(found[1]), f"--set {'.'.join(keys)}", found[0])
        resolved = apply_override(data, keys, command_line_value(value), origin)  # its paths start from the working directory
        origins[".".join(resolved)] = origin
    found = find_secret(data)
    if found:
        raise DatagenError(secret_message(found[1]), path, found[0])
    try:
        # Path fields (datagen.paths) resolve relative paths written in the file against its folder.
        recipe = Recipe.model_validate(data, context={BASE_DIR: path.parent})
    except ValidationError as err:
        error = from_validation_error(err, _error_source(err, path, origins))
        error.message += did_you_mean(err)
        raise error from None
    except DatagenError as err:  # raised by a field validator that reads a file (a rubric): its field is the field's own name
        if err.source is None:
            named = [(key, origin) for key, origin in origins.items() if err.field and key.split(".")[-1] == err.field]
            err.field, err.source = named[0] if len(named) == 1 else (err.field, str(path))
        raise
    try:
        return _resolve(recipe, path, in_file, origins)
    except DatagenError as err:
        raise blame_override(err, path, origins) from None


def blame_override(err: DatagenError, path: Path, origins: dict[str, str]) -> DatagenError:
    """`err` (raised against the recipe file at `path`, or against no file) with its source set to
    the `--set` that wrote its field or a parent of it (`origins`: resolved key -> "--set ..."), so
    that a bad value given on the command line is blamed on that `--set`, not on the file."""
    if err.source not in (None, str(path)) or not err.field:
        return err
    parts = re.sub(r"\[(\d+)\]", r".\1", err.field).split(".")
    for key, origin in origins.items():
        keys = key.split(".")
        if _within(parts, keys) or keys[: len(parts)] == parts:  # the --set wrote this field (or inside it), or a field inside this one
            err.source = origin
            break
    return err


def _resolve(recipe: Recipe, path: Path, in_file: set[str], origins: dict[str, str]) -> LoadedRecipe:
    """The templates and data sources a validated recipe names, opened and checked against it."""
    sources = open_sources(recipe.data, path)
    templates: dict[str, Template] = {}
    dirs = [(path.parent / d).resolve() for d in recipe.template_dirs]
    shipped = (RESOURCES / "templates").resolve()
    if shipped not in dirs:  # the shipped templates last: a recipe's own folders come first
        dirs.append(shipped)
    names: set[str] = set()
    for i, use in enumerate(recipe.templates):
        if use.name in names:
            raise DatagenError(f"template {use.name!r} is listed twice", path, f"templates[{i}].name")
        names.add(use.name)
        if use.source is not None:
            check_prompt_source(use, sources[use.source], f"templates[{i}]", path)
            continue
        found = next((d / f"{use.name}.yaml" for d in dirs if (d / f"{use.name}.yaml").is_file()), None)
        if found is None:
            searched = ", ".join(str(d) for d in dirs)
            raise DatagenError(f"template {use.name!r} not found (searched {searched})", path, f"templates[{i}].name")
        templates[use.name] = template = load_template(found)
        for slot_name, slot in template.sources.items():
            if slot.source not in sources:
                known = ", ".join(sources) or "none"
                raise DatagenError(f"slot {slot_name!r} draws from {slot.source!r}, which the recipe's data: section does not name (data: {known})", found, f"slots.{slot_name}")
            sources[slot.source].check_columns(template.columns[slot_name], f"template {use.name!r} (slots.{slot_name})")
    check_columns(recipe, templates, path)
    if recipe.output.mix is not None and recipe.output.mix.real is not None:
        check_real_source(recipe.output.mix.real, sources[recipe.output.mix.real.source], path)
    _check_sources_used(recipe, templates, path, in_file)
    return LoadedRecipe(recipe=recipe, path=path, templates=templates, sources=sources, origins=origins)


def _check_sources_used(recipe: Recipe, templates: dict[str, Template], path: Path, in_file: set[str]) -> None:
    """A data source added by `--set` that no template slot, prompt source (`from:`) or mix reads is
    a mistake (most often a misspelt name in `--set data.NAME.path=`, which would otherwise leave the
    recipe reading its own file): a DatagenError blaming that `--set`, with the closest used name.
    Sources the recipe file itself declares may stay unused (e.g. kept for a later template)."""
    used = {use.source for use in recipe.templates if use.source is not None}
    used |= {slot.source for template in templates.values() for slot in template.sources.values()}
    if recipe.output.mix is not None and recipe.output.mix.real is not None:
        used.add(recipe.output.mix.real.source)
    for name in recipe.data:
        if name in used or name in in_file:
            continue
        close = difflib.get_close_matches(name, sorted(used), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (used: {', '.join(sorted(used)) or 'none'})"
        # load_recipe blames it on the --set that added the source (blame_override)
        raise DatagenError(f"data source {name!r} is read by no template, prompt source or mix{hint}", path, f"data.{name}")


def check_columns(recipe: Recipe, templates: dict[str, Template], path: Path) -> None:
    """Walk the steps in order with the columns available so far (a candidate row's, the slots of
    the templates a step applies to, what each earlier step writes, and any `<label>_...` column of
    an earlier step: a step owns its label's columns); a step that reads a column no earlier step
    writes is a DatagenError naming the step (`stages.N`) and the column, before any model starts."""
    available = set(RESERVED_COLUMNS)
    if recipe.input is not None:  # counterexample prompts carry their cluster's columns
        from datagen.counterexamples.expand import PROVENANCE_SCHEMA

        available |= set(PROVENANCE_SCHEMA)
    labels: list[str] = []
    for i, stage in enumerate(recipe.stages):
        names = stage.templates or list(templates)
        slots = {slot for name in names if name in templates for slot in templates[name].spec.slots}
        missing = sorted(c for c in stage.reads() - available - slots if not any(c.startswith(f"{label}_") for label in labels))
        if missing:
            raise DatagenError(
                f"step {stage.label!r} reads the column {missing[0]!r}, which no earlier step writes", path, f"stages.{i}"
            )
        for name, source in stage.views().items():  # a text the step reads must be a text column
            dtype = CANDIDATE_SCHEMA.get(source)
            if source != name and dtype is not None and dtype != pl.String:
                raise DatagenError(f"step {stage.label!r} reads the column {source!r} as text, but it holds {dtype}", path, f"stages.{i}")
        available |= stage.writes()
        labels.append(stage.label)
