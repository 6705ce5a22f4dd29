"""The Tinker-compatible surface driven by the `tinker` SDK's own code (0.38.0): its protobuf
encoder and decoders against keel's codec, its ServiceClient against a live keel API, and the
refusals (bad bodies, another project's model, a reused `seq_id`) that must store nothing.

No worker runs here: a queued call stays pending, which is what the bounded retrieve is tested
on. The calls executed end to end come with the worker's resident loop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tinker  # the test extra pins it
import uvicorn
from sqlalchemy import func, select
from tinker import types
from tinker.proto import tinker_public_pb2 as public_pb
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import (
    deserialize_forward_backward_output,
    deserialize_sample_response,
)

from keel_server.api.app import create_app
from keel_server.db import session_scope
from keel_server.db.models import Job, TinkerRequest
from keel_server.platform import tinker_wire as wire

API = "/tinker/api/v1"


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"tinker_retrieve_wait_s": 0.3, "max_body_bytes": 256 * 1024})


def _key(project_key, project: str) -> str:
    return project_key(project)["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def tml(project_key) -> dict[str, str]:
    """The Tinker SDK's auth header for a key of project `p`."""
    return {"X-API-Key": "tml-" + _key(project_key, "p")}


def _datum(tokens: list[int], targets: list[int], weights: list[float]) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens),
        loss_fn_inputs={"target_tokens": targets, "weights": weights},
    )


def _fb_body(
    model_id: str, seq_id: int, data: list[types.Datum], loss_fn: str = "cross_entropy"
) -> bytes:
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn=loss_fn),
        model_id=model_id,
        seq_id=seq_id,
    )
    return forward_backward_request_to_proto(request).SerializeToString()


# ---- the codec against the SDK's own encoder and decoders ---------------------------------------


def test_a_forward_backward_body_written_by_the_sdk_parses_to_its_tokens_and_tensors():
    data = [_datum([5, 6, 7], [6, 7, 8], [0.0, 1.0, 1.0]), _datum([9], [3], [0.5])]
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(
            data=data, loss_fn="cross_entropy", loss_fn_config={"scale": 2.0, "mode": "sum"}
        ),
        model_id="job_x",
        seq_id=7,
    )
    call = wire.parse_forward_backward(
        forward_backward_request_to_proto(request).SerializeToString()
    )
    assert (call.model_id, call.seq_id, call.loss_fn, call.forward_only) == (
        "job_x",
        7,
        "cross_entropy",
        False,
    )
    assert call.loss_fn_config == {"scale": 2.0, "mode": "sum"}  # v2: numbers and strings
    assert [d.tokens for d in call.data] == [[5, 6, 7], [9]]
    np.testing.assert_array_equal(call.data[0].inputs["target_tokens"], [6, 7, 8])
    assert call.data[0].inputs["target_tokens"].dtype == np.int64
    np.testing.assert_array_equal(call.data[1].inputs["weights"], np.float32([0.5]))


def test_a_sparse_csr_input_is_densified_with_zeros():
    # rows [[0, 3], [0, 0], [4, 0]]: values 3 (row 0, col 1) and 4 (row 2, col 0).
    targets = types.TensorData(
        data=[3, 4],
        dtype="int64",
        shape=[3, 2],
        sparse_crow_indices=[0, 1, 1, 2],
        sparse_col_indices=[1, 0],
    )
    weights = types.TensorData(
        data=[1.0, 2.0],
        dtype="float32",
        shape=[3, 2],
        sparse_crow_indices=[0, 1, 1, 2],
        sparse_col_indices=[1, 0],
    )
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": targets, "weights": weights},
    )
    call = wire.parse_forward_backward(_fb_body("job_x", 1, [datum]))
    np.testing.assert_array_equal(call.data[0].inputs["target_tokens"], [[0, 3], [0, 0], [4, 0]])
    np.testing.assert_array_equal(call.data[0].inputs["weights"], [[0, 1], [0, 0], [2, 0]])


