"""Template loading, checking and seeded expansion into rendered chat prompts."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jinja2
import polars as pl
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from pydantic import ValidationError

from datagen.bounded import Exceeded, TimeLimit, run_bounded
from datagen.errors import DatagenError, from_validation_error
from datagen.rows import PROMOTED_SLOTS, SlotValue, TemplateSpec
from datagen.sources.slots import SamplingSlots, SourceSlot, columns_used, draw_sampling, plan_source_prompts, split_slots
from datagen.yaml_io import WrittenFloat, WrittenInt, read_yaml

# Above this many raw combinations we sample slot values independently instead of enumerating.
ENUMERATION_LIMIT = 200_000
JINJA_FIELDS = ("system", "user", "reference", "tests")


# Bounds on `*` and `**` in templates: jinja's sandbox caps range() but not 'a' * 10**10, which
# would exhaust memory before any limit noticed.
MAX_PRODUCT_LENGTH = 1_000_000
MAX_POWER_BITS = 100_000
# Bounds on a template's whole expansion (selection, `where`, rendering), which runs in a child
# process (datagen.bounded): CPU seconds = EXPAND_SECONDS + EXPAND_SECONDS_PER_PROMPT * prompts, memory
# beyond what datagen already uses, and characters per rendered field.
EXPAND_SECONDS = 5.0
EXPAND_SECONDS_PER_PROMPT = 0.001
EXPAND_MEMORY_BYTES = 1 << 30
MAX_RENDERED_CHARS = 1_000_000


class _NoFolding(CodeGenerator):
    """Jinja's code generator without constant folding of output: `{{ 'x'|center(2000000000) }}`
    would otherwise be computed while compiling, in this process and outside every limit."""

    def _output_child_to_const(self, node, frame, finalize):
        raise nodes.Impossible()


class _NoFoldingTracker(meta.TrackingCodeGenerator):
    def __init__(self, environment):
        CodeGenerator.__init__(self, environment, "<introspection>", "<introspection>", optimized=False)
        self.undeclared_identifiers: set[str] = set()

    def _output_child_to_const(self, node, frame, finalize):
        raise nodes.Impossible()


def _undeclared(ast: nodes.Template) -> set[str]:
    """jinja2.meta.find_undeclared_variables, without constant folding (see _NoFolding)."""
    tracker = _NoFoldingTracker(ast.environment)
    tracker.visit(ast)
    return tracker.undeclared_identifiers


class _TemplateSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})
    code_generator_class = _NoFolding

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and right * max(abs(left).bit_length() - 1, 0) > MAX_POWER_BITS:
            raise SecurityError(f"a power of more than {MAX_POWER_BITS} bits is more than the template sandbox allows")
        if operator == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sequence, (str, list, tuple)) and isinstance(times, int) and len(sequence) * times > MAX_PRODUCT_LENGTH:
                raise SecurityError(f"repetition to {len(sequence) * times} items is more than the template sandbox allows ({MAX_PRODUCT_LENGTH})")
        return super().call_binop(context, operator, left, right)


def _environment() -> ImmutableSandboxedEnvironment:
    # optimized=False: the optimizer folds constant expressions while compiling, in this process and
    # outside every limit (`{{ "%02000000000d" % 1 }}` would be computed at load time).
    return _TemplateSandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False, optimized=False)


def slot_key(value: SlotValue) -> str:
    """The short, stable name of a slot value used in provenance and weights."""
    return str(value["id"]) if isinstance(value, dict) else str(value)


@dataclass
class Template:
    spec: TemplateSpec
    path: Path
    compiled: dict[str, jinja2.Template]
    where: Any  # compiled jinja expression or None
    sources: dict[str, SourceSlot] = field(default_factory=dict)  # slots drawn from the recipe's data sources
    sampling: SamplingSlots | None = None  # sampling parameters drawn per prompt
    columns: dict[str, set[str]] = field(default_factory=dict)  # per source slot: the row columns the Jinja fields read

    @property
    def id(self) -> str:
        return self.spec.id

    def combination_count(self) -> int:
        return math.prod(len(values) for values in self.spec.slots.values())

    def _fail(self, field: str, message: str) -> DatagenError:
        return DatagenError(message, self.path, field)

    def accepts(self, combo: dict[str, SlotValue]) -> bool:
        if self.where is None:
            return True
        try:
            return bool(self.where(**combo))
        except (jinja2.UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError, RecursionError) as err:
            raise self._fail("where", f"cannot evaluate: {err}") from None
        except TimeLimit:
            raise self._fail("where", _TOO_SLOW) from None
        except MemoryError:
            raise self._fail("where", _TOO_BIG) from None

    def render(self, field: str, combo: dict[str, SlotValue]) -> str | None:
        template = self.compiled.get(field)
        if template is None:
            return None
        try:
            text = template.render(**combo).strip()
        except TimeLimit:
            raise self._fail(field, _TOO_SLOW) from None
        except MemoryError:
            raise self._fail(field, _TOO_BIG) from None
        except SecurityError as err:
            raise self._fail(field, f"refused by the template sandbox: {err}") from None
        except jinja2.UndefinedError as err:
            raise self._fail(field, f"undefined value: {err}") from None
        except (TypeError, ValueError, ArithmeticError, RecursionError, jinja2.TemplateError) as err:
            raise self._fail(field, f"cannot render: {err}") from None
        if len(text) > MAX_RENDERED_CHARS:
            raise self._fail(field, f"renders to {len(text)} characters, more than the {MAX_RENDERED_CHARS} allowed")
        return text


_TOO_SLOW = "rendering takes longer than the template time limit (a loop or an expansion too large)"
_TOO_BIG = f"rendering needs more than {EXPAND_MEMORY_BYTES >> 20} MiB of memory (a value or a loop too large)"


def _check_written_numbers(path: Path, data: dict) -> None:
    """Slot values written as unquoted numbers that do not print as written (`012`, `0x1F`, `1e3`,
    `2.50`), or as booleans or null (`true`, `~`), would put another text into the prompt than the
    one in the file: refused."""
    slots = data.get("slots")
    if not isinstance(slots, dict):
        return
    for name, values in slots.items():
        for i, value in enumerate(values if isinstance(values, list) else []):
            for key, item in value.items() if isinstance(value, dict) else [(None, value)]:
                field = f"slots.{name}[{i}]" + (f".{key}" if key is not None else "")
                if isinstance(item, (WrittenInt, WrittenFloat)):
                    raise DatagenError(
                        f"the unquoted value {item.text} reads as the number {item!r}; quote it ('{item.text}') to keep the text as written",
                        path,
                        field,
                    )
                if isinstance(item, bool) or (item is None and key is None):
                    what = f"the boolean {str(item).lower()}" if isinstance(item, bool) else "null (no value)"
                    raise DatagenError(f"an unquoted value that reads as {what}; quote it to keep the text as written", path, field)


def load_template(path: Path) -> Template:
    data = read_yaml(path, "template file", written_numbers=True)
    _check_written_numbers(path, data)
    data, sources, sampling = split_slots(data, path)
    try:
        spec = TemplateSpec.model_validate(data)
    except ValidationError as err:
        raise from_validation_error(err, path) from None
    if spec.id != path.stem:
        raise DatagenError(f"template id {spec.id!r} does not match the file name {path.stem!r}", path, "id")
    env = _environment()
    compiled: dict[str, jinja2.Template] = {}
    used: set[str] = set()
    declared = set(spec.slots) | set(sources)
    asts = []
    for field in JINJA_FIELDS:
        source = getattr(spec, field)
        if source is None:
            continue
        try:
            ast = env.parse(source)
        except jinja2.TemplateSyntaxError as err:
            raise DatagenError(f"template syntax error at line {err.lineno}: {err.message}", path, field) from None
        names = _undeclared(ast)
        unknown = sorted(names - declared)
        if unknown:
            raise DatagenError(f"unknown slot {unknown[0]!r} (declared: {', '.join(sorted(declared)) or 'none'})", path, field)
        used |= names
        asts.append(ast)
        compiled[field] = env.from_string(source)
    where = None
    if spec.where is not None:
        try:
            names = _undeclared(env.parse("{{ " + spec.where + " }}"))
            where = env.compile_expression(spec.where)
        except jinja2.TemplateSyntaxError as err:
            raise DatagenError(f"expression syntax error: {err.message}", path, "where") from None
        unknown = sorted(names - set(spec.slots))
        if unknown:
            drawn = " (a slot drawn from a data source cannot be used in 'where')" if unknown[0] in sources else ""
            raise DatagenError(f"unknown slot {unknown[0]!r}{drawn}", path, "where")
        used |= names
    for name in sources:
        if name not in used:
            raise DatagenError("slot is declared but never used", path, f"slots.{name}")
    for name, values in spec.slots.items():
        _check_vocabulary(path, name, values)
        if name not in used:
            raise DatagenError("slot is declared but never used (it would only multiply identical prompts)", path, f"slots.{name}")
    for name, table in spec.expansion.weights.items():
        if name not in spec.slots:
            raise DatagenError(f"weights for unknown slot {name!r}", path, "expansion.weights")
        keys = {slot_key(v) for v in spec.slots[name]}
        for key, weight in table.items():
            if str(key) not in keys:
                raise DatagenError(f"weight for unknown value {key!r}", path, f"expansion.weights.{name}")
            if not (weight > 0 and math.isfinite(weight)):
                raise DatagenError(f"weight must be a positive number (got {weight!r})", path, f"expansion.weights.{name}.{key}")
    return Template(spec=spec, path=path, compiled=compiled, where=where, sources=sources, sampling=sampling, columns=columns_used(asts, sources))


def _check_vocabulary(path: Path, name: str, values: list[SlotValue]) -> None:
    field = f"slots.{name}"
    if not values:
        raise DatagenError("empty vocabulary", path, field)
    seen: set[str] = set()
    for i, value in enumerate(values):
        if isinstance(value, dict) and "id" not in value:
            raise DatagenError("a mapping value needs an 'id'", path, f"{field}[{i}]")
        key = slot_key(value)
        if key in seen:
            raise DatagenError(f"duplicate value {key!r}", path, f"{field}[{i}]")
        seen.add(key)


def _weight(template: Template, combo: dict[str, SlotValue]) -> float:
    weights = template.spec.expansion.weights
    w = 1.0
    for name, value in combo.items():
        w *= weights.get(name, {}).get(slot_key(value), 1.0)
    return w


def _all_combinations(template: Template) -> list[dict[str, SlotValue]]:
    names = list(template.spec.slots)
    combos = []
    for values in itertools.product(*(template.spec.slots[n] for n in names)):
        combo = dict(zip(names, values))
        if template.accepts(combo):
            combos.append(combo)
    return combos


def _weighted_sample(combos: list[dict], weights: list[float], count: int, rng: random.Random) -> list[dict]:
    # Efraimidis-Spirakis: weighted sampling without replacement with one key per item.
    keyed = sorted(((rng.random() ** (1.0 / w), i) for i, w in enumerate(weights)), reverse=True)
    return [combos[i] for _, i in keyed[:count]]


def _rejection_sample(template: Template, count: int, rng: random.Random) -> list[dict]:
    names = list(template.spec.slots)
    weights = template.spec.expansion.weights
    chosen: dict[str, dict] = {}
    attempts = 0
    while len(chosen) < count and attempts < count * 100:
        attempts += 1
        combo = {}
        for n in names:
            vocab = template.spec.slots[n]
            w = [weights.get(n, {}).get(slot_key(v), 1.0) for v in vocab]
            combo[n] = rng.choices(vocab, weights=w)[0]
        key = json.dumps({n: slot_key(v) for n, v in combo.items()}, sort_keys=True)
        if key not in chosen and template.accepts(combo):
            chosen[key] = combo
    if len(chosen) < count:
        raise DatagenError(f"could only find {len(chosen)} distinct combinations satisfying 'where' for count {count}", template.path, "where")
    return list(chosen.values())


def select_combinations(template: Template, count: int | None, seed: int) -> list[dict[str, SlotValue]]:
    """The slot combinations for one template: deterministic in (template, count, seed)."""
    rng = random.Random(f"{seed}:{template.id}")
    mode = template.spec.expansion.mode
    if template.combination_count() > ENUMERATION_LIMIT:
        if count is None:
            raise DatagenError(f"{template.combination_count()} combinations are too many to enumerate; set a count", template.path, "expansion.mode")
        return _rejection_sample(template, count, rng)
    combos = _all_combinations(template)
    if not combos:
        raise DatagenError("no slot combination satisfies this expression", template.path, "where")
    if count is None:
        if mode == "sample":
            raise DatagenError("sample mode needs a count (set it in the recipe's templates entry)", template.path, "expansion.mode")
        return combos
    if count > len(combos):
        raise DatagenError(f"count {count} exceeds the {len(combos)} distinct slot combinations", template.path, "slots")
    if mode == "product" and count == len(combos):
        return combos
    return _weighted_sample(combos, [_weight(template, c) for c in combos], count, rng)


def prompt_id(template_id: str, slot_keys: dict[str, str]) -> str:
    payload = json.dumps([template_id, slot_keys], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def render_prompt(template: Template, combo: dict[str, SlotValue], seed: int, keys: dict[str, Any] | None = None, content: str | None = None) -> dict[str, Any]:
    """One prompt row. `keys` (default: each slot value's slot_key) name the slot values in `slots`
    and the prompt id; `content` (a digest of the source rows drawn) is part of the id too, so a
    changed source row makes a new prompt (and re-runs what depends on it)."""
    keys = keys if keys is not None else {name: slot_key(value) for name, value in combo.items()}
    messages = []
    system = template.render("system", combo)
    if system:
        messages.append({"role": "system", "content": system})
    user = template.render("user", combo)
    if not user:
        raise DatagenError("renders to an empty message", template.path, "user")
    messages.append({"role": "user", "content": user})
    row: dict[str, Any] = {
        "prompt_id": prompt_id(template.id, keys if content is None else {"slots": keys, "content": content}),
        "template_id": template.id,
        "messages": messages,
        "slots": json.dumps(keys, sort_keys=True),
        "reference": template.render("reference", combo),
        "tests": template.render("tests", combo),
        "seed": seed,
    }
    for name in PROMOTED_SLOTS:
        row[name] = keys.get(name)
    return row


def expand(template: Template, count: int | None, seed: int, sources: dict | None = None, sampling: SamplingSlots | None = None) -> list[dict[str, Any]]:
    """The rendered prompt rows of one template, computed under a time and memory limit (see
    bounded_rendering); raises DatagenError naming the template (and the field, when known) on a breach.

    A template with slots drawn from data sources needs `sources` (name -> datagen.sources.data.Source):
    the prompts are planned (rows and vocabulary values drawn, datagen.sources.slots) in a bounded
    child, the rows fetched here, and rendered in a bounded child; each row then carries
    `source_ids` ("NAME:ID" of every source row drawn). `sampling` (else the template's own)
    draws sampling parameters per prompt into columns of the same name (`temperature`)."""
    sampling = sampling or template.sampling
    if template.sources:
        rows = _expand_from_sources(template, count, seed, sources or {})
    else:
        prompts = count if count is not None else min(template.combination_count(), ENUMERATION_LIMIT)
        rows = bounded_rendering(lambda: _expand(template, count, seed), template.path, prompts)
    if sampling is not None:
        for row in rows:
            row.update(draw_sampling(sampling, seed, row["prompt_id"]))
    return rows


def _expand_from_sources(template: Template, count: int | None, seed: int, sources: dict) -> list[dict[str, Any]]:
    missing = sorted(slot.source for slot in template.sources.values() if slot.source not in sources)
    if missing:
        raise DatagenError(f"draws from the data source {missing[0]!r}, which the recipe's data: section does not name", template.path, "slots")
    used = {slot.source: sources[slot.source] for slot in template.sources.values()}
    sizes = {name: source.height for name, source in used.items()}
    weights = {}
    for name, slot in template.sources.items():
        if slot.weight_column is not None:
            weights[name] = _weights(used[slot.source], slot.weight_column, f"{template.path.name} slots.{name}")
    expected = count if count is not None else max((sizes[s.source] for s in template.sources.values() if s.k is None), default=1)
    plan = bounded_rendering(
        lambda: plan_source_prompts(template, select_vocabulary(template), count, seed, sizes, weights), template.path, expected
    )
    wanted: dict[str, set[int]] = {}
    for _, positions in plan:
        for name, where in positions.items():
            wanted.setdefault(template.sources[name].source, set()).update(where if isinstance(where, list) else [where])
    fetched = {name: dict(zip(sorted(p), used[name].rows(sorted(p)))) for name, p in wanted.items()}

    def render() -> list[dict[str, Any]]:
        rows = []
        for combo, positions in plan:
            full, keys, ids = dict(combo), {n: slot_key(v) for n, v in combo.items()}, []
            for name, where in positions.items():
                slot = template.sources[name]
                picked = [fetched[slot.source][p] for p in (where if isinstance(where, list) else [where])]
                values = [{k: v for k, v in r.items() if k != "_id"} for r in picked]
                names = [f"{slot.source}:{r['_id']}" for r in picked]
                full[name] = values if isinstance(where, list) else values[0]
                keys[name] = names if isinstance(where, list) else names[0]
                ids += names
            content = hashlib.sha256(json.dumps([full[n] for n in sorted(positions)], sort_keys=True, default=str).encode()).hexdigest()[:16]
            row = render_prompt(template, full, seed, keys, content)
            row["source_ids"] = list(dict.fromkeys(ids))
            rows.append(row)
        return rows

    return bounded_rendering(render, template.path, len(plan))


def _weights(source, column: str, user: str) -> list[float]:
    """A source's weight column as positive finite floats; raises DatagenError naming the row."""
    source.check_columns({column}, user)
    values = source.column_values(column)
    try:
        numbers = values.cast(pl.Float64, strict=True)
    except pl.exceptions.PolarsError:
        bad = values.cast(pl.Float64, strict=False).is_null().arg_max()
        raise source.fail(f"{source.where(bad, column)} is not a number, and {user} weighs rows by it") from None
    bad_rows = (~(numbers > 0) | numbers.is_nan() | numbers.is_infinite())
    if bad_rows.any():
        raise source.fail(f"{source.where(bad_rows.arg_max(), column)}: a weight must be a positive number (got {numbers[bad_rows.arg_max()]})")
    return numbers.to_list()


def select_vocabulary(template: Template) -> tuple[list[dict[str, SlotValue]], list[float]] | None:
    """The template's vocabulary-slot combinations and their weights (one empty combination when
    it has none), or None when there are more than ENUMERATION_LIMIT (then drawn slot by slot)."""
    if not template.spec.slots:
        return [{}], [1.0]
    if template.combination_count() > ENUMERATION_LIMIT:
        return None
    combos = _all_combinations(template)
    if not combos:
        raise DatagenError("no slot combination satisfies this expression", template.path, "where")
    return combos, [_weight(template, c) for c in combos]


def draw_vocabulary(template: Template, rng: random.Random) -> dict[str, SlotValue] | None:
    """One combination drawn slot by slot with the template's weights, or None when `where` refuses it."""
    weights = template.spec.expansion.weights
    combo = {}
    for n, vocab in template.spec.slots.items():
        combo[n] = rng.choices(vocab, weights=[weights.get(n, {}).get(slot_key(v), 1.0) for v in vocab])[0]
    return combo if template.accepts(combo) else None


def bounded_rendering(render: Callable[[], list[dict[str, Any]]], source: Path, prompts: int) -> list[dict[str, Any]]:
    """`render()` (rows rendered from templates) in a child process limited to EXPAND_SECONDS +
    EXPAND_SECONDS_PER_PROMPT * prompts seconds and EXPAND_MEMORY_BYTES more memory (datagen.bounded).
    A DatagenError raised by `render` (naming its template and field) comes back as it is; a breach
    without one is reported against `source`."""
    seconds = EXPAND_SECONDS + EXPAND_SECONDS_PER_PROMPT * prompts
    try:
        return run_bounded(render, seconds, EXPAND_MEMORY_BYTES)
    except Exceeded as err:
        message = f"{_TOO_SLOW}; limit {seconds:g} s" if err.what == "time" else _TOO_BIG
        raise DatagenError(message, source) from None


def _expand(template: Template, count: int | None, seed: int) -> list[dict[str, Any]]:
    return [render_prompt(template, combo, seed) for combo in select_combinations(template, count, seed)]
