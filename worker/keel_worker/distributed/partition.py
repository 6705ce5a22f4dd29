"""Which micro-batches of a mini-batch each rank trains on.

Every rank holds the whole plan (the same shuffle, the same micro-batches by length). Rank r
takes micro-batches r, r + k, r + 2k, ... (they are sorted longest first, so the shares are
close in tokens). FSDP2 gathers parameters in every forward and reduces gradients in every
backward, so all ranks must run the same number of them: a rank with fewer micro-batches runs
padding ones (`real=False`: a real micro-batch whose loss counts zero times), never a skipped
collective.
"""

from __future__ import annotations

from keel_worker.distributed.group import DataParallel


def my_share(micro: list[list[int]], dp: DataParallel | None) -> list[tuple[list[int], bool]]:
    """(rows, real) of the micro-batches this rank runs, in order: all of them, real, in a
    single-process run."""
    if dp is None:
        return [(rows, True) for rows in micro]
    if not micro:
        return []
    mine = [(rows, True) for rows in micro[dp.rank :: dp.world_size]]
    slots = -(-len(micro) // dp.world_size)
    return mine + [(micro[0], False)] * (slots - len(mine))
