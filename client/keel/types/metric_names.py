"""The names of keel's per-step metrics: one vocabulary for the trainer, the stability guard,
monitoring, the trackers, the dashboard and the demo (docs/house-style.md rule 24).

A metric is named `area/name` and written once per (job, step). Most names are fixed and listed
in `METRICS` with what they measure; three families are built from a fixed part:

- per MoE layer: `routing/infer_vs_train_L<i>` and `routing/old_vs_current_L<i>` (`per_layer`);
- per guard trigger that fired at the step: `guard/<trigger>` (`guard_trigger`);
- the held-out evaluation after the last step: `eval/<name>_final` (`final`).

`keel.types.metrics.is_documented(name)` says whether a name belongs to the vocabulary; a
contract test runs tiny steps and checks that they emit exactly these names. Standard library
only: the worker's pure math (`keel_worker.core`) imports it too.
"""

from __future__ import annotations

from typing import Final

FINAL_SUFFIX: Final = "_final"  # an eval metric measured after the last step


# ---- the families: names built from a fixed part ------------------------------------------------


def per_layer(prefix: str, layer: int) -> str:
    """`<routing prefix>_L<layer>`: the disagreement at one MoE layer."""
    return f"{prefix}_L{layer}"


def any_layer(prefix: str) -> str:
    """`<routing prefix>_any`: the disagreement at any layer."""
    return prefix + "_any"


def layer_mean(prefix: str) -> str:
    """`<routing prefix>_mean`: the disagreement averaged over layers."""
    return prefix + "_mean"


def guard_trigger(trigger: str) -> str:
    """1 at a step where the guard trigger `trigger` fired."""
    return f"guard/{trigger}"


def final(name: str) -> str:
    """An eval metric measured after the last step."""
    return name + FINAL_SUFFIX


# ---- rollouts and their rewards (every step) --------------------------------------------------
REWARD_MEAN: Final = "reward/mean"
REWARD_MISSING: Final = "reward/missing"
GROUPS_DROPPED: Final = "groups/dropped"
GROUPS_PARTIAL: Final = "groups/partial"
RESPONSE_LENGTH_MEAN: Final = "response/length_mean"
RESPONSE_LENGTH_MAX: Final = "response/length_max"
RESPONSE_TRUNCATION_RATE: Final = "response/truncation_rate"
ADVANTAGE_ABS_MEAN: Final = "advantage/abs_mean"
ADVANTAGE_ZERO_VARIANCE_FRAC: Final = "advantage/zero_variance_frac"

# ---- the update ------------------------------------------------------------------------------
TRAIN_ENTROPY: Final = "train/entropy"
OPTIM_LOSS: Final = "optim/loss"
OPTIM_GRAD_NORM: Final = "optim/grad_norm"
OPTIM_LR: Final = "optim/lr"
POLICY_VERSION: Final = "policy/version"

# ---- training–inference mismatch, π_old vs μ_old (core.diagnostics) --------------------------
MISMATCH_KL_K1: Final = "mismatch/kl_k1"
MISMATCH_KL_K3: Final = "mismatch/kl_k3"
MISMATCH_PROB_DIFF_MEAN: Final = "mismatch/prob_diff_mean"
MISMATCH_PROB_DIFF_MAX: Final = "mismatch/prob_diff_max"
MISMATCH_PROB_DIFF_STD: Final = "mismatch/prob_diff_std"
MISMATCH_PROB_PEARSON: Final = "mismatch/prob_pearson"

# ---- importance-sampling weights (core.is_correction) -----------------------------------------
IS_RAW_MEAN: Final = "is/raw_mean"
IS_RAW_MAX: Final = "is/raw_max"
IS_RAW_MIN: Final = "is/raw_min"
IS_WEIGHT_MEAN: Final = "is/weight_mean"
IS_WEIGHT_MAX: Final = "is/weight_max"
IS_WEIGHT_MIN: Final = "is/weight_min"
IS_TRUNCATED_FRAC: Final = "is/truncated_frac"
IS_MASKED_FRAC: Final = "is/masked_frac"
IS_ESS: Final = "is/ess"

# ---- clipping (core.clipping) -----------------------------------------------------------------
CLIP_FRAC: Final = "clip/frac"
CLIP_FRAC_POS: Final = "clip/frac_pos"
CLIP_FRAC_NEG: Final = "clip/frac_neg"
CLIP_RATIO_MEAN: Final = "clip/ratio_mean"
CLIP_RATIO_MAX: Final = "clip/ratio_max"
CLIP_RATIO_MIN: Final = "clip/ratio_min"
CLIP_PPO_KL: Final = "clip/ppo_kl"
CLIP_TV_MEAN: Final = "clip/tv_mean"
CLIP_BINARY_KL_MEAN: Final = "clip/binary_kl_mean"

