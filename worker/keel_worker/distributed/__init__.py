"""Data-parallel training under torch.distributed with FSDP2 (docs/how-to/distributed.md).

One job, k ranks, each running the same program (`keel_worker.training.run.train` or the job
loop) in lockstep. The modules, each with one job:

    group       the process group from torchrun's environment, its timeouts, this rank's device
    sharding    FSDP2 `fully_shard` of the policy (each decoder block, then the root)
    rank_zero   rank 0 samples and scores, every rank receives the same batch (exact math)
    partition   which micro-batches of a mini-batch a rank trains on (lockstep padding)
    metrics     the step's per-rank metric sums reduced so rank 0 reports one process's numbers
    checkpoint  sharded DCP for resume, consolidated Hugging Face weights for the downloads

Without an initialised process group (or with one rank) nothing here is used and a run is the
single-process run, unchanged.
"""