def test_int32_and_bfloat16_tensors_are_widened():
    msg = public_pb.ForwardBackwardRequest(model_id="job_x", seq_id=1, loss_fn="cross_entropy")
    datum = msg.data.add()
    datum.model_input.add().encoded_text.tokens = np.int32([1, 2]).tobytes()
    datum.loss_fn_inputs["target_tokens"].CopyFrom(
        public_pb.Tensor(dense=np.int32([7, 8]).tobytes(), dtype=public_pb.DTYPE_INT32, shape=[2])
    )
    # bfloat16 0x3FC0 = 1.5 and 0xC000 = -2.0 (the upper halves of the float32 bit patterns)
    datum.loss_fn_inputs["weights"].CopyFrom(
        public_pb.Tensor(
            dense=np.uint16([0x3FC0, 0xC000]).tobytes(), dtype=public_pb.DTYPE_BFLOAT16, shape=[2]
        )
    )
    inputs = wire.parse_forward_backward(msg.SerializeToString()).data[0].inputs
    assert inputs["target_tokens"].dtype == np.int64
    np.testing.assert_array_equal(inputs["target_tokens"], [7, 8])
    np.testing.assert_array_equal(inputs["weights"], np.float32([1.5, -2.0]))


def test_a_forward_backward_output_decodes_in_the_sdk_to_the_stored_values():
    result = {
        "loss_fn_output_type": "ArrayRecord",
        "loss_fn_outputs": [
            {"logprobs": {"data": [-1.0, -2.0, -3.0], "dtype": "float32", "shape": [3]}},
            {"logprobs": {"data": [-0.5], "dtype": "float32", "shape": [1]}},
        ],
        "metrics": {"loss:sum": 6.5},
    }
    out = deserialize_forward_backward_output(wire.encode_forward_backward_output(result))
    assert out.metrics == {"loss:sum": 6.5}
    assert [o["logprobs"].tolist() for o in out.loss_fn_outputs] == [[-1.0, -2.0, -3.0], [-0.5]]


def test_a_sample_response_decodes_in_the_sdk_with_none_for_the_first_prompt_position():
    result = {
        "type": "sample",
        "sequences": [{"tokens": [4, 2], "logprobs": [-0.25, -0.5], "stop_reason": "length"}],
        "prompt_logprobs": [None, -1.5, -0.75],
    }
    out = deserialize_sample_response(wire.encode_sample_response(result))
    assert out.prompt_logprobs == [None, -1.5, -0.75]
    (seq,) = out.sequences
    assert (seq.tokens, seq.logprobs, seq.stop_reason) == ([4, 2], [-0.25, -0.5], "length")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.data[0].loss_fn_inputs["weights"].shape.__setitem__(0, 2), "fill shape"),
        (lambda m: setattr(m, "loss_fn", "softmax_of_doom"), "unknown loss_fn"),
        (lambda m: setattr(m, "seq_id", 0), "seq_id"),
        (lambda m: m.data[0].loss_fn_inputs.pop("target_tokens"), "needs loss_fn_inputs"),
    ],
)
def test_a_body_the_schema_cannot_mean_is_a_wire_error(mutate, message):
    msg = public_pb.ForwardBackwardRequest()
    msg.ParseFromString(_fb_body("job_x", 1, [_datum([1, 2, 3], [2, 3, 4], [1.0, 1.0, 1.0])]))
    mutate(msg)
    with pytest.raises(wire.WireError, match=message):
        wire.parse_forward_backward(msg.SerializeToString())


def test_targets_of_another_length_than_the_tokens_are_refused():
    body = _fb_body("job_x", 1, [_datum([1, 2, 3], [2, 3], [1.0, 1.0])])
    with pytest.raises(wire.WireError, match="the datum has 3 tokens"):
        wire.parse_forward_backward(body)


