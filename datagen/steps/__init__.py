"""Step kinds. Each module holds one kind: its config model (a StageConfigBase with a `stage`
literal) and the Step it builds. STEP_KINDS is the registry; StageConfig, the discriminated union a
recipe's `stages` list is validated with, is built from it. A new kind is one module plus its line here."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from datagen.steps.base import RunStep, Stage, StageConfigBase, Step, StepContext
from datagen.steps.collapse import CollapseConfig
from datagen.steps.converse import ConverseConfig
from datagen.steps.counterexample import CounterexampleConfig
from datagen.steps.dedup import DedupConfig
from datagen.steps.finished import FinishedConfig
from datagen.steps.judge import JudgeConfig
from datagen.steps.length import LengthConfig
from datagen.steps.llm import LlmConfig, ParseConfig
from datagen.steps.revise import ReviseConfig
from datagen.steps.verify import VerifyConfig
from datagen.steps.vote import VoteConfig

KINDS: tuple[type[StageConfigBase], ...] = (
    CollapseConfig, ConverseConfig, CounterexampleConfig, DedupConfig, FinishedConfig, JudgeConfig, LengthConfig, LlmConfig,
    ParseConfig, ReviseConfig, VerifyConfig, VoteConfig,
)
# `stage:` value -> config class.
STEP_KINDS: dict[str, type[StageConfigBase]] = {kind.model_fields["stage"].default: kind for kind in KINDS}

# The `stage` field picks the config class; an unknown kind is a validation error naming the tags.
StageConfig = Annotated[Union[KINDS], Field(discriminator="stage")]  # type: ignore[valid-type]

__all__ = ["STEP_KINDS", "RunStep", "Stage", "StageConfig", "StageConfigBase", "Step", "StepContext"]
