"""Routing Replay `auto`: the rule that picks none / R2 / R3 from measured routing disagreement,
its thresholds, and the per-run state that applies it (pure Python: no torch, no I/O).

Two measurements, per MoE layer, as shares of (token, layer) pairs whose top-k expert set differs
(the step's `routing/*_L<i>` metrics), each reduced to its worst layer:

    D = routing/infer_vs_train   engine e^μ_old vs trainer e^π_old at θ_old
                                 (the training–inference factor of paper Eq. 6)
    S = routing/old_vs_current   e^π_old vs the natural routes of the θ that updates mini-batches
                                 2..N, i.e. after the first, second, ... update (the staleness
                                 factor; it does not exist when N = 1)

The rule (docs/concepts/algorithm.md §2.2–2.3, §5.2; thresholds below; the evidence in
docs/concepts/routing-replay.md §8):

1. N = 1 → none. R2 is a no-op on-policy and R3 brought no gain (paper §4.3, §3.2).
2. S < STATIC_STALENESS → none. Routing barely moves between updates: replay would only bias
   the target policy (Table 1) for no staleness to remove.
3. D < ALIGNED_ROUTING → R2. Engine and trainer route alike, so R3 would replay (almost) the
   experts R2 replays while also altering the first mini-batch's target; R2 leaves it exact.
4. S ≥ R3_STALENESS_RATIO × D → R3, else R2. R2 removes only the staleness factor, R3 both
   (Eq. 6). The paper finds R2 better at N = 2 and R3 at N ≥ 4 (paper §4.4); on our runs that switch
   is where staleness overtakes the training–inference routing mismatch (S/D ≈ 0.6 at N = 2,
   1.1 at N = 4, 2.1 at N = 8 in the gentle suite; 0.3 at N = 2 under the stress dial).

Hysteresis: once a measured decision is in force, the mode changes only when the rule with
every threshold moved by HYSTERESIS (relative) towards the current mode also leaves it; the new
mode is then the nominal rule's. Before the first measurement a run uses the paper's recipe for
its N (docs/concepts/algorithm.md §5.3: none for N = 1, R2 for N = 2–3, R3 for N ≥ 4). A step
without the measurements (every group dropped) keeps the mode and measures again at the next step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from keel.types import metric_names as metric
from keel.types.routing import ResolvedReplay

STATIC_STALENESS = 0.01
ALIGNED_ROUTING = 0.01
R3_STALENESS_RATIO = 1.0
HYSTERESIS = 0.25

ORDER: tuple[ResolvedReplay, ...] = ("none", "R2", "R3")
# `routing/replay_mode`: 0 = none, 2 = R2, 3 = R3.
MODE_CODES: dict[ResolvedReplay, float] = {"none": 0.0, "R2": 2.0, "R3": 3.0}
# `routing/replay_reason`: the index of the branch that chose the mode in force.
REASONS: tuple[str, ...] = (
    "fixed",  # the job asked for none / R2 / R3
    "dense",  # no routers: no replay
    "prior",  # auto before its first measurement: the paper's recipe for N
    "on_policy",  # rule 1
    "static",  # rule 2
    "aligned",  # rule 3
    "mild_staleness",  # rule 4, R2
    "strong_staleness",  # rule 4, R3
    "held",  # hysteresis kept the mode the nominal rule would leave
    "missing",  # no measurement at a deciding step: mode kept, measured again next step
)


@dataclass(frozen=True)
class RoutingMeasurement:
    """Per-layer disagreement of one step; NaN where the step did not measure a layer."""

    step: int
    infer_vs_train_L: tuple[float, ...]
    old_vs_current_L: tuple[float, ...]

    @classmethod
    def from_metrics(
        cls, step: int, metrics: Mapping[str, float], num_layers: int
    ) -> RoutingMeasurement:
        def layers(prefix: str) -> tuple[float, ...]:
            return tuple(
                metrics.get(metric.per_layer(prefix, i), math.nan) for i in range(num_layers)
            )

        return cls(
            step, layers(metric.ROUTING_INFER_VS_TRAIN), layers(metric.ROUTING_OLD_VS_CURRENT)
        )

    @property
    def infer_vs_train(self) -> float:
        """D: the worst layer; NaN when any layer is unmeasured (missing is its own verdict)."""
        return _worst(self.infer_vs_train_L)

    @property
    def old_vs_current(self) -> float:
        """S: the worst layer; NaN when any layer is unmeasured."""
        return _worst(self.old_vs_current_L)


@dataclass(frozen=True)
class Decision:
    """A mode, the REASONS entry that chose it, its explanation and the measuring step."""

    mode: ResolvedReplay
    reason: str
    detail: str
    step: int


def prior_mode(num_minibatches: int) -> ResolvedReplay:
    """The paper's recipe by N alone (docs/concepts/algorithm.md §5.3), used until the first
    measurement."""
    if num_minibatches == 1:
        return "none"
    return "R2" if num_minibatches < 4 else "R3"


def rule(d: float, s: float, *, scale: float = 1.0) -> tuple[ResolvedReplay, str]:
    """Rules 2–4 of the module docstring with every threshold multiplied by `scale`."""
    if s < STATIC_STALENESS * scale:
        return "none", "static"
    if d < ALIGNED_ROUTING * scale:
        return "R2", "aligned"
    if s >= R3_STALENESS_RATIO * scale * d:
        return "R3", "strong_staleness"
    return "R2", "mild_staleness"


def choose_replay(
    measurement: RoutingMeasurement, *, num_minibatches: int, current: Decision
) -> Decision:
    """The decision after `measurement`, given the decision in force (hysteresis applies to a
    measured `current`, not to the prior)."""
    step = measurement.step
    if num_minibatches == 1:
        return Decision("none", "on_policy", "N = 1: R2 is a no-op and R3 gave no gain", step)
    d, s = measurement.infer_vs_train, measurement.old_vs_current
    if math.isnan(d) or math.isnan(s):
        detail = f"step {step} measured no routing disagreement; keeping {current.mode}"
        return Decision(current.mode, "missing", detail, step)
    mode, reason = rule(d, s)
    numbers = (
        f"step {step}: staleness S={s:.4f}, train–inference D={d:.4f} (worst of "
        f"{len(measurement.old_vs_current_L)} layers)"
    )
    if current.reason not in ("prior", "missing") and current.mode != mode:
        # Thresholds moved towards the current mode: lowered keeps stronger replay, raised
        # keeps weaker; the mode is kept while it lies between the two choices.
        low = ORDER.index(rule(d, s, scale=1.0 + HYSTERESIS)[0])
        high = ORDER.index(rule(d, s, scale=1.0 - HYSTERESIS)[0])
        if low <= ORDER.index(current.mode) <= high:
            detail = f"{numbers}: rule says {mode} ({reason}), within ±{HYSTERESIS:.0%} of its "
            return Decision(
                current.mode, "held", detail + f"thresholds; keeping {current.mode}", step
            )
    return Decision(mode, reason, f"{numbers}: {reason.replace('_', ' ')} → {mode}", step)


class AutoReplay:
    """The replay mode of one run, step by step: fixed, or `auto` measured and re-decided on
    the first step and then every `every` steps (0 = only after the first)."""

    def __init__(self, requested: str, *, is_moe: bool, num_minibatches: int, every: int) -> None:
        self.requested = requested
        self.num_minibatches = num_minibatches
        self.every = every
        self.steps_seen = 0
        self.switches = 0
        self.measuring = requested == "auto" and is_moe
        if not is_moe:
            self.decision = Decision("none", "dense", "dense model: no routers to replay", 0)
        elif requested == "auto":
            mode = prior_mode(num_minibatches)
            detail = f"before the first measurement: the paper's recipe for N = {num_minibatches}"
            self.decision = Decision(mode, "prior", detail, 0)
        else:
            self.decision = Decision(requested, "fixed", f"routing_replay={requested}", 0)
        self._due = True  # the first step measures

    @property
    def mode(self) -> ResolvedReplay:
        return self.decision.mode

    def after_step(self, metrics: Mapping[str, float], *, num_layers: int) -> dict[str, float]:
        """Record one finished step (its metrics); returns the `routing/replay_*` metrics of the
        mode that step ran with, and re-decides for the next steps when the step was due."""
        self.steps_seen += 1
        ran = {
            metric.ROUTING_REPLAY_MODE: MODE_CODES[self.decision.mode],
            metric.ROUTING_REPLAY_REASON: float(REASONS.index(self.decision.reason)),
        }
        if self.measuring and self._due:
            measured = RoutingMeasurement.from_metrics(self.steps_seen, metrics, num_layers)
            new = choose_replay(
                measured, num_minibatches=self.num_minibatches, current=self.decision
            )
            self.switches += new.mode != self.decision.mode
            self.decision = new
        self._due = self.decision.reason == "missing" or (
            self.every > 0 and self.steps_seen % self.every == 0
        )
        return ran

    def summary(self) -> dict[str, Any]:
        """The job's `routing_replay` summary (`keel.types.routing.RoutingReplaySummary`)."""
        d = self.decision
        return {
            "requested": self.requested,
            "mode": d.mode,
            "reason": d.detail,
            "decided_at_step": d.step,
            "switches": self.switches,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "decision": asdict(self.decision),
            "steps_seen": self.steps_seen,
            "switches": self.switches,
            "due": self._due,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.decision = Decision(**state["decision"])
        self.steps_seen, self.switches, self._due = (
            state["steps_seen"],
            state["switches"],
            state["due"],
        )


def _worst(rates_L: tuple[float, ...]) -> float:
    if not rates_L or any(math.isnan(r) for r in rates_L):
        return math.nan
    return max(rates_L)
