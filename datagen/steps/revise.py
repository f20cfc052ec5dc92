"""Critique and revision (Constitutional AI): the model critiques each answer against a principle
drawn from a constitution, then rewrites it to fix what the critique found.

The stage annotates; it drops nothing unless `on_error: drop`. The revision becomes the chosen side
of a `critique_revision` pair and the original answer its rejected side. A critique or revision
that fails (backend error, empty text, revision cut off at max_tokens) or is no revision at all
(it describes the revision, restates the critique or loops: `datagen.text.degenerate.revision_problem`)
is recorded in `<label>_error`, never fatal, and never becomes a chosen side.
"""

from __future__ import annotations

import random
import re
from typing import Annotated, Any, Callable, ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from datagen.llm import Backend, ChatRequest, Generation, make_backend
from datagen.llm.stage_model import OneCompletionSampling, StageModel
from datagen.text.degenerate import revision_problem
from datagen.sources.constitutions import Constitution, Principle, load_constitution
from datagen.llm.generate import RESERVED_COLUMNS, request_seed
from datagen.paths import ShippedOrFile
from datagen.rows import BackendConfig
from datagen.steps.base import StageConfigBase, Step, StepContext

COLUMNS = ("principle", "critique", "revision", "error")
CRITIQUE_REQUEST = "Critique request: {critique}\nWrite only the critique, in a few sentences. Do not rewrite the response yet."
REVISION_REQUEST = (
    "Revision request: {revision}\nWrite only the revised response, exactly as it should be sent to the user: "
    "no preamble, no title and no comments about what changed."
)
# A label the model may put before its rewrite ("Revised response:", "Here is the revision:").
LABEL = re.compile(r"\A\W*(?:here(?:'s| is) )?(?:the |my |a )?(?:revised (?:response|answer|version)|revision)\W*?:\W*", re.IGNORECASE)


class ReviseSamplingConfig(OneCompletionSampling):
    """One critique and one revision per candidate; room for a rewrite of a full answer."""

    one_completion_because: ClassVar[str] = "the revise stage writes one critique and one revision per candidate"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1)


class ReviseBackendConfig(BackendConfig):
    """Which model critiques and revises; its sampling is the stage's own `sampling:`."""

    sampling: None = None  # type: ignore[assignment]

    @field_validator("sampling", mode="before")
    @classmethod
    def _stage_owns_sampling(cls, value: Any) -> None:
        if value is not None:
            raise ValueError("set the revise stage's own 'sampling:', not backend.sampling")
        return None


class ReviseConfig(StageConfigBase):
    stage: Literal["revise"] = "revise"
    constitution: Annotated[Constitution | str, ShippedOrFile] = Field("hhh", validate_default=True, description="a shipped constitution's name, a path to a YAML file, or one inline")
    principles: list[str] | None = Field(None, min_length=1, description="draw only from these principle ids; default all")
    backend: ReviseBackendConfig | None = Field(None, description="default: the recipe's generator backend, so the model revises itself")
    sampling: ReviseSamplingConfig = Field(default_factory=ReviseSamplingConfig)
    critique_max_tokens: int = Field(128, ge=1, description="the critique's token budget; sampling.max_tokens is the revision's")
    seed: int = Field(0, ge=0, description="seeds the principle drawn per candidate and the requests")
    on_error: Literal["keep", "drop"] = Field("keep", description="what happens to a candidate whose revision failed")
    needs_context: ClassVar[bool] = True

    @field_validator("constitution", mode="after")
    @classmethod
    def _load_constitution(cls, constitution: Constitution | str) -> Constitution:
        # Loaded here so that `datagen validate` reports a bad file and the stage key covers its text.
        return load_constitution(constitution) if isinstance(constitution, str) else constitution

    @model_validator(mode="after")
    def _consistent(self) -> "ReviseConfig":
        ids = [p.id for p in self.constitution_spec.principles]
        unknown = sorted(set(self.principles or []) - set(ids))
        if unknown:
            raise ValueError(f"principles: {unknown[0]!r} is not in the constitution {self.constitution_spec.id!r} ({', '.join(ids)})")
        if self.sampling.min_tokens > self.critique_max_tokens:
            raise ValueError(f"sampling.min_tokens ({self.sampling.min_tokens}) is larger than critique_max_tokens ({self.critique_max_tokens})")
        clash = sorted({f"{self.label}_{c}" for c in COLUMNS} & RESERVED_COLUMNS)
        if clash:
            raise ValueError(f"the revise column {clash[0]!r} would overwrite a candidate column; choose another 'name'")
        return self

    @property
    def constitution_spec(self) -> Constitution:
        assert isinstance(self.constitution, Constitution)  # the validator loads it
        return self.constitution

    def model_backend(self, context: StepContext | None) -> ReviseBackendConfig | None:
        """The model that critiques and revises: the stage's own backend, else (in a run) the
        generator's, so the model revises its own answers. Resolved here, from the run's context:
        the recipe's config of the stage is left as written."""
        if self.backend is not None or context is None:
            return self.backend
        return ReviseBackendConfig.model_validate(context.generator.model_dump(exclude={"sampling"}, exclude_unset=True))

    def build(self) -> "ReviseStage":
        """The stage outside a run: its own backend, else the embedded default model."""
        return ReviseStage(self)

    def build_step(self, context: StepContext) -> "ReviseStage":
        return ReviseStage(self, backend=self.model_backend(context))


