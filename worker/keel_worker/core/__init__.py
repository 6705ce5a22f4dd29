"""keel's policy-gradient math, pure torch (docs/concepts/algorithm.md): no I/O, logging or host
syncs.

Modules, one concept each:
    types          PolicyBatch (inputs of an objective) and LossOutput (loss + detached metrics)
    objectives     the registry OBJECTIVES: minirl (Eq. 7), reinforce, grpo, dr_grpo, dapo,
                   cispo, gspo, gspo_token, decoupled_ppo_tis, dppo_tv, dppo_kl
    is_correction  TIS / IcePop / Seq-TIS / Seq-MIS / Geo-RS weights and their statistics
    clipping       the decoupled-PPO clip mask, the PPO min/clip surrogate, DPPO's TV/KL masks
    aggregation    loss aggregation modes and the global (micro-batch invariant) normalizer
    advantages     group_mean / mean_std / rloo advantages and zero-variance groups
    diagnostics    training–inference mismatch, entropy, routing disagreement
    masked         masked reductions and the clamped log-ratio shared by all of the above
"""
