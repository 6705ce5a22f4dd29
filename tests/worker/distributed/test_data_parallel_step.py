"""Two gloo ranks under FSDP2 train exactly as one process (docs/how-to/distributed.md).

One 2-step run per model on 2 ranks and one in this process, a checkpoint after each step: the
consolidated weights must agree to 1e-6 after each step and so must every metric. The config
makes the check sensitive to what data parallelism could get wrong: gradient clipping that never
binds (a clip would rescale a wrong-by-k gradient back to the same norm) and an AdamW ε of the
gradients' size (Adam's update is otherwise nearly invariant to the gradient's scale), so a
gradient averaged instead of summed over ranks, or a per-rank loss normalizer, moves the weights
by ~1e-2 (tried once by dividing by the world size in `distributed.sharding`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from ranks import kill_one_rank, parity_reward, tiny_config, train_on_ranks
from safetensors.torch import load_file

from keel_worker.distributed.checkpoint import has_sharded_state
from keel_worker.training.checkpoint import checkpoint_dir
from keel_worker.training.run import train

pytestmark = pytest.mark.slow

WEIGHT_TOL = 1e-6
METRIC_RTOL = 1e-5
# The training–inference mismatch of an fp32 run is rounding noise (~1e-7): the engine's and the
# trainer's logprobs of the same weights, whose last bits depend on the batch shapes a forward
# runs at, and a rank runs its share of the micro-batches. Measured apart by 1.4e-7 on an AVX2
# EPYC (within 1e-7 on AVX-512); any real aggregation error is orders of magnitude larger.
MISMATCH_NOISE = 1e-6


# (model, Routing Replay mode) of each compared run.
RUNS = {
    "tiny-dense": ("tiny-dense", "none"),
    "tiny-moe-R3": ("tiny-moe", "R3"),
    "tiny-moe-R2": ("tiny-moe", "R2"),
}


def _config(run: str, **overrides):
    model, replay = RUNS[run]
    return tiny_config(
        model={"name": model},
        routing_replay=replay,
        steps=2,
        checkpoint_every=1,
        optimizer={"lr": 1e-2, "grad_clip": 100.0, "eps": 1e-2},
        **overrides,
    )


def _weights(workdir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(checkpoint_dir(workdir, step) / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _one_process(config, workdir: Path) -> list[dict[str, float]]:
    results = train(config, workdir=workdir, reward_fn=parity_reward, resume=False)
    return [r.metrics for r in results]


@pytest.fixture(scope="module", params=list(RUNS))
def runs(request, tmp_path_factory):
    """(config, one-process workdir + metrics, two-rank workdir + metrics) of one model."""
    config = _config(request.param)
    root = tmp_path_factory.mktemp(request.param)
    one = _one_process(config, root / "one")
    two = [r["metrics"] for r in train_on_ranks(config, root / "two")]
    return config, (root / "one", one), (root / "two", two)


def test_two_ranks_train_the_one_process_weights(runs):
    _, (one_dir, _), (two_dir, _) = runs
    for step in (1, 2):
        assert _max_diff(_weights(one_dir, step), _weights(two_dir, step)) <= WEIGHT_TOL
        assert has_sharded_state(checkpoint_dir(two_dir, step))
    # The steps did move the weights (so the comparison compares something).
    assert _max_diff(_weights(one_dir, 1), _weights(one_dir, 2)) > 1e-3


def test_two_ranks_report_the_one_process_metrics(runs):
    _, (_, one), (_, two) = runs
    assert len(one) == len(two) == 2
    for m1, m2 in zip(one, two, strict=True):
        assert m1.keys() == m2.keys()
        for name, value in m1.items():
            if name.startswith("time/"):
                continue
            noise = MISMATCH_NOISE if name.startswith("mismatch/") else 1e-7
            assert m2[name] == pytest.approx(value, rel=METRIC_RTOL, abs=noise), name


def test_a_two_rank_checkpoint_resumes_on_one_process(runs, tmp_path):
    """Rank-0-written step 1 of the 2-rank run, resumed here: step 2 as the uninterrupted run."""
    config, (one_dir, _), (two_dir, _) = runs
    resumed = tmp_path / "resumed"
    shutil.copytree(
        two_dir / "checkpoints" / checkpoint_dir(two_dir, 1).name, checkpoint_dir(resumed, 1)
    )
    results = list(train(config, workdir=resumed, reward_fn=parity_reward, resume=True))
    assert [r.step for r in results] == [2]
    assert _max_diff(_weights(resumed, 2), _weights(one_dir, 2)) <= WEIGHT_TOL


def test_a_one_process_checkpoint_resumes_on_two_ranks(runs, tmp_path):
    config, (one_dir, _), _ = runs
    if config.model.name != "tiny-dense":  # (the other runs are resumed 2 → 1 only)
        pytest.skip("one model is enough for the 1 → 2 direction")
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint_dir(one_dir, 1), checkpoint_dir(resumed, 1))
    results = train_on_ranks(config, resumed, resume=True)
    assert [r["step"] for r in results] == [2]
    assert _max_diff(_weights(resumed, 2), _weights(one_dir, 2)) <= WEIGHT_TOL


def test_lora_is_refused_on_two_ranks(tmp_path):
    with pytest.raises(Exception, match="LoRA is not supported on more than one trainer"):
        train_on_ranks(_config("tiny-dense", lora={}), tmp_path / "run")


def test_a_killed_rank_fails_the_other_within_the_collective_timeout(tmp_path):
    timeout_s = 10.0
    outcome = kill_one_rank(
        _config("tiny-dense"), tmp_path / "run", timeout_s=timeout_s, wait_s=120.0
    )
    assert outcome["exitcode"] not in (0, None)
    assert outcome["error"] is not None
    assert "rank" in outcome["error"].lower()
    # Rank 0 stopped within the timeout of rank 1's death (plus process teardown).
    assert outcome["ended_at"] - outcome["dead_at"] <= timeout_s + 5.0
