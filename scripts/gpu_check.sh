#!/usr/bin/env bash
# GPU check for keel's engines and training loop (issue 3). Run from the repository root on a
# CUDA machine:  bash scripts/gpu_check.sh
#  1. installs vLLM and the project (best effort: a machine without PyPI keeps going without vLLM),
#  2. runs the gpu-marked tests,
#  3. runs a few training steps on tiny-moe with fp8 inference, without and with R3, and prints
#     the training–inference mismatch of each (vLLM rollouts when vLLM imports, else `hf`). With
#     vLLM, R3 replays the routes vLLM returns (`enable_return_routed_experts`, which vLLM's CPU
#     backend cannot run) and the line "R3 routing disagreement" gives the share of tokens whose
#     replayed (vLLM) and native (trainer) expert sets differ.
# Keep it under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

echo "== GPU"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || exit 1

echo "== install"
# Wheels carried in from a machine with PyPI (e.g. pydantic for an image that lacks it).
WHEELS=${KEEL_WHEELS:-dist/whl}
if [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/keel_site "$WHEELS"/*.whl \
    && export PYTHONPATH="/tmp/keel_site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import vllm" 2>/dev/null; then
  if timeout 120 "$PY" -m pip install -q --retries 0 --timeout 5 vllm==0.32.0; then echo "vllm installed"
  else echo "WARNING: 'pip install vllm' failed (offline?): vLLM checks will be skipped"; fi
fi
# The project itself needs no new dependency on a machine with torch + transformers: use the
# source tree directly instead of an install that could try to reach PyPI.
export PYTHONPATH="$PWD/client:$PWD/server:$PWD/worker${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'cuda', torch.cuda.is_available())"
HAVE_VLLM=$("$PY" -c "import vllm; print(1)" 2>/dev/null || echo 0)
echo "vllm available: $HAVE_VLLM"

echo "== gpu tests"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/worker/test_vllm_engine.py \
  tests/worker/training/test_gpu_step.py || true

echo "== one step on tiny-moe (trainer on CUDA): training–inference mismatch without / with R3"
ENGINE=hf; [ "$HAVE_VLLM" = 1 ] && ENGINE=vllm
timeout 240 "$PY" - "$ENGINE" <<'PYEOF'
import sys, tempfile
from pathlib import Path
import torch
from keel.types.training import TaskConfig, TrainingConfig
from keel_server.platform.settings import Settings
from keel_worker.engines.models import load_model
from keel_worker.engines.vllm import VLLMOptions
from keel_worker.training.session import build_engine
from keel_worker.training.step import Trainer
from keel_worker.training.tasks import build_task

engine_name = sys.argv[1]
items = build_task(TaskConfig()).train_items[:8]
reward = lambda rs: [float(sum(r.completion.encode()) % 2 == 0) for r in rs]  # noqa: E731
# "default" = transformers' grouped_mm experts kernel; "eager" = the per-expert loop.
for experts in ("default", "eager"):
    for precision in ("fp32", "fp8"):
        for replay in ("none", "R3"):
            cfg = TrainingConfig(
                model={"name": "tiny-moe"}, prompts_per_step=8, group_size=8,
                num_minibatches=4, micro_batch_size=64, routing_replay=replay, eval_every=0,
                rollout={"engine": engine_name, "precision": precision, "max_new_tokens": 32},
                optimizer={"lr": 1e-3},
            )
            loaded = load_model("tiny-moe", cache_dir=Path(tempfile.mkdtemp()))
            model = loaded.model
            if experts == "eager":
                model.set_experts_implementation("eager")
            engine = build_engine(cfg, model, loaded.tokenizer, workdir=Path(tempfile.mkdtemp()),
                                  vllm_options=VLLMOptions.from_settings(Settings()))
            model.cuda()
            trainer = Trainer(cfg, model, loaded.tokenizer, engine, is_moe=True)
            m = trainer.step(items, reward, seed=5)
            print(f"engine={engine_name} experts={experts:7s} precision={precision} "
                  f"replay={replay:4s} kl_k3={m['mismatch/kl_k3']:.3e} "
                  f"kl_k1={m['mismatch/kl_k1']:.3e} "
                  f"route_diff={m['routing/infer_vs_train_any']:.3f} "
                  f"loss={m['optim/loss']:.3f} step_s={m['time/step_s']:.2f}", flush=True)
            if replay == "R3":
                layers = sorted(k for k in m if k.startswith("routing/infer_vs_train_L"))
                print(f"  R3 routing disagreement, replayed ({engine_name}) vs native (trainer): "
                      f"any layer {m['routing/infer_vs_train_any']:.3f}; per layer "
                      + " ".join(f"{m[k]:.3f}" for k in layers), flush=True)
PYEOF
echo "== done"
