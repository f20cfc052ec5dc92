"""Prompt rows from a plan: the counterexample template rendered with each cluster's seeds, and the
correction template rendered with each failure the cluster re-solves.

The reserved slot (`cluster`, `failure`) takes its values from the plan; any other slot of the
template (e.g. a setting) is drawn from the template's own vocabulary. Every draw comes from an RNG
seeded by (recipe seed, template, cluster, prompt number), so the prompts reproduce exactly.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import polars as pl

from datagen.counterexamples.plan import ClusterPlan, Plan
from datagen.errors import DatagenError
from datagen.llm.generate import prompts_frame
from datagen.rows import SlotValue
from datagen.sources.templates import Template, bounded_rendering, render_prompt, slot_key

if TYPE_CHECKING:
    from datagen.recipe import LoadedRecipe

CLUSTER_SLOT, FAILURE_SLOT = "cluster", "failure"
COUNTEREXAMPLE, CORRECTION = "counterexample", "correction"
MAX_DRAWS = 1000  # attempts at slot values that satisfy the template's `where`
# Provenance every counterexample prompt row carries on top of the usual prompt columns.
PROVENANCE_SCHEMA: dict[str, pl.DataType] = {
    "role": pl.String,  # counterexample (a new problem) or correction (a failure asked again)
    "cluster_id": pl.Int64,
    "cluster_label": pl.String,
    "cluster_size": pl.Int64,
    "cluster_severity": pl.Float64,
    "seed_ids": pl.List(pl.String),  # failures shown in (or, for a correction, asked by) the prompt
    "neighbour_ids": pl.List(pl.String),  # training examples shown in the prompt
    "failure_id": pl.String,  # correction: the failure asked again
    "failure_output": pl.String,  # correction: its failing output, the rejected side of a pair
    "kind": pl.String,  # code | math | text: the cluster's kind, which decides the template and the checks
}


def _require_slot(template: Template, slot: str) -> None:
    if slot not in template.spec.slots:
        raise DatagenError(f"a {slot!r} slot is needed: the counterexample expansion fills it from the failures", template.path, "slots")


def _draw(template: Template, reserved: str, value: dict[str, Any], rng: random.Random) -> dict[str, SlotValue]:
    """The reserved slot's value plus one weighted draw for each of the template's other slots."""
    weights = template.spec.expansion.weights
    for _ in range(MAX_DRAWS):
        combo: dict[str, SlotValue] = {}
        for name, vocabulary in template.spec.slots.items():
            if name == reserved:
                combo[name] = value
            else:
                table = weights.get(name, {})
                combo[name] = rng.choices(vocabulary, weights=[table.get(slot_key(v), 1.0) for v in vocabulary])[0]
        if template.accepts(combo):
            return combo
    raise DatagenError(f"no slot values satisfy 'where' together with the {reserved!r} slot", template.path, "where")


def _failure(failures: pl.DataFrame, row: int) -> dict[str, Any]:
    f = failures.row(row, named=True)
    return {"id": f["failure_id"], "prompt": f["prompt"], "output": f["output"], "expected": f["expected"], "tag": f["tag"],
            "tests": f["tests"]}


def _provenance(p: ClusterPlan, role: str, seed_ids: list[str], neighbour_ids: list[str], failure: dict | None) -> dict[str, Any]:
    return {
        "role": role,
        "cluster_id": p.cluster.id,
        "cluster_label": p.cluster.label,
        "cluster_size": p.cluster.size,
        "cluster_severity": p.severity,
        "seed_ids": seed_ids,
        "neighbour_ids": neighbour_ids,
        "failure_id": failure["id"] if failure else None,
        "failure_output": failure["output"] if failure else None,
        "kind": p.kind,
    }


def counterexample_rows(plan: Plan, template: Template, seed: int, clusters: list[ClusterPlan] | None = None) -> list[dict[str, Any]]:
    """One prompt per unit of each cluster's budget not spent on corrections. Prompt j shows
    `seeds_per_cluster` failures drawn from the cluster's central pool (most central first) and the
    training examples nearest the cluster."""
    _require_slot(template, CLUSTER_SLOT)
    failures, train = plan.failures, plan.train
    rows = []
    for p in plan.clusters if clusters is None else clusters:
        neighbours = [train.row(i, named=True) for i in p.neighbours] if train is not None else []
        neighbour_values = [{"id": n["train_id"], "prompt": n["prompt"]} for n in neighbours]
        for j in range(p.new_problems):
            rng = random.Random(f"{seed}:{template.id}:{p.cluster.id}:{j}")
            picked = sorted(rng.sample(range(len(p.pool)), min(plan.config.seeds_per_cluster, len(p.pool))))
            shown = [_failure(failures, p.pool[i]) for i in picked]
            value = {
                "id": f"{p.cluster.id}.{j}",
                "label": p.cluster.label,
                "terms": p.cluster.terms,
                "failures": shown,
                "neighbours": neighbour_values,
            }
            row = render_prompt(template, _draw(template, CLUSTER_SLOT, value, rng), seed)
            rows.append(row | _provenance(p, COUNTEREXAMPLE, [f["id"] for f in shown], [n["id"] for n in neighbour_values], None))
    return rows


def correction_rows(plan: Plan, template: Template, seed: int, clusters: list[ClusterPlan] | None = None) -> list[dict[str, Any]]:
    """One prompt per failure a cluster re-solves: the failure's own prompt, its `expected` as
    reference (math) or its `tests` (code)."""
    _require_slot(template, FAILURE_SLOT)
    rows = []
    for p in plan.clusters if clusters is None else clusters:
        for row_index in p.corrections:
            failure = _failure(plan.failures, row_index)
            rng = random.Random(f"{seed}:{template.id}:{failure['id']}")
            row = render_prompt(template, _draw(template, FAILURE_SLOT, failure, rng), seed)
            if p.kind == "code":
                if not row.get("tests"):
                    raise DatagenError("renders no tests; code corrections are checked by them (use {{ failure.tests }})", template.path, "tests")
            elif row["reference"] is None:
                raise DatagenError("renders no reference; corrections are verified against it (use {{ failure.expected }})", template.path, "reference")
            rows.append(row | _provenance(p, CORRECTION, [failure["id"]], [], failure))
    return rows


def expand_plan(plan: Plan, templates: dict[str, Template], seed: int) -> list[dict[str, Any]]:
    """Code clusters get the code templates (when the input names them), the others the default ones."""
    config = plan.config
    code = [p for p in plan.clusters if p.kind == "code" and config.code_counterexample_template is not None]
    other = [p for p in plan.clusters if p not in code]
    rows = counterexample_rows(plan, templates[config.counterexample_template], seed, other)
    if code:
        rows += counterexample_rows(plan, templates[config.code_counterexample_template], seed, code)
    fixed_by_code = [p for p in plan.clusters if p.kind == "code" and config.code_correction_template is not None]
    fixed_other = [p for p in plan.clusters if p.kind != "code" and config.correction_template is not None]
    if fixed_other:
        rows += correction_rows(plan, templates[config.correction_template], seed, fixed_other)
    if fixed_by_code:
        rows += correction_rows(plan, templates[config.code_correction_template], seed, fixed_by_code)
    return rows


def counterexample_prompts(loaded: "LoadedRecipe") -> pl.DataFrame:
    """The prompts of a recipe with an `input` section (what expand_prompts gives for it)."""
    recipe = loaded.recipe
    plan = loaded.counterexample_plan()
    # Rendering under the same time and memory limits as any template's expansion.
    rows = bounded_rendering(lambda: expand_plan(plan, loaded.templates, recipe.seed), loaded.path, recipe.budget or 0)
    return prompts_frame(rows, PROVENANCE_SCHEMA)
