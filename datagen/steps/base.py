"""The step contract: a config (what a recipe writes) that declares the columns it reads and writes,
its scope and whether it expands rows, and builds a `Step` (the callable that runs on a batch).

Capabilities come from the types: a `RunStep` is fitted on every alive row of the run before any
shard; every `Step` has `summarize` and `close` (no-ops unless the kind needs them); a config whose
`expands` is true returns its own rows (n children per input row, see datagen/steps/llm.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal

import polars as pl
from pydantic import Field

from datagen.rows import BackendConfig, StrictModel


Scope = Literal["row", "group", "run"]
COLUMN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# The text column a filter reads unless told otherwise: the last generated text.
TEXT = "completion"


@dataclass(frozen=True)
class StepContext:
    """What a step is built with besides its own config: the recipe's generator backend (an LLM
    step's default model), the sampling seed requests derive theirs from, the recipe file (errors
    name it), and the recipe's counterexample input section, budget and seed (None, None, 0 in a
    recipe without an input section; the counterexample step checks against the failures and
    reports the plan they make)."""

    generator: BackendConfig
    sampling_seed: int
    source: str
    input: Any = None  # datagen.counterexamples.config.InputConfig | None
    budget: int | None = None
    seed: int = 0
    plan: Any = None  # the plan of that input section (LoadedRecipe.counterexample_plan), made once per run


class StageConfigBase(StrictModel):
    """A step as a recipe writes it. Class-level declarations (not fields):
      scope: "row" (each row on its own), "group" (the rows of one group_id together, e.g. vote),
        "run" (every alive row of the run, e.g. dedup; its step is a RunStep). Read it from the
        config (`config.scope`): a kind whose scope depends on a field makes it a property
        (judge: group when pairwise).
      expands: the step returns new rows (children) instead of annotating its input rows.
      needs_context: the step is built with the run's StepContext (build_step).
    """

    scope: ClassVar[Scope] = "row"
    expands: ClassVar[bool] = False
    # Built from the run's StepContext (build_step), not from the config alone: executors that
    # build steps elsewhere (Ray workers) are given the built step instead.
    needs_context: ClassVar[bool] = False
    # Fields left out of the stage's resume key while they hold their default, so that runs made
    # before the field existed keep their finished shards.
    NEW_FIELDS: ClassVar[dict[str, Any]] = {"column": TEXT}

    column: str = Field(TEXT, pattern=COLUMN, description="the text column the step reads (default: the last generated text)")
    name: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]*$", description="column prefix; defaults to the stage kind")
    templates: list[str] | None = Field(
        None, min_length=1, description="apply only to rows of these templates; the others pass through untouched"
    )

    @property
    def label(self) -> str:
        return self.name or self.stage  # type: ignore[attr-defined]

    def input_files(self) -> list[Path]:
        """Files the stage reads besides its rows; their contents are part of the stage's key."""
        return []

    def views(self) -> dict[str, str]:
        """Columns the step's code reads under a fixed name -> the column it is given instead:
        {"completion": column} shows a filter another text (a generated question, say)."""
        return {TEXT: self.column}

    def reads(self) -> set[str]:
        """Columns an earlier step (or the prompt) must have written; checked before any model starts."""
        return set(self.views().values())

    def writes(self) -> set[str]:
        """Columns the step adds to its rows (its verdict at least)."""
        return {f"{self.label}_keep", f"{self.label}_reason"}

    def key_fields(self) -> dict[str, Any]:
        """The config as it enters the resume key (datagen.recipe.LoadedRecipe.stage_keys)."""
        data = self.model_dump(mode="json")
        for field, default in self.NEW_FIELDS.items():
            if data.get(field) == default:
                del data[field]
        return data

    def model_backend(self, context: StepContext) -> BackendConfig | None:
        """The model the step asks (its engine is held for the step's whole run), if any."""
        backend = getattr(self, "backend", None)
        return backend if isinstance(backend, BackendConfig) else None

    def build(self) -> "Step":
        raise NotImplementedError

    def build_step(self, context: StepContext) -> "Step":
        """The step as the executors build it; kinds that need the context (llm) override this."""
        return self.build()


class Step:
    """A built step. A filter adds `<label>_keep` (bool) and `<label>_reason` (null when kept)
    plus any scores to the rows it is given (rows every earlier step kept), without dropping or
    reordering them; an expanding step (its config's `expands`) returns its child rows instead.
    The executor calls, for every step:
      summarize(outputs: pl.LazyFrame) -> dict | None: step-level figures for the report and card
        (JSON-serializable), from all of the step's output shards; None: nothing to report.
      close(): when the step is done (or failed), to release what it holds (a model, an encoder),
        opened once on its first shard.
    """

    label: str
    # The model the step holds, when it is not its config's `backend` (an LLM step defaulting to
    # the generator's): the Ray executor gives such steps actors holding the engine.
    engine: BackendConfig | None = None

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    def summarize(self, outputs: pl.LazyFrame) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        return None


class RunStep(Step):
    """A step with state over the whole run (dedup, collapse): `fit(rows)` is called once before
    any shard, with a callable returning an iterator over every alive input row (all shards, in
    order); the shards are then looked up in what it decided."""

    def fit(self, rows: Callable[[], Iterator[pl.DataFrame]]) -> None:
        raise NotImplementedError


# The name the executors and older code use for a built step.
Stage = Step


def group_ids(batch: pl.DataFrame) -> pl.Series:
    """The group each row belongs to: the row an LLM step expanded (`group_id`), for first
    generation its prompt; rows made before group_id existed (or by hand) fall back to prompt_id."""
    if "group_id" not in batch.columns:
        return batch["prompt_id"]
    return batch.select(pl.coalesce("group_id", "prompt_id"))["group_id"]


def verdict(label: str, keep: pl.Expr, reason: pl.Expr) -> list[pl.Expr]:
    """The two verdict columns, with the reason null where the row is kept."""
    return [keep.alias(f"{label}_keep"), pl.when(keep).then(None).otherwise(reason).cast(pl.String).alias(f"{label}_reason")]


class FittedVerdicts:
    """The verdicts a global stage decided in `fit` (candidate_id plus its columns), looked up per
    shard by binary search over sorted ids: joining each shard against the whole table would hash
    every row of the run again for every shard."""

    def __init__(self, verdicts: pl.DataFrame):
        self.table = verdicts.sort("candidate_id")
        self.ids = self.table["candidate_id"]

    def lookup(self, batch: pl.DataFrame) -> pl.DataFrame | None:
        """The batch's verdict columns in the batch's row order, or None if fit did not see every row."""
        if batch.height == 0:
            return self.table.clear().drop("candidate_id")
        if self.ids.len() == 0:
            return None
        at = self.ids.search_sorted(batch["candidate_id"]).clip(upper_bound=self.ids.len() - 1)
        found = self.table.gather(at)
        if not (found["candidate_id"] == batch["candidate_id"]).all():
            return None
        return found.drop("candidate_id")

    def require(self, batch: pl.DataFrame, label: str) -> pl.DataFrame:
        """`lookup`, for a stage that cannot decide a batch on its own once fitted."""
        columns = self.lookup(batch)
        if columns is None:
            raise RuntimeError(f"stage {label!r} got rows that fit did not see")
        return columns
