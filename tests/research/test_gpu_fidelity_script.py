"""`scripts/gpu_fidelity.py` (prepared for a GPU): every part's config is valid here,
so the GPU session spends its minutes training, not on a typo."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_gpu_part_builds_a_valid_config_with_long_answers_and_fp8_vllm_rollouts():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("client", "server", "worker")),
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_fidelity.py"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert [line.split()[0] for line in out] == [
        "probe",
        "f1-minirl",
        "f1-noIS",
        "f4-clip",
        "f4-noclip",
        "f9-mu",
        "f9-dppo",
    ]
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_fidelity
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    config = gpu_fidelity.config("f4-clip")
    assert (config.rollout.engine, config.rollout.precision) == ("vllm", "fp8")
    assert config.rollout.max_new_tokens >= 512 and config.num_minibatches == 4
    assert config.lora is None  # the fallback trains every weight
    os.environ["KEEL_GPU_MOE"] = "/models/olmoe"
    try:
        real = gpu_fidelity.config("f4-clip")
    finally:
        del os.environ["KEEL_GPU_MOE"]
    assert real.lora is not None and real.model.name == "/models/olmoe"
