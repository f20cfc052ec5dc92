"""The converse step: a row's exchange (its request and its answer) extended to `turns` user /
assistant pairs, alternating a simulated user and the assistant.

Each turn is two requests per row, each with its own seed (from the sampling seed, the step's
label, the row's id, the turn and the role), so a shard reproduces on its own:
  - the simulated user gets `user_system` (Jinja over the row's columns and slots) and the
    conversation so far with the roles swapped (it plays the user; the assistant's words reach it
    as the other party's), and writes the next user message;
  - the assistant gets the conversation so far plus that message, with the row's own system
    message, and answers.
The row's `messages` becomes the whole conversation up to the last user message and `completion`
the last answer, so the SFT builder writes TRL `messages` with `turns` user/assistant pairs. A
failed request is a verdict on its row (`generate_error`), never a crashed run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import jinja2
import polars as pl
from pydantic import Field, model_validator

from datagen.llm import ChatRequest
from datagen.llm.generate import MESSAGE, request_seed
from datagen.rows import BackendConfig, SamplingConfig
from datagen.steps.base import StageConfigBase, StepContext
from datagen.steps.llm import SLOTS_VARIABLE, ModelStep, Rendered
from datagen.sources.templates import MAX_RENDERED_CHARS, _environment, _undeclared, bounded_rendering

DEFAULT_USER_SYSTEM = (
    "You are the user in this conversation, talking to an AI assistant. Write your next message: a natural "
    "follow-up question or request about the assistant's last answer, one or two sentences. Write only the message."
)


class ConverseConfig(StageConfigBase):
    stage: Literal["converse"] = "converse"
    needs_context: ClassVar[bool] = True
    turns: int = Field(3, ge=2, le=32, description="user/assistant pairs in the finished conversation (the first is the row's own)")
    user_system: str = Field(DEFAULT_USER_SYSTEM, description="the simulated user's instructions: Jinja over the row's columns and slots")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=128))
    backend: BackendConfig | None = Field(None, description="the model for both roles; the generator's when unset")

    @model_validator(mode="after")
    def _compile(self) -> "ConverseConfig":
        if self.sampling.n != 1:
            raise ValueError("sampling.n: must be 1 (one message per turn)")
        self.compiled()  # syntax errors now, before any model starts
        return self

    def compiled(self) -> jinja2.Template:
        """`user_system` compiled in the templates' sandbox (where used: compiled templates do not pickle)."""
        try:
            return _environment().from_string(self.user_system)
        except jinja2.TemplateSyntaxError as err:
            raise ValueError(f"user_system: Jinja syntax error on line {err.lineno}: {err.message}") from None

    def reads(self) -> set[str]:
        return super().reads() | (_undeclared(_environment().parse(self.user_system)) - {SLOTS_VARIABLE})

    def writes(self) -> set[str]:
        return super().writes() | {f"{self.label}_error", f"{self.label}_turns", f"{self.label}_tokens"}

    def model_backend(self, context: StepContext) -> BackendConfig:
        return self.backend if self.backend is not None else context.generator

    def build_step(self, context: StepContext) -> "ConverseStep":
        return ConverseStep(self, context)


def _user_systems(config: ConverseConfig, rows: list[dict[str, Any]]) -> list[Rendered]:
    out, compiled = [], config.compiled()
    for row in rows:
        slots = json.loads(row.get("slots") or "{}")
        try:
            text = compiled.render(**(slots | {k: v for k, v in row.items() if not k.startswith("_")} | {SLOTS_VARIABLE: slots})).strip()
            out.append(Rendered([{"role": "system", "content": text[:MAX_RENDERED_CHARS]}], None))
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, RecursionError) as err:
            out.append(Rendered(None, f"user_system: {type(err).__name__}: {err}"))
    return out