def clean_revision(text: str) -> str:
    return LABEL.sub("", text.strip(), count=1).strip()


class ReviseStage(Step):
    """Built ReviseConfig. `backend`: the model it asks (ReviseConfig.model_backend in a run);
    default: the config's own, else the embedded default model."""

    def __init__(self, config: ReviseConfig, backend_factory: Callable[[], Backend] | None = None, backend: ReviseBackendConfig | None = None):
        self.config = config
        self.label = config.label
        self.backend = backend or config.backend or ReviseBackendConfig()
        # the generator's model, which is not the config's `backend`: the Ray executor places it
        self.engine = self.backend if config.backend is None and backend is not None else None
        wanted = config.principles
        self.principles: list[Principle] = [p for p in config.constitution_spec.principles if wanted is None or p.id in wanted]
        self.model = StageModel(backend_factory or self._default_backend, "revise", self.label, self.backend)

    def backend_config(self) -> BackendConfig:
        """The model that critiques and revises (see the class), as a plain backend config."""
        config = self.backend
        # Only the fields that were set: kind-specific fields must stay unset for the other kinds.
        return BackendConfig.model_validate(config.model_dump(exclude={"sampling"}, exclude_unset=True))

    def _default_backend(self) -> Backend:
        return make_backend(self.backend_config(), self.config.seed)

    def close(self) -> None:
        self.model.close()

    def principle_for(self, candidate_id: str) -> Principle:
        return random.Random(f"{self.config.seed}:{candidate_id}").choice(self.principles)

    @staticmethod
    def _text(generation: Generation, what: str, cut_is_error: bool) -> tuple[str | None, str | None]:
        if generation.error is not None:
            return None, f"{what}: backend error: {generation.error}"[:300]
        if not generation.completions:
            return None, f"{what}: backend returned no completion"
        completion = generation.completions[0]
        text = clean_revision(completion.text) if what == "revision" else completion.text.strip()
        if not text:
            return None, f"{what}: empty"
        if cut_is_error and completion.finish_reason == "length":
            return None, f"{what}: cut off at max_tokens"
        return text, None

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = batch.select("candidate_id", "messages", "completion").to_dicts()
        principles = [self.principle_for(row["candidate_id"]) for row in rows]
        conversations = [list(row["messages"]) + [{"role": "assistant", "content": row["completion"] or ""}] for row in rows]
        critique_turns = [
            c + [{"role": "user", "content": CRITIQUE_REQUEST.format(critique=p.critique.strip())}] for c, p in zip(conversations, principles)
        ]
        ids = [row["candidate_id"] for row in rows]
        critique_sampling = self.config.sampling.model_copy(update={"max_tokens": self.config.critique_max_tokens})
        asked = self.model.ask([ChatRequest(messages=m, seed=request_seed(self.config.seed, f"{c}:critique")) for m, c in zip(critique_turns, ids)], critique_sampling)
        critiques = [self._text(g, "critique", cut_is_error=False) for g in asked]
        used = [[g.prompt_tokens, sum(c.completion_tokens for c in g.completions)] for g in asked]

        # Only candidates with a critique go on to the revision turn, all in one call.
        todo = [i for i, (text, _) in enumerate(critiques) if text is not None]
        revision_turns = [
            critique_turns[i] + [
                {"role": "assistant", "content": critiques[i][0]},
                {"role": "user", "content": REVISION_REQUEST.format(revision=principles[i].revision.strip())},
            ]
            for i in todo
        ]
        asked = self.model.ask([ChatRequest(messages=m, seed=request_seed(self.config.seed, f"{ids[i]}:revision")) for m, i in zip(revision_turns, todo)], self.config.sampling)
        revisions: list[tuple[str | None, str | None]] = [(None, None)] * len(rows)
        for i, generation in zip(todo, asked):
            used[i][0] += generation.prompt_tokens
            used[i][1] += sum(c.completion_tokens for c in generation.completions)
            text, error = self._text(generation, "revision", cut_is_error=True)
            problem = revision_problem(text, critiques[i][0], rows[i]["completion"]) if text is not None else None
            if problem is not None:  # seen with small models: commentary, the critique again, a loop
                text, error = None, f"revision: {problem}"
            revisions[i] = (text, error)

        errors = [critique_error or revision_error for (_, critique_error), (_, revision_error) in zip(critiques, revisions)]
        keep = [error is None or self.config.on_error == "keep" for error in errors]
        label = self.label
        return batch.with_columns(
            pl.Series(f"{label}_principle", [p.id for p in principles], dtype=pl.String),
            pl.Series(f"{label}_critique", [text for text, _ in critiques], dtype=pl.String),
            pl.Series(f"{label}_revision", [text for text, _ in revisions], dtype=pl.String),
            pl.Series(f"{label}_error", errors, dtype=pl.String),
            pl.Series(f"{label}_keep", keep, dtype=pl.Boolean),
            pl.Series(f"{label}_reason", [None if k else "revise_error" for k in keep], dtype=pl.String),
            pl.Series(f"{label}_prompt_tokens", [p for p, _ in used], dtype=pl.Int64),
            pl.Series(f"{label}_completion_tokens", [c for _, c in used], dtype=pl.Int64),
        )

    def summarize(self, outputs: pl.LazyFrame) -> dict[str, Any]:
        label = self.label
        frame = (
            outputs.filter(pl.col(f"{label}_keep").is_not_null())
            .select("completion", f"{label}_principle", f"{label}_revision", f"{label}_error")
            .collect()
        )
        revised = frame.filter(pl.col(f"{label}_revision").is_not_null())
        errors = frame.filter(pl.col(f"{label}_error").is_not_null())[f"{label}_error"]
        kinds = errors.str.extract(r"^(\w+: [^:]+)", 1).value_counts(sort=True).rows() if errors.len() else []
        unchanged = int((revised["completion"].str.strip_chars() == revised[f"{label}_revision"]).sum()) if revised.height else 0
        return {
            "constitution": self.config.constitution_spec.id,
            "candidates": frame.height,
            "revised": revised.height,
            "errors": errors.len(),
            "error_rate": round(errors.len() / frame.height, 4) if frame.height else None,
            "error_kinds": {str(kind): int(count) for kind, count in kinds},
            "unchanged": unchanged,
            "principles": dict(sorted((str(k), int(v)) for k, v in frame[f"{label}_principle"].value_counts().rows())),
            "mean_chars_original": _mean(revised["completion"].str.len_chars()),
            "mean_chars_revision": _mean(revised[f"{label}_revision"].str.len_chars()),
        }


def _mean(values: pl.Series) -> float | None:
    return round(float(values.mean()), 1) if values.len() else None
