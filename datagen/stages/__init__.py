"""Step kinds. Each module holds one kind: its config model (a StageConfigBase with a `stage`
literal) and the Step it builds. STEP_KINDS is the registry; StageConfig, the discriminated union a
recipe's `stages` list is validated with, is built from it. A new kind is one module plus its line here."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from datagen.stages.base import RunStep, Stage, StageConfigBase, Step, StepContext
from datagen.stages.collapse import CollapseConfig
from datagen.stages.converse import ConverseConfig
from datagen.stages.counterexample import CounterexampleConfig
from datagen.stages.dedup import DedupConfig
from datagen.stages.finished import FinishedConfig
from datagen.stages.judge import JudgeConfig
from datagen.stages.length import LengthConfig
from datagen.stages.llm import LlmConfig, ParseConfig
from datagen.stages.revise import ReviseConfig
from datagen.stages.verify import VerifyConfig
from datagen.stages.vote import VoteConfig

KINDS: tuple[type[StageConfigBase], ...] = (
    CollapseConfig, ConverseConfig, CounterexampleConfig, DedupConfig, FinishedConfig, JudgeConfig, LengthConfig, LlmConfig,
    ParseConfig, ReviseConfig, VerifyConfig, VoteConfig,
)
# `stage:` value -> config class.
STEP_KINDS: dict[str, type[StageConfigBase]] = {kind.model_fields["stage"].default: kind for kind in KINDS}

# The `stage` field picks the config class; an unknown kind is a validation error naming the tags.
StageConfig = Annotated[Union[KINDS], Field(discriminator="stage")]  # type: ignore[valid-type]

__all__ = ["STEP_KINDS", "RunStep", "Stage", "StageConfig", "StageConfigBase", "Step", "StepContext"]
