"""Wire models of where a run's worker also writes each step's metrics: TensorBoard and W&B."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from keel.types.common import FrozenConfig, Text


class WandbConfig(FrozenConfig):
    """Weights & Biases run of a job (the worker needs the `wandb` extra). `online` reads the
    worker's own W&B login (`WANDB_API_KEY`); `offline` keeps the run under the job's artifacts
    for `wandb sync`."""

    project: Text = Field(
        min_length=1,
        max_length=128,
        description="The W&B project of the run; the run is named after the job (its run "
        "directory in-process) and a resumed job continues it.",
    )
    mode: Literal["online", "offline"] = Field(
        "online",
        description="`online`: log to W&B as it runs; `offline`: write the run under the "
        "job's artifacts only.",
    )


class LoggingConfig(FrozenConfig):
    """Where the worker also writes each step's metrics, under keel's own metric names."""

    tensorboard: bool = Field(
        False,
        description="Event files under the job's artifacts `tensorboard/` folder "
        "(the worker needs the `tensorboard` extra).",
    )
    wandb: WandbConfig | None = Field(None, description="A W&B run per job; None = off.")
