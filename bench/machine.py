"""The machine a benchmark ran on, as its results files record it: the CPU, the cores, the load."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any


def describe_machine(**extra: Any) -> dict[str, Any]:
    """CPU model, core count and architecture, with the benchmark's own `extra` facts."""
    from keel_worker.engines.hardware import cpu_model_name

    return {"cpu": cpu_model_name(), "cores": os.cpu_count(), "arch": platform.machine(), **extra}


def load_averages() -> list[float]:
    """The load averages over 1, 5 and 15 minutes, as `uptime` prints them."""
    return [round(x, 2) for x in os.getloadavg()]


def uptime() -> str:
    """`uptime`'s line: the time, how long the machine has been up, the load averages."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