# ---- MoE routing (training.step_metrics, training.replay_auto) --------------------------------
ROUTING_INFER_VS_TRAIN: Final = "routing/infer_vs_train"  # a prefix: `_L<i>`, `_any`, `_mean`
ROUTING_INFER_VS_TRAIN_ANY: Final = any_layer(ROUTING_INFER_VS_TRAIN)
ROUTING_INFER_VS_TRAIN_MEAN: Final = layer_mean(ROUTING_INFER_VS_TRAIN)
ROUTING_OLD_VS_CURRENT: Final = "routing/old_vs_current"  # a prefix: `_L<i>`, `_any`, `_mean`
ROUTING_OLD_VS_CURRENT_ANY: Final = any_layer(ROUTING_OLD_VS_CURRENT)
ROUTING_OLD_VS_CURRENT_MEAN: Final = layer_mean(ROUTING_OLD_VS_CURRENT)
ROUTING_REPLAY_MODE: Final = "routing/replay_mode"
ROUTING_REPLAY_REASON: Final = "routing/replay_reason"

# ---- held-out evaluation (training.evaluate) --------------------------------------------------
EVAL_ACCURACY: Final = "eval/accuracy"
EVAL_LENGTH_MEAN: Final = "eval/length_mean"
EVAL_SIZE: Final = "eval/size"
EVAL_METRICS: Final = (EVAL_ACCURACY, EVAL_LENGTH_MEAN, EVAL_SIZE)
EVAL_ACCURACY_FINAL: Final = final(EVAL_ACCURACY)

# ---- wall time of the step's phases (training.metrics.MetricSink) -----------------------------
TIME_GENERATE: Final = "time/generate_s"
TIME_SCORE: Final = "time/score_s"
TIME_RECOMPUTE: Final = "time/recompute_s"
TIME_UPDATE: Final = "time/update_s"
TIME_SYNC: Final = "time/sync_s"
TIME_STEP: Final = "time/step_s"
TIME_PHASES: Final = (TIME_GENERATE, TIME_SCORE, TIME_RECOMPUTE, TIME_UPDATE, TIME_SYNC)

# ---- the stability guard (training.guard) -----------------------------------------------------
GUARD_FIRED: Final = "guard/fired"
GUARD_SKIPPED_UPDATES: Final = "guard/skipped_updates"

# ---- the service's job loop only (jobrunner.loop) ---------------------------------------------
REWARDS_REWARDED: Final = "rewards/rewarded"
REWARDS_EXPIRED: Final = "rewards/expired"
WEBHOOK_DELIVERY_FAILURES: Final = "webhook/delivery_failures"
JOB_LOOP_METRICS: Final = frozenset({REWARDS_REWARDED, REWARDS_EXPIRED, WEBHOOK_DELIVERY_FAILURES})

# ---- agent jobs' episodes (jobrunner.agent_step) ----------------------------------------------
AGENT_EPISODES_RUN: Final = "agent/episodes_run"
AGENT_SEQUENCES: Final = "agent/sequences"
AGENT_TURNS_MEAN: Final = "agent/turns_mean"
AGENT_SAMPLED_TOKENS: Final = "agent/sampled_tokens"
AGENT_CONTEXT_TOKENS: Final = "agent/context_tokens"
AGENT_VERSION_LAG_MAX: Final = "agent/version_lag_max"
AGENT_METRICS: Final = frozenset(
    {
        AGENT_EPISODES_RUN,
        AGENT_SEQUENCES,
        AGENT_TURNS_MEAN,
        AGENT_SAMPLED_TOKENS,
        AGENT_CONTEXT_TOKENS,
        AGENT_VERSION_LAG_MAX,
    }
)

_DISAGREEMENT = "share of (token, MoE layer) pairs whose top-k expert set differs"

