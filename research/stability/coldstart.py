"""Cold starts: a suite's base model supervised-fine-tuned on its task to a 20–40% pass rate.

The paper's runs start from SFT'd ("cold-start") checkpoints (paper §4.2, §4.5). Ours is the suite's
built-in base model (`tiny-moe` for the gentle suite, `tiny-moe-deep` for the stress suite; byte-
level tokenizer) trained with teacher forcing on one of the suite's SFT mixtures
(`COLD_START_MIXTURES` of its task module), checked every `check_every` steps by its pass rate at
temperature 1 on RL-pool prompts, and stopped at the first check at or above `target_pass`. The
result is an HF directory in the cache, keyed by suite, mixture and budget, so the matrix never
redoes SFT. A cold start committed under the suite's results (`<results_dir>/coldstart/`, same
key) is used as it is instead: SFT'd on another kind of CPU the weights differ (fp32 kernels of
different instruction sets round differently, and 800+ steps turn last bits into other weights),
so a matrix that spans sessions on different machines starts every run from the committed one.
Each SFT batch is split into micro-batches of similar length (the loss and gradient are those of
the whole batch), so long-tailed answers cost what their tokens cost.

Prompts are raw text (the tokenizer's chat template is removed before saving): the template would
triple every sequence for no information, and the trainer's `encode_prompt` uses raw text when a
tokenizer has no template.
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

from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.models import load_model
from keel_worker.engines.routing_replay import find_routers
from keel_worker.training.batching import make_micro_batch
from keel_worker.training.forward import PolicyForward
from research.stability.results import UNRECORDED_CPU

SFT_MICRO_TOKENS = 2_048  # padded tokens per SFT micro-batch


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
    # Keep the routers at their initialization during SFT. Trained by SFT alone, a tiny MoE's
    # routers grow decisive (top-2 margins far above any quantization error); real MoEs keep
    # them undecided with a load-balancing loss. Frozen routers are our stand-in: the stress
    # suite's probe shows what fraction of tokens then change experts. RL trains them.
    freeze_routers: bool = False

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class ColdStart:
    """A cached cold start: its HF directory and how it was made."""

    name: str
    path: Path
    steps: int
    pass_rate: float
    cpu: str  # the machine that SFT'd it: the weights follow its instruction set

    @property
    def weights_sha256(self) -> str:
        return weights_sha256(self.path)


def cpu_kind() -> str:
    """The CPU and the instruction set its fp32 kernels use: what a cold start's weights, and a
    run's trajectory, follow (other kernels round differently)."""
    from keel_worker.engines.hardware import device_profile

    profile = device_profile("cpu")
    return f"{profile.name} ({profile.capability})"


def weights_sha256(path: Path) -> str:
    """Digest of a cold start's weights, so runs made in different sessions (each SFT'ing its
    own cache) can be checked to start from the same cold start."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("*.safetensors")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _tokens(tokenizer, problem) -> tuple[list[int], list[int]]:
    prompt = encode_prompt(tokenizer, problem.prompt)
    answer = tokenizer(problem.answer, add_special_tokens=False)["input_ids"]
    return prompt, [*answer, tokenizer.eos_token_id]


def _length_buckets(pairs: list[tuple[list[int], list[int]]]) -> list[list[int]]:
    """Indices of `pairs` sorted by length and cut so no bucket pads past SFT_MICRO_TOKENS."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    buckets: list[list[int]] = [[]]
    for i in order:
        width = len(pairs[i][0]) + len(pairs[i][1])  # the longest so far: sorted ascending
        if buckets[-1] and width * (len(buckets[-1]) + 1) > SFT_MICRO_TOKENS:
            buckets.append([])
        buckets[-1].append(i)
    return buckets


def sft_loss(forward: PolicyForward, tokenizer, problems: list) -> torch.Tensor:
    """Mean negative log-likelihood of the answer tokens (EOS included) given the prompt.

    Backpropagates micro-batch by micro-batch (so only one is alive at a time) and returns the
    detached batch loss; the accumulated gradient is that of the whole batch's mean.
    """
    pairs = [_tokens(tokenizer, p) for p in problems]
    total_tokens = sum(len(r) for _, r in pairs)
    loss = torch.zeros(())
    for bucket in _length_buckets(pairs):
        responses = [pairs[i][1] for i in bucket]
        mb = make_micro_batch(
            list(range(len(bucket))),
            prompt_ids=[pairs[i][0] for i in bucket],
            response_ids=responses,
            rollout_logprobs=[torch.zeros(len(r)) for r in responses],
            advantages_PG=torch.zeros(len(bucket)),
            routes=None,
            pad_id=tokenizer.pad_token_id,
        )
        part = -forward(mb).logprobs_B_T.sum() / total_tokens
        part.backward()
        loss += part.detach()
    return loss


