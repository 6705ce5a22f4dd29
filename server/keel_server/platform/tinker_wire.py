"""The Tinker SDK's protobuf wire: a `forward_backward` body in, a `ForwardBackwardOutput` and a
`SampleResponse` out (the two results the SDK asks for as `application/x-protobuf`).

The schema is declared here, message by message, with the field numbers of the SDK's own
`tinker_public.proto` (tinker 0.38.0), and built into a private descriptor pool at import. No
generated `_pb2` module: generated code is tied to the protoc that wrote it and the protobuf
runtime that loads it, and a private pool under our own package name cannot clash with the SDK's
descriptors when both are loaded in one process (the tests do). Only field numbers and types
travel on the wire, so the package name is ours to choose. Fields keel does not read
(provenance spans, top-k logprobs, ...) are left out: the parser skips them.

What leaves this module is plain numpy: every tensor dense (a sparse CSR tensor is filled with
the SDK's pad value, 0), integers widened to int64 and bfloat16/float32 to float32, and its
leading dimension checked against the datum's token count. Anything else is a `WireError`
whose message says what is wrong, for the API to answer with a 400 before anything is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from keel.types.tinker import TINKER_LOSSES

_PACKAGE = "keel_tinker_wire"

# name -> [(field, number, type, label)]: type is a scalar name, a message or enum of this file,
# or "map<string,X>"; label is "" (singular), "repeated", "optional" (proto3 optional) or
# "oneof:<name>".
_ENUMS: dict[str, list[tuple[str, int]]] = {
    "StopReason": [("STOP_REASON_STOP", 0), ("STOP_REASON_LENGTH", 1)],
    "DType": [
        ("DTYPE_UNSPECIFIED", 0),
        ("DTYPE_FLOAT32", 1),
        ("DTYPE_INT64", 2),
        ("DTYPE_INT32", 3),
        ("DTYPE_BFLOAT16", 4),
    ],
}
_MESSAGES: dict[str, list[tuple[str, int, str, str]]] = {
    # ---- the request: ForwardBackwardRequest
    "ForwardBackwardRequest": [
        ("model_id", 1, "string", ""),
        ("seq_id", 2, "int32", ""),
        ("data", 3, "Datum", "repeated"),
        ("loss_fn", 4, "string", ""),
        ("loss_fn_config", 5, "map<string,double>", ""),
        ("forward_only", 6, "bool", ""),
        ("loss_fn_config_v2", 7, "map<string,LossConfigValue>", ""),
    ],
    "LossConfigValue": [
        ("number", 1, "double", "oneof:value"),
        ("text", 2, "string", "oneof:value"),
    ],
    "Datum": [
        ("model_input", 1, "Chunk", "repeated"),
        ("loss_fn_inputs", 2, "map<string,Tensor>", ""),
    ],
    "Chunk": [
        ("encoded_text", 1, "EncodedTextChunk", "oneof:chunk"),
        ("image", 2, "ImageChunk", "oneof:chunk"),
        ("dmel", 3, "DmelChunk", "oneof:chunk"),
    ],
    "EncodedTextChunk": [("tokens", 1, "bytes", "")],  # int32, native (little-endian) order
    "ImageChunk": [("data", 1, "bytes", ""), ("format", 2, "string", "")],
    "DmelChunk": [("dmel", 1, "bytes", "")],
    "Tensor": [
        ("dense", 1, "bytes", "oneof:encoding"),
        ("sparse_csr", 2, "SparseCsr", "oneof:encoding"),
        ("dtype", 3, "DType", ""),
        ("shape", 4, "int64", "repeated"),
    ],
    "SparseCsr": [
        ("values", 1, "bytes", ""),
        ("crow_indices", 2, "bytes", ""),  # int64
        ("col_indices", 3, "bytes", ""),  # int64
    ],
    # ---- the results: ForwardBackwardOutput and SampleResponse
    "ForwardBackwardOutput": [
        ("loss_fn_output_type", 1, "string", ""),
        ("loss_fn_outputs", 2, "ArrayRecord", "repeated"),
        ("metrics", 3, "map<string,double>", ""),
    ],
    "ArrayRecord": [
        ("type_tag", 1, "string", ""),
        ("fields", 2, "map<string,BatchedTensor>", ""),
        ("num_datums", 3, "int64", ""),
    ],
    "BatchedTensor": [
        ("data", 1, "bytes", ""),
        ("offsets", 2, "bytes", ""),  # int64 byte offsets into data, one per datum plus one
        ("dtype", 3, "DType", ""),
        ("trailing_shape", 4, "int64", "repeated"),
    ],
    "SampleResponse": [
        ("sequences", 1, "SampledSequence", "repeated"),
        ("prompt_logprobs", 2, "bytes", "optional"),  # float32, NaN where there is none
        ("prompt_cache_hit_tokens", 4, "int32", ""),
    ],
    "SampledSequence": [
        ("stop_reason", 1, "StopReason", ""),
        ("tokens", 2, "bytes", ""),  # int32
        ("logprobs", 3, "bytes", "optional"),  # float32
    ],
}
_SCALARS = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
}


def _set_type(field: descriptor_pb2.FieldDescriptorProto, type_: str) -> None:
    if type_ in _SCALARS:
        field.type = _SCALARS[type_]
    else:
        is_enum = type_ in _ENUMS
        field.type = field.TYPE_ENUM if is_enum else field.TYPE_MESSAGE
        field.type_name = f".{_PACKAGE}.{type_}"


def _add_message(
    file: descriptor_pb2.FileDescriptorProto, name: str, fields: list[tuple[str, int, str, str]]
) -> None:
    msg = file.message_type.add(name=name)
    oneofs: dict[str, int] = {}
    for field_name, number, type_, label in fields:
        field = msg.field.add(name=field_name, number=number)
        field.label = field.LABEL_REPEATED if label == "repeated" else field.LABEL_OPTIONAL
        if type_.startswith("map<"):
            key, value = type_[4:-1].split(",")
            entry = msg.nested_type.add(name=f"{field_name.title().replace('_', '')}Entry")
            entry.options.map_entry = True
            _set_type(entry.field.add(name="key", number=1, label=field.LABEL_OPTIONAL), key)
            _set_type(entry.field.add(name="value", number=2, label=field.LABEL_OPTIONAL), value)
            field.label = field.LABEL_REPEATED
            field.type = field.TYPE_MESSAGE
            field.type_name = f".{_PACKAGE}.{name}.{entry.name}"
            continue
        _set_type(field, type_)
        if label == "optional":  # proto3 `optional`: a synthetic oneof of its own
            oneof = f"_{field_name}"
            field.proto3_optional = True
        elif label.startswith("oneof:"):
            oneof = label.split(":", 1)[1]
        else:
            continue
        if oneof not in oneofs:
            oneofs[oneof] = len(msg.oneof_decl)
            msg.oneof_decl.add(name=oneof)
        field.oneof_index = oneofs[oneof]


def _build_messages() -> dict[str, type[Message]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="keel_tinker_wire.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, values in _ENUMS.items():
        enum = file.enum_type.add(name=name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for name, fields in _MESSAGES.items():
        _add_message(file, name, fields)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _MESSAGES
    }


_PB = _build_messages()

DTYPE_FLOAT32, DTYPE_INT64, DTYPE_INT32, DTYPE_BFLOAT16 = 1, 2, 3, 4
_STOP_REASONS = {"stop": 0, "length": 1}
_WIRE_DTYPES = {DTYPE_FLOAT32: "float32", DTYPE_INT64: "int64"}
_DTYPE_OF_NAME = {name: code for code, name in _WIRE_DTYPES.items()}
_SOURCE_DTYPES = {
    DTYPE_FLOAT32: np.dtype("<f4"),
    DTYPE_INT64: np.dtype("<i8"),
    DTYPE_INT32: np.dtype("<i4"),
    DTYPE_BFLOAT16: np.dtype("<u2"),
}

# The loss inputs the SDK knows (`tinker.types.datum._KEY_TO_TYPE`): one row per token of the
# datum, integers for the target ids, floats for the rest.
INPUT_KINDS: dict[str, str] = {
    "target_tokens": "int",
    "weights": "float",
    "advantages": "float",
    "logprobs": "float",  # the sampler's (mu's) logprobs of the targets
    "clip_low_threshold": "float",
    "clip_high_threshold": "float",
    "sequence_ratio_mask": "float",
}
_RL_INPUTS = frozenset({"target_tokens", "logprobs", "advantages"})
MAX_SEQ_ID = 2**31 - 1  # the proto's int32


def required_inputs(loss_fn: str) -> frozenset[str]:
    """The tensors every datum must carry for `loss_fn`."""
    return frozenset({"target_tokens"}) if loss_fn == "cross_entropy" else _RL_INPUTS


class WireError(ValueError):
    """A body the SDK's schema cannot mean; the message says what is wrong, for a 400."""