# Every fixed name with what it measures (the reference docs are generated from this table).
METRICS: Final[dict[str, str]] = {
    REWARD_MEAN: "Mean reward of the step's scored rollouts (NaN when none was scored).",
    REWARD_MISSING: "Rollouts of the step without a reward (expired, or no score).",
    GROUPS_DROPPED: "Groups left out of the update because a member has no reward.",
    GROUPS_PARTIAL: "Groups trained on their rewarded members only (drop_incomplete_groups off).",
    RESPONSE_LENGTH_MEAN: "Mean response length in tokens.",
    RESPONSE_LENGTH_MAX: "Longest response in tokens.",
    RESPONSE_TRUNCATION_RATE: "Share of responses cut at max_new_tokens.",
    ADVANTAGE_ABS_MEAN: "Mean |Â| over the step's responses.",
    ADVANTAGE_ZERO_VARIANCE_FRAC: "Share of responses in groups whose rewards are all equal.",
    TRAIN_ENTROPY: "Mean token entropy of π_old on the sampled responses.",
    OPTIM_LOSS: "The objective's loss, averaged over the step's mini-batches.",
    OPTIM_GRAD_NORM: "Gradient norm before clipping, averaged over the step's mini-batches.",
    OPTIM_LR: "Learning rate in force.",
    POLICY_VERSION: "The policy version after the step (the one the engine samples next).",
    MISMATCH_KL_K1: "k1 estimate of KL(μ_old‖π_old) per token: the training–inference gap.",
    MISMATCH_KL_K3: "k3 estimate of KL(μ_old‖π_old) per token: the training–inference gap.",
    MISMATCH_PROB_DIFF_MEAN: "Mean |π_old − μ_old| of the sampled tokens' probabilities.",
    MISMATCH_PROB_DIFF_MAX: "Largest |π_old − μ_old| of a sampled token's probability.",
    MISMATCH_PROB_DIFF_STD: "Standard deviation of |π_old − μ_old| over tokens.",
    MISMATCH_PROB_PEARSON: "Pearson correlation of π_old and μ_old token probabilities.",
    IS_RAW_MEAN: "Mean raw token IS ratio before truncation or masking.",
    IS_RAW_MAX: "Largest raw token IS ratio.",
    IS_RAW_MIN: "Smallest raw token IS ratio.",
    IS_WEIGHT_MEAN: "Mean IS weight applied.",
    IS_WEIGHT_MAX: "Largest IS weight applied.",
    IS_WEIGHT_MIN: "Smallest IS weight applied.",
    IS_TRUNCATED_FRAC: "Tokens whose IS weight was capped.",
    IS_MASKED_FRAC: "Tokens whose IS weight was zeroed (masking modes).",
    IS_ESS: "Effective sample size of the IS weights, as a share of the tokens.",
    CLIP_FRAC: "Tokens the clip mask dropped from the gradient.",
    CLIP_FRAC_POS: "Clipped tokens with Â > 0 (ratio above 1 + ε_high).",
    CLIP_FRAC_NEG: "Clipped tokens with Â < 0 (ratio below 1 − ε_low).",
    CLIP_RATIO_MEAN: "Mean π_θ / π_old ratio of the clipped objective.",
    CLIP_RATIO_MAX: "Largest π_θ / π_old ratio.",
    CLIP_RATIO_MIN: "Smallest π_θ / π_old ratio.",
    CLIP_PPO_KL: "Mean −log(π_θ / π_old): how far the update moved from π_old.",
    CLIP_TV_MEAN: "Mean per-token total-variation distance to the anchor (DPPO).",
    CLIP_BINARY_KL_MEAN: "Mean per-token binary KL to the anchor (DPPO).",
    ROUTING_INFER_VS_TRAIN_ANY: f"Engine vs trainer routes at θ_old: {_DISAGREEMENT}, any layer.",
    ROUTING_INFER_VS_TRAIN_MEAN: f"Engine vs trainer routes at θ_old: {_DISAGREEMENT}, mean over "
    "layers.",
    ROUTING_OLD_VS_CURRENT_ANY: f"θ_old vs θ routes in mini-batches 2..N: {_DISAGREEMENT}, any "
    "layer.",
    ROUTING_OLD_VS_CURRENT_MEAN: f"θ_old vs θ routes in mini-batches 2..N: {_DISAGREEMENT}, mean "
    "over layers.",
    ROUTING_REPLAY_MODE: "Routing Replay in force: 0 none, 2 R2, 3 R3.",
    ROUTING_REPLAY_REASON: "Why `auto` chose the mode in force (an index of its reasons).",
    EVAL_ACCURACY: "Held-out accuracy before the step (every eval_every steps).",
    EVAL_LENGTH_MEAN: "Mean held-out response length in tokens.",
    EVAL_SIZE: "Held-out prompts evaluated.",
    TIME_GENERATE: "Seconds sampling the rollouts.",
    TIME_SCORE: "Seconds waiting for and computing rewards.",
    TIME_RECOMPUTE: "Seconds recomputing π_old.",
    TIME_UPDATE: "Seconds in the mini-batch updates.",
    TIME_SYNC: "Seconds syncing weights to the engine.",
    TIME_STEP: "Wall time of the step (the sum of its phases).",
    GUARD_FIRED: "Guard triggers that fired at this step.",
    GUARD_SKIPPED_UPDATES: "Optimizer steps skipped for a non-finite loss or gradient.",
    REWARDS_REWARDED: "Rollouts of the step rewarded before their deadline (service jobs).",
    REWARDS_EXPIRED: "Rollouts of the step whose deadline passed unrewarded (service jobs).",
    WEBHOOK_DELIVERY_FAILURES: "Webhook deliveries of the step that failed (service jobs).",
    AGENT_EPISODES_RUN: "Episodes of the step with at least one model call (agent jobs).",
    AGENT_SEQUENCES: "Training sequences of the step's episodes: more than the episodes where a "
    "harness edited or branched its history.",
    AGENT_TURNS_MEAN: "Model calls per episode that made one.",
    AGENT_SAMPLED_TOKENS: "Tokens the policy sampled in the step's episodes (the trained ones).",
    AGENT_CONTEXT_TOKENS: "Tokens of the step's sequences that are context (prompt, tool and "
    "user turns): no loss, no IS weight.",
    AGENT_VERSION_LAG_MAX: "Largest gap between the policy version a turn was sampled with and "
    "the one it trains (0 in the synchronous schedule).",
}
