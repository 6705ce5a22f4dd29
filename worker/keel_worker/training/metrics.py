"""Per-step metric accumulation with a single device→host transfer.

Every metric is a ratio Σ numerators / Σ denominators over the places it was added (micro-batches,
mini-batches), which covers means, token-weighted means and sums alike; extremes (`*_max`,
`*_min`) are the max / min of the added values instead. Tensors stay on their
device until `finish()`, which stacks them all and calls `.tolist()` once (one host
synchronization per step: no `.item()` per token or per micro-batch).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Literal

import torch

from keel.types import metric_names as metric

Reduce = Literal["mean", "ratio", "sum", "max", "min"]
_EXTREMES = {"max": max, "min": min}


class MetricSink:
    def __init__(self) -> None:
        self._num: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._den: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._floats: dict[str, float] = {}
        self._extreme: dict[str, str] = {}

    def add(
        self,
        name: str,
        value: torch.Tensor,
        *,
        reduce: Reduce = "mean",
        denom: torch.Tensor | float | None = None,
        weighted: bool = False,
    ) -> None:
        """`mean`: average of the added values; `sum`: their sum; `max`/`min`: their extreme;
        `ratio`: Σ value / Σ denom (with `weighted`, `value` is a rate multiplied by `denom`)."""
        value = value.detach().float().reshape(())
        if reduce == "ratio":
            assert denom is not None, "ratio metrics need a denominator"
            den = torch.as_tensor(denom, dtype=torch.float32).to(value.device).reshape(())
            self._num[name].append(value * den if weighted else value)
            self._den[name].append(den)
        else:
            self._num[name].append(value)
            one_or_zero = 1.0 if reduce == "mean" else 0.0
            self._den[name].append(torch.full((), one_or_zero, device=value.device))
            if reduce in _EXTREMES:
                self._extreme[name] = reduce

    def add_weighted(self, metrics: dict[str, torch.Tensor], *, weight: torch.Tensor) -> None:
        """Token-weighted mean of each (micro-batch level) metric; extremes stay extremes."""
        for name, value in metrics.items():
            if name.endswith(("_max", "_min")):
                self.add(name, value, reduce=name[-3:])
            else:
                self.add(name, value, reduce="ratio", denom=weight, weighted=True)

    def add_float(self, name: str, value: float) -> None:
        self._floats[name] = float(value)

    def time(self, name: str, start: float) -> None:
        """The seconds since `start` of one of the step's phases (`metric_names.TIME_PHASES`)."""
        self._floats[name] = time.perf_counter() - start

    def totals(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, Reduce | None]]:
        """Per metric: (Σ numerators, Σ denominators, "max"/"min" for an extreme else None),
        as 0-dim tensors: what a data-parallel step reduces over ranks (distributed.metrics).
        An extreme's numerator is the extreme of its values."""
        out: dict[str, tuple[torch.Tensor, torch.Tensor, Reduce | None]] = {}
        for name, nums in self._num.items():
            extreme = self._extreme.get(name)
            stacked = torch.stack([v.to(nums[0].device) for v in nums])
            num = (
                stacked.amax() if extreme == "max" else stacked.amin() if extreme else stacked.sum()
            )
            den = torch.stack([d.to(nums[0].device) for d in self._den[name]]).sum()
            out[name] = (num, den, extreme)  # type: ignore[assignment]
        return out

    def add_total(
        self, name: str, num: torch.Tensor, den: torch.Tensor, extreme: Reduce | None
    ) -> None:
        """Add what `totals()` gave for `name` (summed or extremized over ranks)."""
        self._num[name].append(num.detach().float().reshape(()))
        self._den[name].append(den.detach().float().reshape(()).to(num.device))
        if extreme is not None:
            self._extreme[name] = extreme

    def finish(self) -> dict[str, float]:
        out = dict(self._floats)
        names = list(self._num)
        if names:
            flat = [v for n in names for v in self._num[n]] + [
                v for n in names for v in self._den[n]
            ]
            device = flat[0].device
            # The one device→host synchronization of the step.
            values = torch.stack([v.to(device) for v in flat]).tolist()
            n_flat = len(flat) // 2
            nums, dens = values[:n_flat], values[n_flat:]
            i = 0
            for n in names:
                k = len(self._num[n])
                if n in self._extreme:
                    out[n] = _EXTREMES[self._extreme[n]](nums[i : i + k])
                else:
                    num, den = sum(nums[i : i + k]), sum(dens[i : i + k])
                    out[n] = num / den if den else num
                i += k
        out[metric.TIME_STEP] = sum(out[k] for k in metric.TIME_PHASES if k in out)
        return out
