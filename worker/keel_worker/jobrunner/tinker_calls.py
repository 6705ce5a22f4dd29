"""One Tinker call, from its stored request to its stored result: the translation between the
SDK's request bodies (`keel_server.platform.tinker_wire` for the protobuf ones, JSON for the
rest) and the resident model (`keel_worker.tinker.resident`).

Results are the SDK's JSON response shapes; the API encodes the ones the SDK takes as protobuf.
Saves live under the job's folder: `tinker/weights/<name>` (weights and optimizer, also
registered as a checkpoint of the job, so its downloads work like any job's) and
`tinker/sampler_weights/<name>` (weights only). An unnamed sampler save writes nothing: it names
the live weights at their version, and sampling from it after the next optim_step (or load) is an
error that says to save with a name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from keel.types.checkpoints import ADAPTER_DIR, TINKER_STATE_DIR
from keel_server.db import SessionFactory, session_scope
from keel_server.db import tinker as queue
from keel_server.db.models import TinkerRequest, TinkerWeights
from keel_server.platform.tinker_wire import WireError, parse_forward_backward
from keel_worker.engines.merged import is_adapter_model
from keel_worker.tinker.batch import AdamParams, Datum, SamplingParams
from keel_worker.tinker.resident import ResidentModel
from keel_worker.training.checkpoint import written_aside

TINKER_DIR = "tinker"
RESUME_SAVE = "keel-resume"  # the save a pause makes, loaded when the model is resumed
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_PATH = re.compile(r"tinker://(?P<job>[^/]+)/(?P<kind>weights|sampler_weights)/(?P<name>[^/]+)")


class CallError(ValueError):
    """The call cannot run as sent (the client's mistake): its future fails with this text."""


def tensor_json(array: np.ndarray) -> dict[str, Any]:
    """A result tensor as the SDK's JSON `TensorData`."""
    dtype = "int64" if np.issubdtype(array.dtype, np.integer) else "float32"
    return {"data": array.ravel().tolist(), "dtype": dtype, "shape": list(array.shape)}


def tinker_path(job_id: str, kind: str, name: str) -> str:
    return f"tinker://{job_id}/{kind}/{name}"


class TinkerCalls:
    """Runs a model's calls; `run(row)` returns (the SDK's JSON result, the call's metrics)."""

    def __init__(
        self,
        *,
        model: ResidentModel,
        factory: SessionFactory,
        job_id: str,
        workdir: Path,
        register: Callable[[Path, int], str],
    ) -> None:
        self.model = model
        self.factory = factory
        self.job_id = job_id
        self.root = Path(workdir) / TINKER_DIR
        self.register = register
        # Bumped whenever the live weights change (optim_step, load): an unnamed sampler save
        # names the live weights of one epoch only.
        self.epoch = 0
        self._ephemeral: dict[str, int] = {}  # weights row id → the epoch it named

    def run(self, row: TinkerRequest) -> tuple[dict[str, Any], dict[str, float]]:
        handler = getattr(self, f"_{row.kind}", None)
        if handler is None:
            raise CallError(f"keel cannot run a {row.kind!r} call on a model")
        try:
            if row.kind in ("forward", "forward_backward"):
                return handler(row.payload)
            return handler(json.loads(row.payload or b"{}"))
        except CallError:
            raise
        except ValueError as exc:  # the resident model checks a whole call before it runs
            raise CallError(str(exc)) from exc

    # ------------------------------------------------------------------ training
    def _forward(self, payload: bytes) -> tuple[dict[str, Any], dict[str, float]]:
        return self._forward_backward(payload, backward=False)

    def _forward_backward(
        self, payload: bytes, *, backward: bool = True
    ) -> tuple[dict[str, Any], dict[str, float]]:
        try:
            call = parse_forward_backward(payload)
        except WireError as exc:
            raise CallError(str(exc)) from exc
        data = [Datum(tokens=list(d.tokens), inputs=dict(d.inputs)) for d in call.data]
        out = self.model.forward(
            data, call.loss_fn, call.loss_fn_config, backward=backward and not call.forward_only
        )
        result = {
            "loss_fn_output_type": "ArrayRecord",
            "loss_fn_outputs": [
                {name: tensor_json(np.asarray(value)) for name, value in outputs.items()}
                for outputs in out.outputs
            ],
            "metrics": dict(out.metrics),
        }
        return result, dict(out.metrics)

    def _optim_step(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        raw = body.get("adam_params") or body.get("optim_params")
        if not isinstance(raw, dict):
            raise CallError("optim_step needs `adam_params` (keel runs Adam only)")
        if raw.get("type", "adamw") not in ("adamw", "adam"):
            raise CallError(f"keel runs Adam only, not the {raw['type']!r} optimizer")
        defaults = AdamParams()
        params = AdamParams(
            **{k: float(raw.get(k, getattr(defaults, k))) for k in AdamParams.__dataclass_fields__}
        )
        metrics = self.model.optim_step(params)
        self.epoch += 1
        return {"metrics": dict(metrics)}, dict(metrics)

    # ------------------------------------------------------------------ saves and loads
    def _save_weights(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        name = self._name(body.get("path"), default=f"step-{self.model.version:06d}")
        directory = self.root / "weights" / name
        with session_scope(self.factory) as session:
            taken = queue.find_weights(session, self.job_id, "weights", name)
        if taken is not None and not body.get("overwrite", False):
            raise CallError(f"weights {name!r} exist; pass overwrite=True to replace them")
        self._write_checkpoint(directory)
        checkpoint_id = self.register(directory, self.model.version)
        self._record("weights", name, directory, with_optimizer=True, checkpoint_id=checkpoint_id)
        return {"path": tinker_path(self.job_id, "weights", name), "type": "save_weights"}, {}

    def _save_weights_for_sampler(
        self, body: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, float]]:
        if body.get("path") is None:  # the live weights, for a sampling client made right now
            name = f"live-{self.model.version:06d}-{self.epoch}"
            row = self._record("sampler_weights", name, None, ephemeral=True)
            self._ephemeral[row.id] = self.epoch
            result = {
                "path": tinker_path(self.job_id, "sampler_weights", name),
                "sampling_session_id": f"{self.job_id}/sampler_weights/{name}",
                "type": "save_weights_for_sampler",
            }
            return result, {}
        name = self._name(body["path"], default="")
        directory = self.root / "sampler_weights" / name
        self.model.save_for_sampler(directory)
        self._record("sampler_weights", name, directory)
        result = {
            "path": tinker_path(self.job_id, "sampler_weights", name),
            "type": "save_weights_for_sampler",
        }
        return result, {}

    def _write_checkpoint(self, directory: Path) -> None:
        """A checkpoint of the job's own layout, so its downloads work like any job's: the
        policy as a Hugging Face directory (adapters merged), a LoRA policy's PEFT adapter, and
        the resident state (`TINKER_STATE_DIR`) a load puts back; never seen half-written."""
        with written_aside(directory) as tmp:
            self.model.save_for_sampler(tmp)
            if is_adapter_model(self.model.model):
                self.model.model.save_pretrained(tmp / ADAPTER_DIR)
            self.model.save(tmp / TINKER_STATE_DIR, optimizer=True)

    def _load_weights(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        path = str(body.get("path") or "")
        saved = self._find(path)
        if saved.kind != "weights" or saved.ephemeral:
            raise CallError(f"{path} holds sampler weights; load_weights needs a save_weights path")
        optimizer = bool(body.get("optimizer", False))
        if optimizer and not saved.with_optimizer:
            raise CallError(f"{path} was saved without optimizer state")
        self.model.load(Path(saved.path) / TINKER_STATE_DIR, optimizer=optimizer)
        self.epoch += 1
        return {"path": path, "model_id": self.job_id, "type": "load_weights"}, {}

    def reload_latest(self) -> TinkerWeights | None:
        """Load the newest `save_weights` of this model (its run starting again); that save,
        or None when it was never saved."""
        with session_scope(self.factory) as session:
            saves = [w for w in queue.list_weights(session, self.job_id) if w.kind == "weights"]
            newest = max(saves, key=lambda w: w.created_at, default=None)
            if newest is not None:
                session.expunge(newest)
        if newest is not None:
            self.model.load(Path(newest.path) / TINKER_STATE_DIR, optimizer=newest.with_optimizer)
        return newest

    def save_for_resume(self) -> str:
        """Save everything (weights, optimizer) before the model leaves memory on a pause, so
        the resumed run continues exactly; the save's tinker path."""
        result, _ = self._save_weights({"path": RESUME_SAVE, "overwrite": True})
        return result["path"]

    # ------------------------------------------------------------------ sampling
    def _sample(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        prompt = _prompt_tokens(body.get("prompt"))
        params = _sampling_params(body.get("sampling_params") or {})
        n = int(body.get("num_samples", 1))
        if n < 1:
            raise CallError("num_samples must be at least 1")
        want_prompt = bool(body.get("prompt_logprobs"))
        weights = self._sampler_weights(body)
        if weights is None:
            out = self.model.sample(prompt, params, n, prompt_logprobs=want_prompt)
        else:
            with self.model.weights_from(weights):
                out = self.model.sample(prompt, params, n, prompt_logprobs=want_prompt)
        result = {
            "type": "sample",
            "sequences": [
                {"tokens": s.tokens, "logprobs": s.logprobs, "stop_reason": s.stop_reason}
                for s in out.sequences
            ],
            "prompt_logprobs": out.prompt_logprobs,
        }
        return result, {}

    def _sampler_weights(self, body: dict[str, Any]) -> Path | None:
        """Where the weights to sample from are (the API resolved the sampling session to a
        `model_path`): None for the live ones."""
        model_path = body.get("model_path")
        if model_path is None:
            return None  # the job's current weights (a base model's own job never trains)
        row = self._find(str(model_path))
        if row.ephemeral:
            if self._ephemeral.get(row.id) != self.epoch:
                raise CallError(
                    "the weights this sampling client was made from have changed since (an "
                    "optim_step or load ran): save them with a name "
                    "(save_weights_for_sampler(name)) to sample from them later"
                )
            return None
        return Path(row.path)

    # ------------------------------------------------------------------ end
    def _unload_model(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        return {"model_id": self.job_id, "type": "unload_model"}, {}

    # ------------------------------------------------------------------ helpers
    def _name(self, raw: Any, *, default: str) -> str:
        name = default if raw in (None, "") else str(raw)
        if not _NAME.fullmatch(name):
            raise CallError(
                f"a save's name must be 1–100 letters, digits, '.', '_' or '-' (got {name!r})"
            )
        return name

    def _record(
        self,
        kind: str,
        name: str,
        directory: Path | None,
        *,
        with_optimizer: bool = False,
        ephemeral: bool = False,
        checkpoint_id: str | None = None,
    ) -> TinkerWeights:
        size = 0
        if directory is not None:
            size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        with session_scope(self.factory) as session:
            row = queue.record_weights(
                session,
                job_id=self.job_id,
                kind=kind,
                name=name,
                path=str(directory) if directory is not None else "",
                policy_version=self.model.version,
                with_optimizer=with_optimizer,
                ephemeral=ephemeral,
                size_bytes=size,
                checkpoint_id=checkpoint_id,
            )
            session.expunge(row)
            return row

    def _find(self, path: str) -> TinkerWeights:
        match = _PATH.fullmatch(path)
        if match is None:
            raise CallError(
                f"not a tinker path of keel: {path!r} (tinker://<model>/weights/<name>)"
            )
        # It may name another model of the project: the API checked the project.
        with session_scope(self.factory) as session:
            row = queue.find_weights(session, match["job"], match["kind"], match["name"])
            if row is None:
                raise CallError(f"no saved weights at {path}")
            session.expunge(row)
            return row


def _prompt_tokens(prompt: Any) -> list[int]:
    chunks = (prompt or {}).get("chunks") if isinstance(prompt, dict) else None
    if not chunks:
        raise CallError("the prompt has no chunks")
    tokens: list[int] = []
    for chunk in chunks:
        if chunk.get("type", "encoded_text") != "encoded_text":
            raise CallError(f"keel takes text prompts only, not {chunk.get('type')!r} chunks")
        tokens.extend(int(t) for t in chunk.get("tokens", []))
    return tokens


def _sampling_params(raw: dict[str, Any]) -> SamplingParams:
    stop = raw.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    return SamplingParams(
        max_tokens=raw.get("max_tokens"),
        temperature=float(raw.get("temperature", 1.0)),
        top_p=float(raw.get("top_p", 1.0)),
        top_k=int(raw.get("top_k", -1)),
        seed=raw.get("seed"),
        stop=list(stop) if stop is not None else None,
    )