def swapped(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation as the simulated user sees it: its own (user) turns as assistant turns."""
    flip = {"user": "assistant", "assistant": "user"}
    return [{"role": flip[m["role"]], "content": m["content"]} for m in conversation if m["role"] in flip]


class ConverseStep(ModelStep):
    """Built ConverseConfig: the turns of every row of a batch, one backend call per turn and role."""

    kind = "converse"

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        c, L = self.config, self.label
        rows = batch.to_dicts()
        systems = bounded_rendering(lambda: _user_systems(c, rows), Path(self.source), len(rows)) if rows else []
        # per row: its own system message (if any) and the turns so far
        own_system = [[m for m in row["messages"] if m["role"] == "system"] for row in rows]
        turns = [[m for m in row["messages"] if m["role"] != "system"] + [{"role": "assistant", "content": row["completion"] or ""}] for row in rows]
        errors: list[str | None] = [s.error for s in systems]
        tokens = [0] * len(rows)
        prompt_tokens = [0] * len(rows)  # every request's prompt, both roles, all turns
        last = [None] * len(rows)
        for turn in range(2, c.turns + 1):
            for role in ("user", "assistant"):
                alive = [i for i in range(len(rows)) if errors[i] is None]
                requests = []
                for i in alive:
                    seed = request_seed(self.seed, f"{L}:{rows[i]['candidate_id']}:{turn}:{role}")
                    messages = systems[i].messages + swapped(turns[i]) if role == "user" else own_system[i] + turns[i]
                    requests.append(ChatRequest(messages=messages, seed=seed))
                for i, generation in zip(alive, self.model.ask(requests, c.sampling)):
                    if generation.error is not None or not generation.completions or not generation.completions[0].text.strip():
                        errors[i] = generation.error or f"empty {role} message at turn {turn}"
                        continue
                    completion = generation.completions[0]
                    prompt_tokens[i] += generation.prompt_tokens
                    turns[i].append({"role": role, "content": completion.text.strip()})
                    tokens[i] += completion.completion_tokens
                    last[i] = completion
        messages, completions, finish, keep, reason, count = [], [], [], [], [], []
        for i, row in enumerate(rows):
            ok = errors[i] is None
            messages.append(own_system[i] + turns[i][:-1] if ok else row["messages"])
            completions.append(turns[i][-1]["content"] if ok else row["completion"])
            finish.append(last[i].finish_reason if ok and last[i] is not None else row["finish_reason"])
            keep.append(ok)
            reason.append(None if ok else "generate_error")
            count.append(sum(m["role"] == "user" for m in turns[i]))
        return batch.with_columns(
            pl.Series("messages", messages, dtype=pl.List(MESSAGE)),
            pl.Series("completion", completions, dtype=pl.String),
            pl.Series("finish_reason", finish, dtype=pl.String),
            pl.Series(f"{L}_keep", keep, dtype=pl.Boolean),
            pl.Series(f"{L}_reason", reason, dtype=pl.String),
            pl.Series(f"{L}_error", errors, dtype=pl.String),
            pl.Series(f"{L}_turns", count, dtype=pl.Int64),
            pl.Series(f"{L}_tokens", tokens, dtype=pl.Int64),
            pl.Series(f"{L}_prompt_tokens", prompt_tokens, dtype=pl.Int64),
            pl.Series(f"{L}_completion_tokens", tokens, dtype=pl.Int64),
        )

    def summarize(self, outputs: pl.LazyFrame) -> dict[str, Any]:
        """Over the rows the step was given: conversations, finished ones (every turn answered),
        failed ones with their error kinds (the error's first words), user turns per finished
        conversation, and the completion tokens of both roles."""
        L = self.label
        frame = outputs.filter(pl.col(f"{L}_keep").is_not_null()).select(f"{L}_keep", f"{L}_error", f"{L}_turns", f"{L}_tokens").collect()
        finished = frame.filter(pl.col(f"{L}_keep"))
        errors = frame[f"{L}_error"].drop_nulls()
        kinds = errors.str.extract(r"^([^:]{1,60})", 1).value_counts(sort=True).rows() if errors.len() else []
        turns = finished[f"{L}_turns"].value_counts().sort(f"{L}_turns").rows()
        return {
            "conversations": frame.height,
            "finished": finished.height,
            "errors": errors.len(),
            "error_rate": round(errors.len() / frame.height, 4) if frame.height else None,
            "error_kinds": {str(kind): int(count) for kind, count in kinds},
            "turns": {str(t): int(n) for t, n in turns},
            "tokens": int(frame[f"{L}_tokens"].sum() or 0),
        }

    def close(self) -> None:
        self.model.close()