# ---- the routes ---------------------------------------------------------------------------------


def _model(client, tml, *, base_model: str = "tiny-dense", rank: int | None = 4) -> str:
    session = client.post(
        f"{API}/create_session", json={"tags": [], "sdk_version": "t"}, headers=tml
    )
    assert session.status_code == 200, session.text
    body = {"session_id": session.json()["session_id"], "model_seq_id": 0, "base_model": base_model}
    if rank is not None:
        body["lora_config"] = {"rank": rank}
    r = client.post(f"{API}/create_model", json=body, headers=tml)
    assert r.status_code == 200, r.text
    return r.json()["model_id"]


def _rows(settings) -> int:
    from keel_server.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as s:
            return s.execute(select(func.count()).select_from(TinkerRequest)).scalar_one()
    finally:
        engine.dispose()


def test_a_model_is_a_job_of_its_project_with_the_lora_rank(client, tml, settings, sessions):
    model_id = _model(client, tml, rank=8)
    with session_scope(sessions) as s:
        job = s.get(Job, model_id)
        assert job.prompt_source["type"] == "tinker"
        assert job.prompt_source["session_id"].startswith("tks_")  # its end ends the model
        assert job.reward_source["type"] == "external"
        assert job.config["model"]["name"] == "tiny-dense"
        assert job.config["lora"]["rank"] == 8
    info = client.post(f"{API}/get_info", json={"model_id": model_id}, headers=tml).json()
    assert (info["is_lora"], info["lora_rank"], info["model_name"]) == (True, 8, "tiny-dense")


def test_bad_bodies_are_400_and_store_nothing(client, tml, settings):
    model_id = _model(client, tml)
    before = _rows(settings)
    proto = {**tml, "Content-Type": "application/x-protobuf"}
    bad = {
        "malformed protobuf": b"\xff\xff\xff",
        "wrong shape": _fb_body(model_id, 1, [_datum([1, 2, 3], [2, 3], [1.0, 1.0])]),
        "unknown loss": _fb_body(model_id, 1, [_datum([1], [2], [1.0])], loss_fn="nope"),
    }
    for what, body in bad.items():
        r = client.post(f"{API}/forward_backward", content=body, headers=proto)
        assert r.status_code == 400, what
        assert r.json()["code"] == "invalid_request" and r.json()["detail"], what
    r = client.post(
        f"{API}/optim_step", json={"model_id": model_id, "adam_params": {"beta1": 2}}, headers=tml
    )
    assert r.status_code == 400 and "beta1" in r.json()["detail"]
    assert _rows(settings) == before


def test_another_projects_model_is_not_found(client, tml, project_key):
    model_id = _model(client, tml)
    other = {"X-API-Key": "tml-" + _key(project_key, "q"), "Content-Type": "application/x-protobuf"}
    r = client.post(
        f"{API}/forward_backward",
        content=_fb_body(model_id, 1, [_datum([1], [2], [1.0])]),
        headers=other,
    )
    assert r.status_code == 404
    assert (
        client.post(f"{API}/get_info", json={"model_id": model_id}, headers=other).status_code
        == 404
    )


def test_a_key_without_the_keel_key_behind_it_is_401(client):
    r = client.post(
        f"{API}/create_session", json={"sdk_version": "t"}, headers={"X-API-Key": "tml-nope"}
    )
    assert r.status_code == 401


def test_a_retry_is_the_same_future_and_a_reused_seq_id_is_409(client, tml, settings):
    model_id = _model(client, tml)
    proto = {**tml, "Content-Type": "application/x-protobuf"}
    body = _fb_body(model_id, 1, [_datum([1, 2], [2, 3], [1.0, 1.0])])
    first = client.post(f"{API}/forward_backward", content=body, headers=proto)
    again = client.post(f"{API}/forward_backward", content=body, headers=proto)
    assert first.status_code == again.status_code == 200
    assert first.json()["request_id"] == again.json()["request_id"]
    other = _fb_body(model_id, 1, [_datum([1, 2], [2, 4], [1.0, 1.0])])
    conflict = client.post(f"{API}/forward_backward", content=other, headers=proto)
    assert conflict.status_code == 409
    assert conflict.headers["x-should-retry"] == "false"
    assert conflict.json()["state"]["request_id"] == first.json()["request_id"]


