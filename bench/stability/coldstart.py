"""Cold starts: `tiny-moe` supervised-fine-tuned on addition to a 20–40% sampled pass rate.

The paper's runs start from SFT'd ("cold-start") checkpoints (§4.2, §4.5). Ours is the built-in
`tiny-moe` (Qwen3-MoE, 4 layers, 8 experts, top-2, byte-level tokenizer) trained with teacher
forcing on one of the SFT mixtures of `task.COLD_START_MIXTURES`, checked every `check_every`
steps by its pass rate at temperature 1 on RL-pool prompts, and stopped at the first check at or
above `target_pass`. The result is an HF directory in the cache, keyed by mixture and budget, so the
matrix never redoes SFT.

Prompts are the raw text ``a+b=`` (the tokenizer's chat template is removed before saving): the
template would triple every sequence for no information, and the trainer's `encode_prompt` uses
raw text when a tokenizer has no template.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import torch

from bench.stability import task
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.models import load_model
from keel_worker.training.batching import make_micro_batch
from keel_worker.training.forward import PolicyForward

BASE_MODEL = "tiny-moe"


@dataclass(frozen=True)
class SFTBudget:
    """How long and how hard one cold start is trained."""

    batch_size: int = 64
    lr: float = 3e-3
    max_steps: int = 4_000
    check_every: int = 50
    check_prompts: int = 128  # RL-pool prompts used for the pass-rate check
    check_samples: int = 4  # samples per prompt at temperature 1
    target_pass: float = 0.25  # stop at the first check at or above this pass rate
    max_new_tokens: int = 6

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class ColdStart:
    """A cached cold start: its HF directory and how it was made."""

    name: str
    path: Path
    steps: int
    pass_rate: float


def _tokens(tokenizer, problem: task.Problem) -> tuple[list[int], list[int]]:
    prompt = encode_prompt(tokenizer, problem.prompt)
    answer = tokenizer(problem.answer, add_special_tokens=False)["input_ids"]
    return prompt, [*answer, tokenizer.eos_token_id]


def sft_loss(forward: PolicyForward, tokenizer, problems: list[task.Problem]) -> torch.Tensor:
    """Mean negative log-likelihood of the answer tokens (EOS included) given the prompt."""
    pairs = [_tokens(tokenizer, p) for p in problems]
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    mb = make_micro_batch(
        list(range(len(pairs))),
        prompt_ids=prompts,
        response_ids=responses,
        rollout_logprobs=[torch.zeros(len(r)) for r in responses],
        advantages_PG=torch.zeros(len(pairs)),
        routes=None,
        pad_id=tokenizer.pad_token_id,
    )
    out = forward(mb)
    return -out.logprobs_B_T.sum() / mb.mask_B_T.sum()


def pass_rate(
    engine: HFEngine,
    tokenizer,
    problems: list[task.Problem],
    *,
    samples: int,
    max_new_tokens: int,
    seed: int,
) -> float:
    """Mean exact-answer reward of `samples` responses per problem sampled at temperature 1."""
    prompts = [encode_prompt(tokenizer, p.prompt) for p in problems]
    batch = engine.generate(
        prompts, n=samples, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, seed=seed
    )
    texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
    rewards = [
        task.score(problems[i].answer, text)
        for text, i in zip(texts, batch.prompt_index, strict=True)
    ]
    return sum(rewards) / len(rewards)


def train_cold_start(mixture: task.Mixture, budget: SFTBudget, *, cache_dir: Path) -> tuple:
    """SFT `tiny-moe` on `mixture` until the pass-rate target; returns (model, tok, history)."""
    torch.manual_seed(mixture.seed)
    loaded = load_model(BASE_MODEL, cache_dir=cache_dir / "models")
    model, tokenizer = loaded.model, loaded.tokenizer
    tokenizer.chat_template = None
    forward = PolicyForward(model, temperature=1.0, bf16_autocast=False, replay=None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=0.0)
    engine = HFEngine(model, tokenizer, precision="fp32")
    check = task.rl_pool()[: budget.check_prompts]
    stream = task.sft_stream(mixture)
    order = random.Random(mixture.seed)
    history: list[dict[str, float]] = []
    for step in range(1, budget.max_steps + 1):
        problems = list(islice(stream, budget.batch_size))
        order.shuffle(problems)
        model.train()
        loss = sft_loss(forward, tokenizer, problems)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % budget.check_every and step != budget.max_steps:
            continue
        model.eval()
        engine.load_weights(model)
        rate = pass_rate(
            engine, tokenizer, check, samples=budget.check_samples,
            max_new_tokens=budget.max_new_tokens, seed=step,
        )
        history.append({"step": step, "loss": float(loss.detach()), "pass_rate": rate})
        if rate >= budget.target_pass:
            break
    return model.eval(), tokenizer, history


def cold_start_path(cache_dir: Path, mixture: task.Mixture, budget: SFTBudget) -> Path:
    return cache_dir / "coldstart" / f"{mixture.name}-{budget.key()}"


def ensure_cold_start(mixture: task.Mixture, budget: SFTBudget, *, cache_dir: Path) -> ColdStart:
    """The cached cold start of `mixture`, trained (once) when it is missing."""
    path = cold_start_path(cache_dir, mixture, budget)
    meta_file = path / "coldstart.json"
    if not meta_file.is_file():
        model, tokenizer, history = train_cold_start(mixture, budget, cache_dir=cache_dir)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "mixture": asdict(mixture),
            "budget": asdict(budget),
            "history": history,
            "steps": history[-1]["step"],
            "pass_rate": history[-1]["pass_rate"],
        }
        (tmp / "coldstart.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)  # atomic: a half-written cold start is never picked up
    meta = json.loads(meta_file.read_text())
    return ColdStart(mixture.name, path, meta["steps"], meta["pass_rate"])
