"""The ablation matrix of docs/concepts/algorithm.md §3.4 / §5 / §6 and the budgets it runs under.

A `Cell` is one configuration (objective, replay, N, cold start, rollout precision); a run is a
cell at one seed. Every cell gets the same number of gradient steps and the same mini-batch size
(B prompts × G responses per optimizer update, as the paper fixes mbs = 1,024), so an N-fold
off-policy cell samples N times more responses per global step but makes the same number of
updates.

Cells:
- on-policy (N = 1): MiniRL, MiniRL + length-norm, `reinforce` (w/o train–infer IS), each ± R3;
- off-policy (N = 2, 4, 8): MiniRL without clipping or replay, MiniRL + R2 without clipping,
  MiniRL + R2, MiniRL + R3, and GRPO and CISPO as references under the replay the paper recommends
  for that N (`replay_auto.prior_mode`: R2 at N = 2, R3 at N ≥ 4);
- cold starts: the three initializations under MiniRL + R2, N = 2 (the balanced one is the
  off-policy MiniRL + R2 cell itself);
- precision: the on-policy MiniRL and `reinforce` cells again with bf16 instead of fp8 rollouts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from keel.types.training import ModelConfig, OptimizerConfig, RolloutConfig, TrainingConfig
from keel_worker.training.replay_auto import prior_mode
from research.stability.task import COLD_START_MIXTURES

DEFAULT_INIT = COLD_START_MIXTURES[0].name

# Chosen before the matrix by a declared rule that looks at the reference recipe only: the largest
# value of {1e-4, 3e-4, 1e-3, 3e-3} at which a pilot of on-policy MiniRL (balanced cold start,
# seed 0, 96 steps, fp8 rollouts) ended above its initial held-out accuracy. Pilot held-out
# accuracy 0.199 → 0.254 / 0.231 / 0.064 / 0.001 (mean of the last three evaluations; CSVs in
# research/results/stability/pilot/).
LR = 3e-4
OFF_POLICY_N = (2, 4, 8)


@dataclass(frozen=True)
class Cell:
    """One configuration of the matrix; `regime` groups cells into one figure.

    `precision`, `top_p` and `top_k` set the rollout engine (the mismatch dial); `lr` overrides
    the budget's learning rate (the stress suite's staleness regime uses its own).
    """

    name: str
    regime: str
    algorithm: dict[str, Any]
    replay: str = "none"
    num_minibatches: int = 1
    init: str = DEFAULT_INIT
    precision: str = "fp8"
    top_p: float = 1.0
    top_k: int = 0
    lr: float | None = None

    @property
    def slug(self) -> str:
        return self.name.replace("/", "__")


@dataclass(frozen=True)
class Budget:
    """Sizes of every run. `grad_steps` and `eval_every` count optimizer updates."""

    grad_steps: int = 128
    prompts_per_minibatch: int = 8  # B per update
    group_size: int = 8  # G
    lr: float = LR
    grad_clip: float | None = 1.0
    max_new_tokens: int = 6
    eval_every: int = 8
    eval_prompts: int = 128
    eval_samples: int = 4  # held-out accuracy = mean reward of these samples at temperature 1
    seeds: tuple[int, ...] = (0, 1, 2)
    cells: tuple[str, ...] = field(default=())  # name filter; empty = all
    probe_prompts: int = 64  # the discrepancy probe: RL prompts × samples per cold start and dial
    probe_samples: int = 8

    def global_steps(self, cell: Cell) -> int:
        if self.grad_steps % cell.num_minibatches:
            raise ValueError(f"{cell.name}: N={cell.num_minibatches} must divide grad_steps")
        return self.grad_steps // cell.num_minibatches

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _minirl(**overrides: Any) -> dict[str, Any]:
    return {"name": "minirl", **overrides}


def _on_policy() -> list[Cell]:
    base = {
        "minirl": _minirl(),
        "minirl+length_norm": _minirl(length_norm=True),
        "reinforce": {"name": "reinforce"},
    }
    cells = []
    for name, algorithm in base.items():
        cells.append(Cell(f"N1/{name}", "on_policy", algorithm))
        cells.append(Cell(f"N1/{name}+R3", "on_policy", algorithm, replay="R3"))
    return cells


def _off_policy(n: int) -> list[Cell]:
    recommended = prior_mode(n)
    regime = f"off_policy_N{n}"
    return [
        Cell(f"N{n}/minirl-noclip", regime, _minirl(use_clip=False), "none", n),
        Cell(f"N{n}/minirl+R2-noclip", regime, _minirl(use_clip=False), "R2", n),
        Cell(f"N{n}/minirl+R2", regime, _minirl(), "R2", n),
        Cell(f"N{n}/minirl+R3", regime, _minirl(), "R3", n),
        Cell(f"N{n}/grpo+{recommended}", regime, {"name": "grpo"}, recommended, n),
        Cell(f"N{n}/cispo+{recommended}", regime, {"name": "cispo"}, recommended, n),
    ]


def _cold_starts() -> list[Cell]:
    return [
        Cell(f"cold/{m.name}", "cold_start", _minirl(), "R2", 2, init=m.name)
        for m in COLD_START_MIXTURES
        if m.name != DEFAULT_INIT
    ]


def _precision() -> list[Cell]:
    return [
        Cell("bf16/N1/minirl", "precision_bf16", _minirl(), precision="bf16"),
        Cell("bf16/N1/reinforce", "precision_bf16", {"name": "reinforce"}, precision="bf16"),
    ]


def all_cells() -> list[Cell]:
    cells = _on_policy()
    for n in OFF_POLICY_N:
        cells += _off_policy(n)
    return cells + _cold_starts() + _precision()


def select(cells: list[Cell], budget: Budget) -> list[Cell]:
    """`cells` filtered by `budget.cells`: substrings of the cell name, or a whole name when the
    pattern ends in `$` (`N1/minirl$` is that cell alone, not every `N1/minirl+…`)."""
    if not budget.cells:
        return cells
    return [c for c in cells if any(_matches(pattern, c.name) for pattern in budget.cells)]


def _matches(pattern: str, name: str) -> bool:
    return pattern[:-1] == name if pattern.endswith("$") else pattern in name


def cells_for(budget: Budget) -> list[Cell]:
    """The gentle suite's matrix, filtered by `budget.cells`."""
    return select(all_cells(), budget)


def training_config(cell: Cell, budget: Budget, *, seed: int, model_dir: str) -> TrainingConfig:
    """The library config of one run (the task is the harness's own, see `runner`)."""
    return TrainingConfig.model_validate(
        {
            "model": ModelConfig(name=model_dir),
            "algorithm": cell.algorithm,
            "rollout": RolloutConfig(
                precision=cell.precision,
                max_new_tokens=budget.max_new_tokens,
                temperature=1.0,
                top_p=cell.top_p,
                top_k=cell.top_k,
            ),
            "optimizer": OptimizerConfig(lr=cell.lr or budget.lr, grad_clip=budget.grad_clip),
            "prompts_per_step": budget.prompts_per_minibatch * cell.num_minibatches,
            "group_size": budget.group_size,
            "num_minibatches": cell.num_minibatches,
            "micro_batch_size": budget.prompts_per_minibatch * budget.group_size,
            "routing_replay": cell.replay,
            "train_dtype": "fp32",
            "steps": budget.global_steps(cell),
            "seed": seed,
            "eval_every": 0,
        }
    )
