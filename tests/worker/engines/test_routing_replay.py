from __future__ import annotations

import pytest
import torch

from keel_worker.engines.routing_replay import RoutingReplay, RoutingReplayError
from keel_worker.engines.tiny import MOE_FAMILY_CONFIGS, build_from_config, tiny_moe_config

FAMILIES = sorted(MOE_FAMILY_CONFIGS)


@pytest.fixture(scope="module", params=FAMILIES)
def moe(request: pytest.FixtureRequest):
    return build_from_config(tiny_moe_config(request.param))


def _input_ids() -> torch.Tensor:
    return torch.randint(3, 259, (3, 9), generator=torch.Generator().manual_seed(0))


def test_expected_families_are_available() -> None:
    assert {"qwen3_moe", "qwen2_moe", "mixtral", "olmoe"} <= set(FAMILIES)


def test_replaying_recorded_routes_is_bit_identical(moe) -> None:
    replay = RoutingReplay(moe)
    ids = _input_ids()
    with torch.no_grad(), replay.record() as recording:
        plain = moe(ids).logits
    routes = recording.routes_B_S_L_K
    assert routes.shape == (3, 9, 4, 2) and routes.dtype == torch.uint8
    with torch.no_grad(), replay.replay(routes) as natural:
        replayed = moe(ids).logits
    assert torch.equal(plain, replayed)
    assert torch.equal(natural.routes_B_S_L_K, routes)


def test_router_gets_gradients_under_replay(moe) -> None:
    replay = RoutingReplay(moe)
    ids = _input_ids()
    with torch.no_grad(), replay.record() as recording:
        moe(ids)
    moe.zero_grad()
    with replay.replay(recording.routes_B_S_L_K):
        moe(ids).logits.logsumexp(-1).sum().backward()
    for router in replay.routers:
        # Only the recomputed gate weights connect the router to the loss.
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    moe.zero_grad()


def test_replaying_other_routes_changes_outputs_and_uses_them(moe) -> None:
    replay = RoutingReplay(moe)
    ids = _input_ids()
    with torch.no_grad(), replay.record() as recording:
        plain = moe(ids).logits
    shifted = ((recording.routes_B_S_L_K.long() + 1) % replay.num_experts).to(torch.uint8)
    captured: list[torch.Tensor] = []
    with torch.no_grad(), replay.replay(shifted):
        # Hooks run in registration order: this one, registered after the replay hook, sees the
        # indices the MoE block receives.
        handle = replay.routers[0].register_forward_hook(lambda m, i, o: captured.append(o[2]))
        replayed = moe(ids).logits
        handle.remove()
    assert (plain - replayed).abs().max() > 1e-3
    assert torch.equal(captured[0], shifted[:, :, 0].reshape(-1, 2).long())


def test_replayed_gates_use_the_live_logits_with_the_family_normalization() -> None:
    model = build_from_config(tiny_moe_config("qwen3_moe"))
    replay = RoutingReplay(model)
    router = replay.routers[0]
    seen: list[tuple] = []
    routes = torch.zeros((1, 2, 4, 2), dtype=torch.uint8)
    routes[..., 1] = 5  # experts 0 and 5 everywhere
    with torch.no_grad(), replay.replay(routes):
        handle = router.register_forward_hook(lambda m, i, o: seen.append(o))
        model(torch.tensor([[10, 20]]))
        handle.remove()
    logits, gates, idx = seen[0]
    probs = torch.softmax(logits, dim=-1)
    # norm_topk_prob: g = p_i / (p_0 + p_5) over the replayed pair.
    expected = probs[:, [0, 5]] / probs[:, [0, 5]].sum(-1, keepdim=True)
    torch.testing.assert_close(gates, expected)
    assert idx.tolist() == [[0, 5], [0, 5]]


def test_records_every_generate_call() -> None:
    model = build_from_config(tiny_moe_config("qwen3_moe"))
    replay = RoutingReplay(model)
    with replay.record() as recording:
        model.generate(
            torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False, min_new_tokens=3
        )
    # Prefill (3 tokens) then 2 decode steps: the last generated token is never fed.
    assert [tuple(c.shape) for c in recording.calls] == [(1, 3, 4, 2), (1, 1, 4, 2), (1, 1, 4, 2)]
    assert recording.routes_B_S_L_K.shape == (1, 5, 4, 2)


def test_dense_model_and_bad_routes_raise(tiny_dense) -> None:
    with pytest.raises(RoutingReplayError, match="dense"):
        RoutingReplay(tiny_dense.model)
    model = build_from_config(tiny_moe_config("qwen3_moe"))
    replay = RoutingReplay(model)
    with (
        pytest.raises(RoutingReplayError, match="L=4, K=2"),
        replay.replay(torch.zeros(1, 2, 3, 2)),
    ):
        pass
    with (
        pytest.raises(RoutingReplayError, match="out of range"),
        replay.replay(torch.full((1, 2, 4, 2), 8, dtype=torch.uint8)),
    ):
        pass
    with (
        pytest.raises(RoutingReplayError, match="cover 6 tokens"),
        torch.no_grad(),
        replay.replay(torch.zeros((2, 3, 4, 2), dtype=torch.uint8)),
    ):
        model(torch.tensor([[5, 6, 7, 8]]))


def test_hooking_the_decoder_records_the_same_routes() -> None:
    model = build_from_config(tiny_moe_config("qwen3_moe"))
    ids = _input_ids()
    with torch.no_grad(), RoutingReplay(model).record() as on_lm:
        model(ids)
    with torch.no_grad(), RoutingReplay(model.get_decoder()).record() as on_decoder:
        model(ids)
    assert torch.equal(on_lm.routes_B_S_L_K, on_decoder.routes_B_S_L_K)