def test_a_pending_future_answers_408_try_again_after_the_bounded_wait(client, tml):
    model_id = _model(client, tml)
    proto = {**tml, "Content-Type": "application/x-protobuf"}
    body = _fb_body(model_id, 1, [_datum([1, 2], [2, 3], [1.0, 1.0])])
    request_id = client.post(f"{API}/forward_backward", content=body, headers=proto).json()[
        "request_id"
    ]
    started = time.monotonic()
    r = client.post(f"{API}/retrieve_future", json={"request_id": request_id}, headers=tml)
    assert r.status_code == 408
    assert 0.3 <= time.monotonic() - started < 5
    assert r.json()["type"] == "try_again" and r.json()["request_id"] == request_id
    assert r.json()["queue_state"] == "paused_capacity"  # no worker holds the model


# ---- the SDK's ServiceClient against a live API -------------------------------------------------


@pytest.fixture
def live_url(settings) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/tinker"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def service(live_url, project_key):
    """The SDK's client for project `p`, closed at the end (its session heartbeats stop)."""
    client = tinker.ServiceClient(base_url=live_url, api_key="tml-" + _key(project_key, "p"))
    yield client
    client.close("success").result(timeout=30)


def test_the_sdk_creates_a_training_client_and_its_forward_backward_waits(service):
    training = service.create_lora_training_client(base_model="tiny-dense", rank=4).result()
    assert training.model_id.startswith("job_")
    future = training.forward_backward([_datum([1, 2], [2, 3], [1.0, 1.0])], "cross_entropy")
    with pytest.raises(TimeoutError):  # no worker: the future stays pending, polled again and again
        future.result(timeout=1.0)


def test_the_rest_client_lists_gets_and_deletes_a_runs_named_checkpoints(service, sessions):
    from keel_server.db import tinker as tinker_db

    model_id = (
        service.create_lora_training_client(base_model="tiny-dense", rank=4).result().model_id
    )
    with session_scope(sessions) as s:  # what the worker records after a save
        tinker_db.record_weights(
            s, job_id=model_id, kind="weights", name="step-1", path="x", policy_version=1
        )
        tinker_db.record_weights(
            s,
            job_id=model_id,
            kind="sampler_weights",
            name="eph",
            path="y",
            policy_version=1,
            ephemeral=True,
        )
    rest = service.create_rest_client()  # as the cookbook's checkpoint_utils does
    path = f"tinker://{model_id}/weights/step-1"
    run = rest.get_training_run_by_tinker_path(path).result()
    assert (run.training_run_id, run.base_model, run.is_lora, run.lora_rank) == (
        model_id,
        "tiny-dense",
        True,
        4,
    )
    assert run.last_checkpoint.tinker_path == path and run.last_sampler_checkpoint is None
    listed = rest.list_checkpoints(model_id).result().checkpoints
    assert [c.tinker_path for c in listed] == [path]  # the ephemeral save is no checkpoint
    assert [r.training_run_id for r in rest.list_training_runs().result().training_runs] == [
        model_id
    ]
    assert rest.get_weights_info_by_tinker_path(path).result().lora_rank == 4
    rest.delete_checkpoint_from_tinker_path(path).result()
    assert rest.list_checkpoints(model_id).result().checkpoints == []


