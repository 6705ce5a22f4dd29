"""A resident model that executes Tinker's training and sampling primitives.

Pure compute, no HTTP and no database: `resident.ResidentModel` holds one policy (full weights or
LoRA adapters), its AdamW state and a rollout engine, and answers `forward` /
`forward_backward`, `optim_step`, `sample`, `save` / `load` and `save_for_sampler`. The API
decodes Tinker's wire format into `batch`'s containers; `losses` holds Tinker's built-in losses
and `objectives` runs keel's own objectives on Tinker data.
"""
