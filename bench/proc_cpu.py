"""The CPU seconds that processes have used, read from /proc (Linux): what `bench.reward_ingest`
charges a request with. Every reader returns None where /proc does not show the process.
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_cpu_s(pid: int) -> float | None:
    """utime + stime of one process; None where /proc does not show it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def cpu_delta_ms(before: dict[int, float] | None, after: dict[int, float] | None, n: int):
    """CPU ms per request of the processes of two `{pid: CPU seconds}` snapshots (database
    backends: one that appeared meanwhile counts from zero; one that ended meanwhile is missed:
    the server's pool keeps its connections, so few do)."""
    if before is None or after is None:
        return None
    return round(sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items()) / n * 1e3, 2)


def tree_cpu_s(root: int) -> float | None:
    """utime + stime of `root` and its live descendants, plus what its reaped children used."""
    if not Path("/proc/self/stat").exists():
        return None
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[1] is the parent pid; [11], [12] utime, stime; [13], [14] the children's
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    tree, grew = {root}, True
    while grew:
        grown = tree | {pid for pid, (ppid, _) in stats.items() if ppid in tree}
        grew, tree = grown != tree, grown
    ticks = sum(stats[pid][1] for pid in tree if pid in stats)
    return ticks / os.sysconf("SC_CLK_TCK")