def test_a_zstd_body_is_the_same_call_as_the_plain_one(client, tml, sessions):
    import zstandard

    model_id = _model(client, tml)
    body = _fb_body(model_id, 1, [_datum([1, 2], [2, 3], [1.0, 1.0])])
    proto = {**tml, "Content-Type": "application/x-protobuf"}
    plain = client.post(f"{API}/forward_backward", content=body, headers=proto)
    packed = client.post(
        f"{API}/forward_backward",
        content=zstandard.ZstdCompressor().compress(body),
        headers={**proto, "Content-Encoding": "zstd"},
    )
    assert packed.status_code == 200, packed.text
    assert packed.json()["request_id"] == plain.json()["request_id"]
    with session_scope(sessions) as s:
        assert s.get(TinkerRequest, plain.json()["request_id"]).payload == body  # stored plain


def test_a_base_model_sampling_session_is_a_job_and_a_sample_is_queued(client, tml, sessions):
    session_id = client.post(
        f"{API}/create_session", json={"sdk_version": "t"}, headers=tml
    ).json()["session_id"]
    r = client.post(
        f"{API}/create_sampling_session",
        json={"session_id": session_id, "sampling_session_seq_id": 0, "base_model": "tiny-dense"},
        headers=tml,
    )
    sampler = r.json()["sampling_session_id"]
    sample = {
        "sampling_session_id": sampler,
        "seq_id": 0,
        "num_samples": 3,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
        "sampling_params": {"max_tokens": 4},
    }
    future = client.post(f"{API}/asample", json=sample, headers=tml).json()
    assert future["model_id"] == sampler
    assert len(set(future["sample_sequence_ids"])) == 3
    with session_scope(sessions) as s:
        row = s.get(TinkerRequest, future["request_id"])
        assert (row.kind, row.seq_id, row.state) == ("sample", None, "queued")
        assert s.get(Job, sampler).config["lora"] is None  # a base model: nothing to train


def test_loading_weights_that_were_never_saved_is_404(client, tml):
    model_id = _model(client, tml)
    body = {
        "model_id": model_id,
        "seq_id": 1,
        "path": f"tinker://{model_id}/weights/nope",
        "optimizer": True,
    }
    assert client.post(f"{API}/load_weights", json=body, headers=tml).status_code == 404
    body["path"] = "s3://elsewhere"
    assert client.post(f"{API}/load_weights", json=body, headers=tml).status_code == 400


def test_the_sdk_decodes_a_finished_forward_backward_and_shows_a_failed_call(service, sessions):
    from keel_server.db import tinker as tinker_db

    training = service.create_lora_training_client(base_model="tiny-dense", rank=4).result()
    done = training.forward_backward([_datum([1, 2], [2, 3], [1.0, 1.0])], "cross_entropy")
    failed = training.optim_step(types.AdamParams(learning_rate=1e-3))
    queued = []
    deadline = time.monotonic() + 10
    while len(queued) < 2 and time.monotonic() < deadline:  # the SDK sends in the background
        with session_scope(sessions) as s:
            queued = [(r.id, r.kind) for r in tinker_db.queued(s, training.model_id)]
        time.sleep(0.02)
    assert [kind for _, kind in queued] == ["forward_backward", "optim_step"]  # seq_id order
    (fb, _), (step, _) = queued
    with session_scope(sessions) as s:  # the worker's part, by hand
        logprobs = {"data": [-0.5, -0.25], "dtype": "float32", "shape": [2]}
        result = {"loss_fn_outputs": [{"logprobs": logprobs}], "metrics": {"loss:sum": 0.75}}
        tinker_db.finish(s, fb, {"loss_fn_output_type": "ArrayRecord", **result})
        tinker_db.fail(s, step, "the optimizer exploded", category="user")
    out = done.result(timeout=10)
    assert out.metrics == {"loss:sum": 0.75}
    assert out.loss_fn_outputs[0]["logprobs"].tolist() == [-0.5, -0.25]
    with pytest.raises(tinker.RequestFailedError, match="the optimizer exploded"):
        failed.result(timeout=10)