def pass_rate(
    engine: HFEngine,
    tokenizer,
    problems: list,
    score,
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
        score(problems[i].answer, text) for text, i in zip(texts, batch.prompt_index, strict=True)
    ]
    return sum(rewards) / len(rewards)


def train_cold_start(suite, mixture, budget: SFTBudget, *, cache_dir: Path, log=None) -> tuple:
    """SFT the suite's base model on `mixture` until the pass-rate target.

    Returns (model, tokenizer, history); `log` (if given) gets one line per check.
    """
    torch.manual_seed(mixture.seed)
    model, tokenizer = load_policy(suite.base_model, cache_dir=cache_dir)
    tokenizer.chat_template = None
    forward = PolicyForward(model, temperature=1.0, bf16=False, replay=None)
    if budget.freeze_routers:
        for router in find_routers(model):
            router.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=budget.lr, weight_decay=0.0)
    engine = HFEngine(model, tokenizer, precision="fp32")
    check = suite.task.rl_pool()[: budget.check_prompts]
    stream = suite.task.sft_stream(mixture)
    order = random.Random(mixture.seed)
    history: list[dict[str, float]] = []
    for step in range(1, budget.max_steps + 1):
        problems = list(islice(stream, budget.batch_size))
        order.shuffle(problems)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = sft_loss(forward, tokenizer, problems)
        optimizer.step()
        if step % budget.check_every and step != budget.max_steps:
            continue
        model.eval()
        engine.load_weights(model)
        rate = pass_rate(
            engine,
            tokenizer,
            check,
            suite.task.score,
            samples=budget.check_samples,
            max_new_tokens=budget.max_new_tokens,
            seed=step,
        )
        history.append({"step": step, "loss": float(loss), "pass_rate": rate})
        if log is not None:
            log(
                f"cold start {suite.name}/{mixture.name}: step {step}, loss {float(loss):.3f}, "
                f"pass rate {rate:.3f}"
            )
        if rate >= budget.target_pass:
            break
    return model.eval(), tokenizer, history


def load_policy(spec: str, *, cache_dir: Path):
    """(model, tokenizer) of a built-in name or a saved directory, with the MoE experts computed
    by transformers' eager loop: on a CPU it runs the tiny experts about twice as fast as the
    default grouped kernel (1.1 s against 2.1 s for a forward+backward of 64 × 100 tokens on
    `tiny-moe-deep`, one thread), and the numbers do not depend on which one runs."""
    loaded = load_model(str(spec), cache_dir=cache_dir / "models")
    if hasattr(loaded.model, "set_experts_implementation") and loaded.is_moe:
        loaded.model.set_experts_implementation("eager")
    return loaded.model, loaded.tokenizer


def cold_start_path(cache_dir: Path, suite, mixture, budget: SFTBudget) -> Path:
    prefix = "" if suite.name == "gentle" else f"{suite.name}-"  # gentle keeps its cache keys
    return cache_dir / "coldstart" / f"{prefix}{mixture.name}-{budget.key()}"


def pinned_path(suite, mixture, budget: SFTBudget) -> Path:
    """Where a committed cold start of (suite, mixture, budget) lives, if one does."""
    return (suite.results_dir / "coldstart" / f"{mixture.name}-{budget.key()}").resolve()


def ensure_cold_start(suite, mixture, budget: SFTBudget, *, cache_dir: Path, log=None) -> ColdStart:
    """The committed cold start of `mixture`, else the cached one, trained (once) when it is
    missing."""
    path = pinned_path(suite, mixture, budget)
    if not (path / "coldstart.json").is_file():
        path = cold_start_path(cache_dir, suite, mixture, budget)
    meta_file = path / "coldstart.json"
    if not meta_file.is_file():
        model, tokenizer, history = train_cold_start(
            suite, mixture, budget, cache_dir=cache_dir, log=log
        )
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
            "cpu": cpu_kind(),
        }
        (tmp / "coldstart.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)  # atomic: a half-written cold start is never picked up
    meta = json.loads(meta_file.read_text())
    cpu = meta.get("cpu", UNRECORDED_CPU)
    return ColdStart(mixture.name, path, meta["steps"], meta["pass_rate"], cpu)
