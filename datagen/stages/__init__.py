"""Filter stages. Each module holds one stage: its config model and the callable it builds."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from datagen.stages.base import Stage, StageConfigBase
from datagen.stages.collapse import CollapseConfig
from datagen.stages.counterexample import CounterexampleConfig
from datagen.stages.dedup import DedupConfig
from datagen.stages.finished import FinishedConfig
from datagen.stages.judge import JudgeConfig
from datagen.stages.length import LengthConfig
from datagen.stages.revise import ReviseConfig
from datagen.stages.verify import VerifyConfig
from datagen.stages.vote import VoteConfig

# The `stage` field picks the config class; an unknown kind is a validation error naming the tags.
StageConfig = Annotated[Union[CollapseConfig, CounterexampleConfig, DedupConfig, FinishedConfig, JudgeConfig, LengthConfig, ReviseConfig, VerifyConfig, VoteConfig], Field(discriminator="stage")]

__all__ = ["Stage", "StageConfig", "StageConfigBase"]