@dataclass(frozen=True)
class WireDatum:
    tokens: list[int]
    inputs: dict[str, np.ndarray]  # dense, int64 or float32, leading dimension len(tokens)


@dataclass(frozen=True)
class ForwardBackwardCall:
    data: list[WireDatum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None
    forward_only: bool
    model_id: str
    seq_id: int  # >= 1: the SDK numbers a client's calls from 1


# ---- the request --------------------------------------------------------------------------------


def decompress(body: bytes, content_encoding: str | None, *, limit: int) -> bytes:
    """The body as sent, or zstd-decompressed (`Content-Encoding: zstd`), at most `limit` bytes."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "zstd":
        raise WireError(f"Content-Encoding {content_encoding!r} is not supported (only zstd)")
    import zstandard  # only a compressed body needs it

    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            out = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise WireError(f"the body is not valid zstd: {exc}") from None
    if len(out) > limit:
        raise WireError(f"the decompressed body exceeds {limit} bytes")
    return out


def parse_forward_backward(body: bytes) -> ForwardBackwardCall:
    """A `forward_backward` (or `forward`: `forward_only`) body, already decompressed."""
    msg = _PB["ForwardBackwardRequest"]()
    try:
        msg.ParseFromString(body)
    except DecodeError as exc:
        raise WireError(f"the body is not a ForwardBackwardRequest protobuf: {exc}") from None
    if not msg.model_id:
        raise WireError("model_id is missing")
    if not 1 <= msg.seq_id <= MAX_SEQ_ID:
        raise WireError(
            f"seq_id must be a positive integer (the SDK counts from 1), got {msg.seq_id}"
        )
    if msg.loss_fn not in TINKER_LOSSES:
        known = ", ".join(sorted(TINKER_LOSSES))
        raise WireError(f"unknown loss_fn {msg.loss_fn!r}; known: {known}")
    if not msg.data:
        raise WireError("data is empty: send at least one datum")
    needed = required_inputs(msg.loss_fn)
    data = [_datum(d, i, needed, msg.loss_fn) for i, d in enumerate(msg.data)]
    return ForwardBackwardCall(
        data=data,
        loss_fn=msg.loss_fn,
        loss_fn_config=_loss_fn_config(msg),
        forward_only=msg.forward_only,
        model_id=msg.model_id,
        seq_id=msg.seq_id,
    )


def _loss_fn_config(msg: Message) -> dict[str, float | str] | None:
    """The SDK writes both maps; v2 (numbers and strings) wins when it is set."""
    if msg.loss_fn_config_v2:
        config: dict[str, float | str] = {}
        for key, value in msg.loss_fn_config_v2.items():
            kind = value.WhichOneof("value")
            if kind is None:
                raise WireError(f"loss_fn_config[{key!r}] has no value")
            config[key] = value.number if kind == "number" else value.text
        return config
    return dict(msg.loss_fn_config) or None


def _datum(msg: Message, index: int, needed: frozenset[str], loss_fn: str) -> WireDatum:
    where = f"data[{index}]"
    tokens = _tokens(msg, where)
    missing = sorted(needed - set(msg.loss_fn_inputs))
    if missing:
        raise WireError(f"{where}: loss_fn {loss_fn!r} needs loss_fn_inputs {missing}")
    inputs = {
        name: _input(name, tensor, len(tokens), f"{where}.loss_fn_inputs[{name!r}]")
        for name, tensor in msg.loss_fn_inputs.items()
    }
    targets, weights = inputs.get("target_tokens"), inputs.get("weights")
    if targets is not None and weights is not None and targets.shape != weights.shape:
        raise WireError(
            f"{where}: target_tokens has shape {list(targets.shape)} but weights "
            f"{list(weights.shape)}"
        )
    return WireDatum(tokens=tokens, inputs=inputs)


def _tokens(msg: Message, where: str) -> list[int]:
    tokens: list[int] = []
    for i, chunk in enumerate(msg.model_input):
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            raise WireError(
                f"{where}.model_input[{i}]: {kind or 'an empty'} chunk; keel takes text tokens only"
            )
        raw = chunk.encoded_text.tokens
        if len(raw) % 4:
            raise WireError(
                f"{where}.model_input[{i}]: {len(raw)} bytes is not a whole number of int32 tokens"
            )
        ids = np.frombuffer(raw, dtype="<i4")
        if ids.size and int(ids.min()) < 0:
            raise WireError(f"{where}.model_input[{i}]: a negative token id")
        tokens.extend(ids.tolist())
    if not tokens:
        raise WireError(f"{where}: model_input has no tokens")
    return tokens


def _input(name: str, msg: Message, num_tokens: int, where: str) -> np.ndarray:
    kind = INPUT_KINDS.get(name)
    if kind is None:
        raise WireError(f"{where}: unknown loss input; known: {', '.join(INPUT_KINDS)}")
    array = decode_tensor(msg, where)
    if array.ndim == 0 or array.shape[0] != num_tokens:
        raise WireError(
            f"{where}: shape {list(array.shape)}, but the datum has {num_tokens} tokens "
            "(one row per model_input token)"
        )
    if kind == "int":
        if array.dtype != np.int64:
            raise WireError(f"{where}: token ids must be int64, got {array.dtype}")
        if array.size and int(array.min()) < 0:
            raise WireError(f"{where}: a negative token id")
        return array
    if not np.all(np.isfinite(array)):
        raise WireError(f"{where}: a value is NaN or infinite")
    return array.astype(np.float32, copy=False)


def decode_tensor(msg: Message, where: str) -> np.ndarray:
    """A proto Tensor as a dense array: int64 or float32 (int32 and bfloat16 widened)."""
    source = _SOURCE_DTYPES.get(msg.dtype)
    if source is None:
        raise WireError(f"{where}: unknown dtype {msg.dtype}")
    shape = [int(s) for s in msg.shape]
    if any(s < 0 for s in shape):
        raise WireError(f"{where}: negative dimension in shape {shape}")
    encoding = msg.WhichOneof("encoding")
    if encoding == "sparse_csr":
        return _widen(_densify(msg.sparse_csr, source, shape, where), msg.dtype)
    values = _frombuffer(msg.dense, source, where)
    if not shape:
        shape = [values.size]  # the SDK infers a 1-D tensor when no shape is given
    if math.prod(shape) != values.size:
        raise WireError(f"{where}: {values.size} values do not fill shape {shape}")
    return _widen(values.reshape(shape), msg.dtype)


def _frombuffer(raw: bytes, dtype: np.dtype, where: str) -> np.ndarray:
    if len(raw) % dtype.itemsize:
        raise WireError(f"{where}: {len(raw)} bytes is not a whole number of {dtype.name} values")
    return np.frombuffer(raw, dtype=dtype)


def _densify(csr: Message, dtype: np.dtype, shape: list[int], where: str) -> np.ndarray:
    """A 2-D CSR tensor filled out with 0, the pad value the SDK sparsifies around."""
    if len(shape) != 2:
        raise WireError(f"{where}: a sparse tensor needs a 2-D shape, got {shape}")
    rows, cols = shape
    values = _frombuffer(csr.values, dtype, where)
    crow = _frombuffer(csr.crow_indices, np.dtype("<i8"), where)
    col = _frombuffer(csr.col_indices, np.dtype("<i8"), where)
    ok = (
        crow.size == rows + 1
        and crow[0] == 0
        and crow[-1] == values.size == col.size
        and bool(np.all(np.diff(crow) >= 0))
        and (col.size == 0 or (int(col.min()) >= 0 and int(col.max()) < cols))
    )
    if not ok:
        raise WireError(f"{where}: inconsistent sparse CSR indices for shape {shape}")
    dense = np.zeros(shape, dtype=dtype)
    row_of_value = np.repeat(np.arange(rows), np.diff(crow))
    dense[row_of_value, col] = values
    return dense


def _widen(array: np.ndarray, dtype: int) -> np.ndarray:
    if dtype == DTYPE_BFLOAT16:  # bfloat16 is the upper half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    if dtype == DTYPE_INT32:
        return array.astype(np.int64)
    return array.astype(array.dtype.newbyteorder("="))  # a writable copy in native order


# ---- the results --------------------------------------------------------------------------------


def encode_forward_backward_output(result: dict[str, Any]) -> bytes:
    """A `ForwardBackwardOutput` result (the SDK's JSON shape) as the SDK's protobuf.

    `result["loss_fn_outputs"]` is one dict per datum, name -> `{"data", "dtype", "shape"}`;
    consecutive datums whose fields share trailing shapes go into one ArrayRecord."""
    msg = _PB["ForwardBackwardOutput"]()
    msg.loss_fn_output_type = result.get("loss_fn_output_type") or "ArrayRecord"
    for name, value in (result.get("metrics") or {}).items():
        msg.metrics[name] = float(value)
    outputs = [
        {name: _output_array(name, tensor) for name, tensor in datum.items()}
        for datum in result.get("loss_fn_outputs") or []
    ]
    for group in _runs_of_same_layout(outputs):
        record = msg.loss_fn_outputs.add(type_tag=msg.loss_fn_output_type, num_datums=len(group))
        for name in group[0]:
            arrays = [datum[name] for datum in group]
            batched = record.fields[name]
            batched.dtype = _DTYPE_OF_NAME[arrays[0].dtype.name]
            batched.trailing_shape.extend(arrays[0].shape[1:])
            batched.data = b"".join(a.tobytes() for a in arrays)
            ends = np.cumsum([0] + [a.nbytes for a in arrays], dtype="<i8")
            batched.offsets = ends.tobytes()
    return msg.SerializeToString()


def _output_array(name: str, tensor: dict[str, Any]) -> np.ndarray:
    dtype = tensor.get("dtype", "float32")
    if dtype not in _DTYPE_OF_NAME:
        raise WireError(f"output {name!r}: dtype {dtype!r} is not float32 or int64")
    array = np.asarray(tensor["data"], dtype="<f4" if dtype == "float32" else "<i8")
    shape = tensor.get("shape") or [array.size]
    return array.reshape(shape)


def _runs_of_same_layout(outputs: list[dict[str, np.ndarray]]) -> list[list[dict[str, np.ndarray]]]:
    runs: list[list[dict[str, np.ndarray]]] = []
    for datum in outputs:
        layout = {name: (a.dtype, a.shape[1:]) for name, a in datum.items()}
        last = runs[-1][0] if runs else None
        if last is not None and layout == {n: (a.dtype, a.shape[1:]) for n, a in last.items()}:
            runs[-1].append(datum)
        else:
            runs.append([datum])
    return runs


def encode_sample_response(result: dict[str, Any]) -> bytes:
    """A `SampleResponse` result (the SDK's JSON shape) as the SDK's protobuf: tokens int32,
    logprobs float32, a prompt logprob of None (the first position has none) as NaN."""
    msg = _PB["SampleResponse"]()
    for seq in result.get("sequences") or []:
        out = msg.sequences.add()
        stop_reason = seq.get("stop_reason")
        if stop_reason not in _STOP_REASONS:
            raise WireError(f"stop_reason {stop_reason!r} is not 'stop' or 'length'")
        out.stop_reason = _STOP_REASONS[stop_reason]
        out.tokens = np.asarray(seq["tokens"], dtype="<i4").tobytes()
        if seq.get("logprobs") is not None:
            out.logprobs = np.asarray(seq["logprobs"], dtype="<f4").tobytes()
    prompt_logprobs = result.get("prompt_logprobs")
    if prompt_logprobs is not None:
        filled = [math.nan if v is None else v for v in prompt_logprobs]
        msg.prompt_logprobs = np.asarray(filled, dtype="<f4").tobytes()
    return msg.SerializeToString()
