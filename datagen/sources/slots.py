"""Template slots drawn from data sources, and sampling parameters drawn per prompt.

In a template YAML::

    slots:
      ticket: {from: tickets}            # one source row per prompt: Jinja sees {{ ticket.subject }}
      shots: {from: tickets, k: 3}       # k rows, without replacement: a list ({% for s in shots %})
      persona: [...]                     # vocabulary slots as before
    sampling: {temperature: [0.3, 0.7, 1.0]}        # or {temperature: {min: 0.2, max: 1.0}}; top_p too

Plan (plan_source_prompts, deterministic in the seed): a one-row slot walks its source in a seeded
order (a permutation of the rows, or with `weight_column` a weighted one: Efraimidis & Spirakis,
"Weighted random sampling with a reservoir", IPL 2006), a new order each time it has used every row;
`count` defaults to one prompt per row of the largest one-row source. The vocabulary slots are drawn
per prompt with their weights and `where`, never repeating a (rows, vocabulary) combination. A shots
slot draws its k rows per prompt without replacement (weighted when asked: numpy's Generator.choice),
never one of the rows the same prompt uses as a one-row slot of the same source.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import nodes
from pydantic import Field, ValidationError, model_validator

from datagen.errors import DatagenError, from_validation_error
from datagen.rows import StrictModel

MAX_ATTEMPTS = 100  # draws of a vocabulary combination before a prompt's rows are declared exhausted
SAMPLED = ("temperature", "top_p")  # sampling parameters a template may draw per prompt


class SourceSlot(StrictModel):
    """`{from: NAME}` (one row per prompt) or `{from: NAME, k: K}` (K rows, a list)."""

    source: str = Field(alias="from", pattern=r"^[A-Za-z0-9_.-]+$")
    k: int | None = Field(None, ge=1, le=1000, description="few-shot rows per prompt, drawn without replacement")
    weight_column: str | None = Field(None, description="a numeric column: rows are drawn with these weights")


class Range(StrictModel):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class SamplingSlots(StrictModel):
    """Sampling parameters drawn per prompt: a list of values (one picked) or a range (uniform)."""

    temperature: list[float] | Range | None = None
    top_p: list[float] | Range | None = None

    @model_validator(mode="after")
    def _in_bounds(self) -> "SamplingSlots":
        bounds = {"temperature": (0.0, 2.0), "top_p": (1e-9, 1.0)}
        for name in SAMPLED:
            value = getattr(self, name)
            values = [value.min, value.max] if isinstance(value, Range) else (value or [])
            if isinstance(value, list) and not value:
                raise ValueError(f"{name}: an empty list")
            low, high = bounds[name]
            for v in values:
                if not low <= v <= high:
                    raise ValueError(f"{name}: {v} is outside [{low:g}, {high:g}]")
        return self


def split_slots(data: dict, path: Path) -> tuple[dict, dict[str, SourceSlot], SamplingSlots | None]:
    """A template file's data without its source slots and `sampling`, and those two parsed.
    Raises DatagenError naming the field."""
    data = dict(data)
    sources: dict[str, SourceSlot] = {}
    slots = data.get("slots")
    if isinstance(slots, dict):
        kept = {}
        for name, value in slots.items():
            if isinstance(value, dict) and "from" in value:
                try:
                    sources[str(name)] = SourceSlot.model_validate(value)
                except ValidationError as err:
                    error = from_validation_error(err, path)
                    error.field = f"slots.{name}" + (f".{error.field}" if error.field else "")
                    raise error from None
            else:
                kept[name] = value
        data["slots"] = kept
    sampling = None
    if "sampling" in data:
        try:
            sampling = SamplingSlots.model_validate(data.pop("sampling"))
        except ValidationError as err:
            error = from_validation_error(err, path)
            error.field = "sampling" + (f".{error.field}" if error.field else "")
            raise error from None
    return data, sources, sampling


def columns_used(asts: list[nodes.Template], sources: dict[str, SourceSlot]) -> dict[str, set[str]]:
    """Per source slot, the row columns the Jinja fields read: `slot.col`, `slot['col']`, and for a
    list slot `item.col` where `{% for item in slot %}`, or `slot[0].col`."""
    found: dict[str, set[str]] = {name: set() for name in sources}
    for ast in asts:
        aliases = {name: name for name in sources}
        for loop in ast.find_all(nodes.For):
            if isinstance(loop.iter, nodes.Name) and loop.iter.name in sources and isinstance(loop.target, nodes.Name):
                aliases[loop.target.name] = loop.iter.name
        for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
            base = node.node
            if isinstance(base, nodes.Getitem) and isinstance(base.node, nodes.Name) and isinstance(base.arg, nodes.Const) and isinstance(base.arg.value, int):
                base = base.node  # shots[0].col
            if not isinstance(base, nodes.Name) or base.name not in aliases:
                continue
            if isinstance(node, nodes.Getattr):
                found[aliases[base.name]].add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                found[aliases[base.name]].add(node.arg.value)
    return found


def unit(seed: int, *parts: str) -> float:
    """A number in [0, 1) fixed by the seed and `parts` (sha256), independent of any order."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def draw_sampling(sampling: SamplingSlots, seed: int, prompt_id: str) -> dict[str, float]:
    """The sampling parameters of one prompt, from the seed and its id."""
    drawn = {}
    for name in SAMPLED:
        value = getattr(sampling, name)
        if value is None:
            continue
        u = unit(seed, "sampling", name, prompt_id)
        drawn[name] = value[int(u * len(value))] if isinstance(value, list) else round(value.min + u * (value.max - value.min), 4)
    return drawn


