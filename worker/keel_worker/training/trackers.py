"""Mirrors of a run's per-step metrics into TensorBoard and Weights & Biases, as asked for by
`config.logging`, under the same names keel serves (`reward/mean`, `mismatch/kl_k3`, ...). Each
backend is an optional extra, imported only when a run asks for it; a run that asks for one that
is not installed fails at setup, naming the extra, instead of silently logging nothing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from keel.types.training import LoggingConfig, WandbConfig


class _Tracker(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def close(self) -> None: ...


class StepTrackers:
    """The trackers of one run; `log` after each completed step, `close` when the run stops."""

    def __init__(self, trackers: list[_Tracker]) -> None:
        self.trackers = trackers

    @classmethod
    def open(
        cls, logging: LoggingConfig, *, logdir: Path, run_id: str, config: dict[str, Any]
    ) -> StepTrackers:
        trackers: list[_Tracker] = []
        if logging.tensorboard:
            trackers.append(_TensorBoard(Path(logdir) / "tensorboard"))
        if logging.wandb is not None:
            trackers.append(_Wandb(logging.wandb, Path(logdir), run_id, config))
        return cls(trackers)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise RuntimeError(
            f"config.logging asks for {extra}, but this worker lacks it: "
            f"pip install 'keel-rl[{extra}]'"
        ) from exc


class _TensorBoard:
    def __init__(self, logdir: Path) -> None:
        tensorboardx = _require("tensorboardX", "tensorboard")
        # A resumed run appends a new event file in the same folder; TensorBoard merges them.
        self.writer = tensorboardx.SummaryWriter(logdir=str(logdir))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()  # a step is minutes apart: let a live TensorBoard see it now

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, cfg: WandbConfig, logdir: Path, run_id: str, config: dict) -> None:
        wandb = _require("wandb", "wandb")
        logdir.mkdir(parents=True, exist_ok=True)
        # The job id is the run id: a resumed job continues the same W&B run.
        self.run = wandb.init(
            project=cfg.project,
            mode=cfg.mode,
            dir=str(logdir),
            id=run_id,
            name=run_id,
            resume="allow",
            config=config,
            settings=wandb.Settings(console="off"),
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()
