"""One global step of the synchronous RL schedule, readable top to bottom
(docs/concepts/algorithm.md §3.3).

    rollout   engine samples B prompts × G responses: tokens, μ logprobs, routes (MoE)
    score     score(rollouts) -> reward or None per response; incomplete groups are dropped
              (or, with `drop_incomplete_groups=False`, keep their rewarded members)
    advantage core.compute_advantages per group
    split     shuffle the responses, cut them into N mini-batches
    π_old     recompute log π_θold in the trainer for mini-batches 2..N (R3 replays the engine's
              routes, R2 records the natural ones); mini-batch 1 reuses its own update forward,
              where θ = θ_old exactly (R2 on the first mini-batch is a no-op:
              docs/concepts/algorithm.md §2.3); with LoRA dropout the update forwards are not
              π_old, so mini-batch 1 is recomputed
    update    per mini-batch: micro-batches bucketed by length, forward (with replay), objective
              with the global normalizer, backward; clip the gradient norm; one AdamW step,
              skipped (and counted in `guard/skipped_updates`) when the loss or gradient is
              not finite
    sync      push the new weights to the engine (a LoRA policy's merged weights); bump the
              policy version

`Trainer.step` runs all of it. The phases from split on are `Trainer.learn`, which also trains on
a batch the step did not sample: an agent step's multi-turn sequences, whose context tokens
(`RolloutBatch.trained_masks`) the model reads but is never trained on, with the advantages
`scoring.group_advantages` gives their episodes.

A LoRA run (`config.lora`, `training.lora`) trains the same way: its model is a `peft.PeftModel`
whose base weights are frozen, so the optimizer and the gradient clip see the adapters alone.

Which routes each forward replays, and π_old as the phases record it, live in `training.replay`;
the step's diagnostics (rollout statistics, mismatch, routing disagreement) in
`training.step_metrics`.

Data-parallel (`dp`, a `distributed.group.DataParallel`: k ranks under torch.distributed with
FSDP2, docs/how-to/distributed.md): every rank runs this same code on the same batch (rank 0
samples and scores it, `distributed.rank_zero`), so the advantages and the plan are one process's;
each rank runs its share of every mini-batch's micro-batches (`distributed.partition`) with the
mini-batch's global normalizer, FSDP2 sums the gradients over ranks, the clip sees the global norm,
the non-finite skip is decided over all ranks, and the per-micro-batch metrics are reduced
(`distributed.metrics`): the update and the metrics are those of one process on the whole batch.

Metric values stay tensors (on the training device) until `MetricSink.finish()` moves them to the
host in one transfer per step; only host-side bookkeeping (the shuffle order, sequence lengths
of each micro-batch) is read with `.tolist()` on the way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from keel.types import metric_names as metric
from keel.types.algorithm import objective_kwargs
from keel.types.routing import ResolvedReplay
from keel.types.training import TaskItem, TrainingConfig
from keel_worker.core.aggregation import loss_normalizer
from keel_worker.core.objectives import OBJECTIVES
from keel_worker.core.types import PolicyBatch
from keel_worker.distributed.group import DataParallel
from keel_worker.distributed.metrics import reduce_shard
from keel_worker.distributed.partition import my_share
from keel_worker.distributed.rank_zero import rank_zero_scores
from keel_worker.engines.base import RolloutBatch, RolloutEngine
from keel_worker.engines.chat import encode_prompt
from keel_worker.training.batching import (
    MicroBatch,
    bucket_by_length,
    fed_lengths,
    gather_rows,
    make_micro_batch,
    trained_mask,
)
from keel_worker.training.forward import PolicyForward
from keel_worker.training.lora import adapter_dropout
from keel_worker.training.metrics import MetricSink
from keel_worker.training.replay import (
    OldPolicy,
    check_rollout_routes,
    recompute_routes,
    replay_hooks,
    update_routes,
)
from keel_worker.training.replay_auto import AutoReplay
from keel_worker.training.scoring import Rollout, ScoreFn, group_advantages, scored_groups
from keel_worker.training.step_metrics import (
    mismatch,
    old_policy_metrics,
    rollout_metrics,
    routing_drift,
)

BuildMicroBatch = Callable[[list[int]], MicroBatch]


@dataclass(frozen=True)
class UpdatePlan:
    """The step's kept responses as the π_old recompute and the N updates consume them, built
    once per step: `minibatches_N[n]` holds the rows of mini-batch n and `micro_N[n]` the rows of
    its micro-batches; `build` makes a micro-batch's tensors from its rows; `old` collects π_old
    as the phases compute it, `sink` the step's metrics, `shard` those of the micro-batches this
    rank trains on (the step's sink itself in a single process)."""

    rollouts: RolloutBatch
    minibatches_N: list[list[int]]
    micro_N: list[list[list[int]]]
    build: BuildMicroBatch
    old: OldPolicy
    sink: MetricSink
    shard: MetricSink


class Trainer:
    """Owns the policy's optimizer, replay hooks and policy version; `step()` runs one step,
    `learn()` + `finish_step()` the phases after scoring on a batch sampled elsewhere."""

    def __init__(
        self,
        config: TrainingConfig,
        model: torch.nn.Module,
        tokenizer,
        engine: RolloutEngine,
        *,
        is_moe: bool,
        dp: DataParallel | None = None,
        root_call: Callable[..., object] | None = None,
    ) -> None:
        """`dp` and `root_call` (from `distributed.sharding.shard_policy`) for a data-parallel
        rank whose `model` is sharded and whose `engine` is a `distributed.rank_zero` one."""
        self.config = config
        self.dp = dp
        self.model = model
        self.tokenizer = tokenizer
        self.engine = engine
        # The mode of each step: fixed, or `auto` re-decided from measurements (replay_auto).
        self.auto = AutoReplay(
            config.routing_replay,
            is_moe=is_moe,
            num_minibatches=config.num_minibatches,
            every=config.routing_replay_every,
        )
        self.replay = replay_hooks(model, config, is_moe=is_moe)
        self.forward = PolicyForward(
            model,
            temperature=config.rollout.temperature,
            bf16=config.train_dtype == "bf16",
            replay=self.replay,
            root_call=root_call,
            share_prompts=dp is None,
        )
        # Full fine-tuning trains every weight; a LoRA policy only its adapters (peft froze W).
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.adapter_dropout = config.lora is not None and config.lora.dropout > 0
        opt = config.optimizer
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=opt.lr,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )
        self.objective = OBJECTIVES[config.algorithm.name]
        self.objective_kwargs = objective_kwargs(config.algorithm)
        self.loss_agg: str = config.algorithm.loss_agg
        self.pad_id = _pad_id(tokenizer)
        self.policy_version = 0

    @property
    def replay_mode(self) -> ResolvedReplay:
        """The Routing Replay mode the next step runs with."""
        return self.auto.mode

    # ------------------------------------------------------------------ the step
    def step(
        self,
        items: Sequence[TaskItem],
        score: ScoreFn,
        *,
        seed: int,
        drop_incomplete_groups: bool = True,
    ) -> dict[str, float]:
        """One global step; `drop_incomplete_groups=False` keeps a group's rewarded members
        (docs/architecture.md §6 drops the group: the default, and a job's reward source may say
        so). The metrics include the replay mode the step ran with (`routing/replay_*`)."""
        cfg, sink = self.config, MetricSink()

        # 1. Rollout: B prompts × G responses from the engine (μ_θold).
        t0 = time.perf_counter()
        prompt_ids = [encode_prompt(self.tokenizer, item.prompt) for item in items]
        batch = self.engine.generate(
            prompt_ids,
            n=cfg.group_size,
            max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k,
            seed=seed,
        )
        sink.time(metric.TIME_GENERATE, t0)
        check_rollout_routes(self.replay, cfg.routing_replay, batch)  # before waiting on scores

        # 2. Score. A missing reward is never 0: its group is dropped, or keeps the members that
        #    have one (a baseline needs two of them).
        t0 = time.perf_counter()
        if self.dp is not None:  # rank 0 scores, every rank gets its rewards
            score = rank_zero_scores(self.dp, score)
        rewards = list(score(self._rollouts(batch, items)))
        groups = scored_groups(rewards, cfg.group_size, keep_partial=not drop_incomplete_groups)
        sink.time(metric.TIME_SCORE, t0)
        rollout_metrics(sink, batch, rewards, groups)
        if not groups.kept:
            return self.finish_step(sink)

        # 3. Advantages per group (core); `rows` are the kept responses.
        rows, advantages_PG = group_advantages(
            rewards, groups, group_size=cfg.group_size, mode=cfg.algorithm.advantage, sink=sink
        )

        # 4–7. Update the policy on the kept responses and sync the engine.
        self.learn(batch, advantages_PG, rows, seed=seed, sink=sink)
        return self.finish_step(sink)

    def learn(
        self,
        batch: RolloutBatch,
        advantages_R: torch.Tensor,
        rows: list[int],
        *,
        seed: int,
        sink: MetricSink,
    ) -> None:
        """Phases 4–7 on the kept `rows` of a batch sampled from the current policy: the step's
        own rollouts, or an agent step's multi-turn sequences (whose `trained_masks` keep the
        context tokens out of every loss and count). `advantages_R` holds one advantage per
        response of `batch` (`_R`: the batch's responses, prompts × group or sequences)."""
        check_rollout_routes(self.replay, self.config.routing_replay, batch)

        # 4. Shuffle and split into N mini-batches, each cut into micro-batches by length.
        plan = self._plan(batch, rows, advantages_R, seed, sink)

        # 5. π_old in the trainer for mini-batches 2..N (θ = θ_old, nothing updated yet); also
        #    for mini-batch 1 when LoRA dropout makes its update forward differ from π_old.
        t0 = time.perf_counter()
        self._recompute_old(plan)
        sink.time(metric.TIME_RECOMPUTE, t0)

        # 6. N updates, one AdamW step per mini-batch.
        t0 = time.perf_counter()
        for n, minibatch in enumerate(plan.minibatches_N):
            if minibatch:  # fewer kept responses than N leave the last mini-batches empty
                self._update(plan, n)
        sink.time(metric.TIME_UPDATE, t0)

        # 7. Sync the new weights to the engine; the next step samples from them.
        t0 = time.perf_counter()
        self.engine.load_weights(self.model)
        self.policy_version += 1
        sink.time(metric.TIME_SYNC, t0)

        if self.dp is not None:
            reduce_shard(plan.shard, sink, self.dp)
            plan.old.logprobs = _gathered(plan.old.logprobs)  # the mismatch covers every row
        mismatch(sink, rows, batch, plan.old)
        sink.add_float(metric.OPTIM_LR, self.optimizer.param_groups[0]["lr"])
        sink.add_float(metric.POLICY_VERSION, float(self.policy_version))

    def finish_step(self, sink: MetricSink) -> dict[str, float]:
        """The step's metrics from `sink`, with the replay mode it ran with; `auto` decides the
        next step's mode from them."""
        metrics = sink.finish()
        if self.dp is not None:  # rank 0's (its own timings): one dict, one replay decision
            metrics = _from_rank_zero(metrics)
        num_layers = self.replay.num_layers if self.replay is not None else 0
        metrics.update(self.auto.after_step(metrics, num_layers=num_layers))
        return metrics

    # ------------------------------------------------------------------ phases
    def _plan(
        self,
        batch: RolloutBatch,
        rows: list[int],
        advantages_R: torch.Tensor,
        seed: int,
        sink: MetricSink,
    ) -> UpdatePlan:
        """The kept `rows` shuffled by the step's seed and cut into mini-batches, each into
        micro-batches by length."""
        shuffle = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(rows), generator=shuffle).tolist()
        minibatches_N = [
            [rows[i] for i in chunk.tolist()]
            for chunk in torch.tensor_split(torch.tensor(order), self.config.num_minibatches)
        ]
        lengths = fed_lengths(batch)
        micro_N = [
            bucket_by_length(mb, lengths, self.config.micro_batch_size) for mb in minibatches_N
        ]
        build = partial(
            make_micro_batch,
            prompt_ids=batch.prompt_ids,
            response_ids=batch.response_ids,
            rollout_logprobs=batch.rollout_logprobs,
            advantages_PG=advantages_R,
            routes=batch.routes,
            pad_id=self.pad_id,
            trained_masks=batch.trained_masks,
        )
        shard = MetricSink() if self.dp is not None else sink
        return UpdatePlan(batch, minibatches_N, micro_N, build, OldPolicy(), sink, shard)

    def _recompute_old(self, plan: UpdatePlan) -> None:
        """log π_old (and its natural routes) of every mini-batch whose update forward is not
        π_old itself, without gradient."""
        micro_N = plan.micro_N if self.adapter_dropout else plan.micro_N[1:]
        with torch.no_grad():
            # The same share of each mini-batch as its update runs: π_old is where it is needed.
            for rows_mb, real in (s for micro in micro_N for s in my_share(micro, self.dp)):
                mb = plan.build(rows_mb)
                out = self.forward(mb, replay_routes_B_S_L_K=recompute_routes(self.replay_mode, mb))
                if real:
                    plan.old.remember(mb, out)
                    old_policy_metrics(plan.shard, mb, out)

    def _update(self, plan: UpdatePlan, n: int) -> None:
        """Mini-batch n: accumulate every micro-batch's gradient, clip, one AdamW step.

        The model stays in eval mode: dropout would make π_θ ≠ π_old at θ = θ_old. LoRA dropout,
        when a run asks for it, is the one exception (and then π_old was recomputed for all).
        """
        cfg, sink, shard, old = self.config, plan.sink, plan.shard, plan.old
        # First mini-batch: θ = θ_old, so its forward IS the π_old recompute (unless dropout).
        first = n == 0 and not self.adapter_dropout
        batch, rows = plan.rollouts, plan.minibatches_N[n]
        trained_B_T = trained_mask(rows, batch.response_ids, batch.trained_masks)
        normalizer = loss_normalizer(
            self.loss_agg, mask_B_T=trained_B_T, constant=self._norm_constant()
        )
        losses = []
        for rows_mb, real in my_share(plan.micro_N[n], self.dp):
            mb = plan.build(rows_mb)
            routes_B_S_L_K = update_routes(self.replay_mode, mb, old)
            with adapter_dropout(self.model) if self.adapter_dropout else nullcontext():
                out = self.forward(mb, replay_routes_B_S_L_K=routes_B_S_L_K)
            if not real:  # lockstep padding: FSDP2's gathers and reductions, a zero gradient
                (out.logprobs_B_T.sum() * 0.0).backward()
                continue
            if first:
                old.remember(mb, out)
                old_policy_metrics(shard, mb, out)
            elif out.natural_routes_B_S_L_K is not None:
                routing_drift(shard, mb, out, old)
            device = out.logprobs_B_T.device
            policy_batch = PolicyBatch(
                logprobs_B_T=out.logprobs_B_T,
                old_logprobs_B_T=gather_rows(old.logprobs, mb.rows, mb.mask_B_T.shape[1]).to(
                    device
                ),
                rollout_logprobs_B_T=mb.rollout_logprobs_B_T.to(device),
                advantages_B=mb.advantages_B.to(device),
                mask_B_T=mb.mask_B_T.to(device),
            )
            loss = self.objective(policy_batch, normalizer=normalizer, **self.objective_kwargs)
            loss.loss.backward()
            losses.append(loss.loss.detach())
            shard.add_weighted(loss.metrics, weight=mb.mask_B_T.sum())
            shard.add(metric.OPTIM_LOSS, loss.loss / cfg.num_minibatches, reduce="sum")
        clip = cfg.optimizer.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, clip if clip is not None else float("inf")
        )
        if isinstance(grad_norm, DTensor):  # the sharded gradients' norm: the global one
            grad_norm = grad_norm.full_tensor()
        sink.add(metric.OPTIM_GRAD_NORM, grad_norm)
        # A non-finite loss or gradient never reaches the optimizer (it would poison AdamW's
        # moments for good): the update is skipped and counted. One host sync per mini-batch.
        losses_finite = torch.isfinite(torch.stack(losses)).all() if losses else torch.tensor(True)
        if self.dp is not None:  # skipped on every rank when any rank's loss is not finite
            losses_finite = _all_ranks(losses_finite, self.dp)
        finite = bool(torch.isfinite(grad_norm) & losses_finite)
        sink.add(metric.GUARD_SKIPPED_UPDATES, torch.tensor(0.0 if finite else 1.0), reduce="sum")
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ helpers
    def _rollouts(self, batch: RolloutBatch, items: Sequence[TaskItem]) -> list[Rollout]:
        G = self.config.group_size
        texts = self.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        return [
            Rollout(
                group_index=batch.prompt_index[r],
                sample_index=r % G,
                item=items[batch.prompt_index[r]],
                completion=texts[r],
                token_count=len(batch.response_ids[r]),
                finish_reason=batch.finish_reasons[r],
                policy_version=self.policy_version,
            )
            for r in range(len(batch))
        ]

    def _norm_constant(self) -> float:
        # The fixed divisor of `seq_mean_token_sum_norm` (Dr. GRPO: the max generation length).
        return float(self.config.rollout.max_new_tokens)


def _all_ranks(flag: torch.Tensor, dp: DataParallel) -> torch.Tensor:
    """True when `flag` is True on every rank (collective)."""
    value = flag.to(device=dp.device, dtype=torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value[0].bool().cpu()


def _from_rank_zero(value: dict[str, float]) -> dict[str, float]:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gathered(per_row: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Every rank's entries of a per-response dict (collective)."""
    parts: list[dict[int, torch.Tensor] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, {r: v.cpu() for r, v in per_row.items()})
    return {r: v for part in parts for r, v in (part or {}).items()}


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)