def _order(n: int, weights: list[float] | None, rng: np.random.Generator) -> np.ndarray:
    if weights is None:
        return rng.permutation(n)
    keys = np.log(rng.random(n)) / np.asarray(weights)  # log(u ** (1 / w)): larger first
    return np.argsort(-keys, kind="stable")


def plan_source_prompts(template, vocabulary, count: int | None, seed: int, sizes: dict[str, int], weights: dict[str, list[float]]) -> list[tuple[dict, dict[str, Any]]]:
    """Per prompt: (vocabulary combination, {source slot: row position, or a list of them for a
    shots slot}). `vocabulary` is select_vocabulary's answer; `sizes` rows per source; `weights` per
    slot. Raises DatagenError when the count asks for more distinct prompts than there are."""
    slots = template.sources
    singles = [n for n, s in slots.items() if s.k is None]
    shots = [n for n, s in slots.items() if s.k is not None]
    if count is None:
        if not singles:
            raise DatagenError("a template drawing only few-shot rows needs a count (set it in the recipe's templates entry)", template.path, "slots")
        count = max(sizes[slots[n].source] for n in singles)
    for name in shots:
        size, k = sizes[slots[name].source], slots[name].k
        spare = sum(1 for n in singles if slots[n].source == slots[name].source)
        if k + spare > size:
            raise DatagenError(f"k = {k} rows per prompt, but the source {slots[name].source!r} has {size} row(s){' besides the one drawn' if spare else ''}", template.path, f"slots.{name}.k")
    rng = random.Random(f"{seed}:{template.id}:sources")
    orders: dict[str, tuple[int, np.ndarray]] = {}

    def position(name: str, i: int) -> int:
        size = sizes[slots[name].source]
        cycle = i // size
        if orders.get(name, (-1,))[0] != cycle:
            orders[name] = (cycle, _order(size, weights.get(name), np.random.default_rng([seed, cycle, int(unit(seed, template.id, name) * 2**32)])))
        return int(orders[name][1][i % size])

    plan: list[tuple[dict, dict[str, Any]]] = []
    seen: set[str] = set()
    for i in range(count):
        rows = {name: position(name, i) for name in singles}
        for attempt in range(MAX_ATTEMPTS):
            if vocabulary is None:
                combo = _draw(template, rng)
                if combo is None:
                    continue
            else:
                combo = rng.choices(vocabulary[0], weights=vocabulary[1])[0]
            drawn = dict(rows)
            for name in shots:
                drawn[name] = _shots(slots[name].k, sizes[slots[name].source], weights.get(name), [rows[n] for n in singles if slots[n].source == slots[name].source], rng)
            key = json.dumps([drawn, {n: str(v) for n, v in combo.items()}], sort_keys=True)
            if key not in seen:
                seen.add(key)
                plan.append((combo, drawn))
                break
        else:
            raise DatagenError(f"count {count}: only {len(plan)} distinct prompts could be drawn (rows x slot combinations are exhausted)", template.path, "slots")
    return plan


def _draw(template, rng: random.Random):
    from datagen.sources.templates import draw_vocabulary

    return draw_vocabulary(template, rng)


def _shots(k: int, size: int, weights: list[float] | None, exclude: list[int], rng: random.Random) -> list[int]:
    generator = np.random.default_rng(rng.getrandbits(64))
    if weights is None and not exclude:
        return [int(p) for p in generator.choice(size, k, replace=False)]
    w = np.ones(size) if weights is None else np.asarray(weights, dtype=float).copy()
    w[exclude] = 0.0
    return [int(p) for p in generator.choice(size, k, replace=False, p=w / w.sum())]
