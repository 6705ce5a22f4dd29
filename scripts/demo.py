"""`make demo`: watch SmolLM2-135M-Instruct learn single-digit addition under MiniRL, end to end.

The script owns only the demo's choreography; everything it does to keel goes through the real
service and the SDK (`from keel import Client`):

1. start `keel up` (API + one Celery worker, SQLite and the filesystem broker under `.keel/`) as
   a subprocess, on port 8000 or on a free port when 8000 is taken;
2. create a job: the built-in `addition` task and its verifier, MiniRL with the paper's defaults
   (decoupled clip ε_low 0.2 / ε_high 0.27, token-level TIS; paper Eq. 7), bf16 rollouts and
   fp32 training, so the training–inference mismatch the IS weight corrects is real (on a CPU
   without native bf16 the worker computes the bf16 rollouts in fp32 on bf16-rounded values, and
   the script says so: `job.runtime`);
3. follow the job's events (SSE) with a one-line progress bar: step, reward, held-out accuracy,
   KL(μ‖π_old) (the k3 estimate, docs/concepts/algorithm.md §10.3), clip fraction;
4. download the final checkpoint, write `training_curves.png` and `summary.json` next to it and
   print where they are and the line that loads the checkpoint with transformers;
5. stop the processes it started and leave `.keel/` for a later `keel up`.

Ctrl-C (or SIGTERM) cancels the job and stops the service. The defaults are sized for an idle
2-core CPU (under 8 minutes; `bench/demo_time.py` measures it); the flags shrink the budget
(`tests/e2e/test_demo.py` uses them).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from demo_service import REPO, KeelService, choose_port

from keel import Client, KeelError
from keel.types import metric_names as metric

JOB_NAME = "keel-demo"
DEFAULT_PORT = 8000
CANCEL_WAIT_S = 10.0
LIVE = ("queued", "running", "paused")
# Metric names written by the worker (keel_worker.training.step, .step_metrics, .evaluate).
REWARD, ACC, ACC_FINAL = metric.REWARD_MEAN, metric.EVAL_ACCURACY, metric.EVAL_ACCURACY_FINAL
KL, CLIP, LENGTH = metric.MISMATCH_KL_K3, metric.CLIP_FRAC, metric.RESPONSE_LENGTH_MEAN
CURVES = (REWARD, ACC, ACC_FINAL, KL, CLIP, LENGTH)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: cancel the job and shut down."""


# ------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="global RL steps (default 8)")
    p.add_argument("--prompts-per-step", type=int, default=8, help="B (default 8)")
    p.add_argument("--group-size", type=int, default=8, help="G, samples per prompt (default 8)")
    p.add_argument("--minibatches", type=int, default=2, help="N updates per step (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="per response (default 24)")
    p.add_argument("--eval-size", type=int, default=30, help="held-out prompts (default 30)")
    p.add_argument("--eval-every", type=int, default=None, help="default: about 4 evals a run")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="API port (default 8000)")
    p.add_argument(
        "--data-dir", type=Path, default=REPO / ".keel", help="keel's state folder (.keel)"
    )
    return p.parse_args(argv)


def job_config(args: argparse.Namespace) -> dict[str, Any]:
    """The job: only what differs from keel's defaults (MiniRL keeps every paper default)."""
    eval_every = args.eval_every or max(1, math.ceil(args.steps / 4))
    return {
        "model": {"name": "smollm2-135m-instruct"},
        # 30 % of the 100 sums are held out, so `--eval-size 30` scores every held-out one.
        "task": {"name": "addition", "held_out_fraction": 0.3},
        "algorithm": {"name": "minirl"},
        "rollout": {"engine": "hf", "precision": "bf16", "max_new_tokens": args.max_new_tokens},
        "train_dtype": "fp32",
        "optimizer": {"lr": args.lr},
        "prompts_per_step": args.prompts_per_step,
        "group_size": args.group_size,
        "num_minibatches": args.minibatches,
        # A mini-batch (32 responses) in one forward: the 8 samples of a prompt share its forward.
        "micro_batch_size": 32,
        "steps": args.steps,
        "seed": args.seed,
        "eval_every": eval_every,
        "eval_size": args.eval_size,
        "checkpoint_every": 0,
    }


# ------------------------------------------------------------------------------ progress


def _fmt(value: float | None, spec: str) -> str:
    return "  -  " if value is None else format(value, spec)


class Progress:
    """One terminal line redrawn in place (a line per step when output is not a terminal).

    A ticker thread redraws the clock every second so a long step still shows signs of life.
    """

    def __init__(self, steps: int) -> None:
        self.steps, self.step = steps, 0
        self.values: dict[str, float | None] = {}
        self.guard: str | None = None  # the last stability-guard trigger that fired
        self.started = time.monotonic()
        self.tty = sys.stdout.isatty()
        self._lock = threading.Lock()
        self._done = threading.Event()
        if self.tty:
            threading.Thread(target=self._tick, daemon=True).start()

    def update(self, step: int, values: dict[str, float | None]) -> None:
        with self._lock:
            self.step = step
            self.values.update({k: v for k, v in values.items() if k in CURVES})
            if ACC_FINAL in values:
                self.values[ACC] = values[ACC_FINAL]
            self._draw(final=not self.tty)

    def alert(self, event: dict[str, Any]) -> None:
        """A `guard` event: shown on the progress line from now on, and once in full."""
        with self._lock:
            self.guard = f"{event.get('trigger')} at step {event.get('step')}"
        self.note(f"guard: {event.get('reason')} ({event.get('action')})")

    def note(self, text: str) -> None:
        with self._lock:
            prefix = "\r\033[K" if self.tty else ""
            print(f"{prefix}{text}", flush=True)
            if self.tty:
                self._draw()

    def close(self) -> None:
        self._done.set()
        with self._lock:
            if self.tty:
                print(flush=True)

    def line(self) -> str:
        width, filled = 20, round(20 * self.step / self.steps)
        bar = "#" * filled + "." * (width - filled)
        v = self.values
        clock = time.strftime("%M:%S", time.gmtime(time.monotonic() - self.started))
        return (
            f"step {self.step:>3}/{self.steps} [{bar}] reward {_fmt(v.get(REWARD), '.2f')} | "
            f"held-out acc {_fmt(v.get(ACC), '.2f')} | KL(μ‖π_old) {_fmt(v.get(KL), '.1e')} | "
            f"clip {_fmt(v.get(CLIP), '.1%')} | {clock}"
            + (f" | guard alert: {self.guard}" if self.guard else "")
        )

    def _draw(self, *, final: bool = False) -> None:
        text = self.line()
        if final:
            print(text, flush=True)
            return
        columns = shutil.get_terminal_size((120, 20)).columns
        sys.stdout.write("\r\033[K" + text[: columns - 1])
        sys.stdout.flush()

    def _tick(self) -> None:
        while not self._done.wait(1.0):
            with self._lock:
                self._draw()


def follow(client: Client, job_id: str, progress: Progress) -> None:
    """Consume the job's events until the stream ends (the job is terminal)."""
    described = False
    for event in client.jobs.events(job_id):
        data = event.data
        if event.type == "metrics":
            if not described and (runtime := client.jobs.retrieve(job_id).runtime) is not None:
                progress.note(runtime_line(runtime))
                described = True
            progress.update(int(data["step"]), data.get("values") or {})
        elif event.type == "checkpoint":
            progress.note(f"checkpoint saved at step {data.get('step')}")
        elif event.type == "guard":
            progress.alert(data)
        elif event.type == "status":
            status = data.get("status")
            hint = " (loading the model, then the held-out eval before step 1)"
            progress.note(f"job {status}{hint if status == 'running' else ''}")
            if status == "paused":  # by the guard: its reason is on the job; resume via the SDK
                return


def runtime_line(runtime) -> str:
    """What the worker computes the bf16 rollouts in, and the GEMM rates it chose from."""
    cpu = next(d for d in runtime.devices if d.device == "cpu")
    rates = ", ".join(f"{k} {v:.1f}" for k, v in cpu.gemm_gflops.items())
    rollout = runtime.rollout
    how = (
        "natively"
        if rollout.compute_dtype == rollout.requested
        else (f"as {rollout.compute_dtype} on {rollout.requested}-rounded weights and activations")
    )
    return f"{cpu.name}: {rollout.requested} rollouts computed {how} (GEMM GFLOP/s: {rates})"


# ------------------------------------------------------------------------------ results


def fetch_curves(client: Client, job_id: str) -> dict[str, list[tuple[int, float]]]:
    """Each curve as (x, value) with x = the number of updates the policy had seen.

    The eval in step s runs before that step's update (x = s - 1); the `_final` eval after it.
    """
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in CURVES}
    for point in client.metrics.list(job_id, name=list(CURVES)):
        if point.value is None:
            continue
        x = point.step - 1 if point.name == ACC else point.step
        curves[point.name].append((x, point.value))
    accuracy = sorted(curves[ACC] + curves.pop(ACC_FINAL))
    curves[ACC] = accuracy
    return curves


def phase_seconds(client: Client, job_id: str, job_seconds: float) -> dict[str, float]:
    """Where the job's time went: each step phase summed over the steps, and the rest (model
    load, the held-out evaluations, checkpoints) as `outside_steps`."""
    totals = dict.fromkeys((*metric.TIME_PHASES, metric.TIME_STEP), 0.0)
    for point in client.metrics.list(job_id, name=list(totals)):
        if point.value is not None:
            totals[point.name] += point.value
    split = {
        name.removeprefix("time/").removesuffix("_s"): round(v, 1) for name, v in totals.items()
    }
    split["outside_steps"] = round(job_seconds - totals[metric.TIME_STEP], 1)
    return split


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [
        (REWARD, "train reward (sampled)", None),
        (ACC, "held-out accuracy (greedy)", None),
        (KL, "KL(μ‖π_old), k3", "log"),
        (CLIP, "clipped token fraction", None),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (name, label, scale) in zip(axes, panels, strict=True):
        xs, ys = zip(*curves[name], strict=True) if curves[name] else ((), ())
        ax.plot(xs, ys, marker="o", markersize=3)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if scale and any(y > 0 for y in ys):
            ax.set_yscale(scale)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def download_final(client: Client, job_id: str, out_dir: Path) -> tuple[Path, int]:
    newest = max(client.checkpoints.list(job_id).data, key=lambda c: c.step)
    dest = out_dir / f"checkpoint-step-{newest.step}"
    return client.checkpoints.download(newest.id, dest, overwrite=True), newest.step


def first(curve: list[tuple[int, float]]) -> float | None:
    return curve[0][1] if curve else None


def last(curve: list[tuple[int, float]]) -> float | None:
    return curve[-1][1] if curve else None


# ------------------------------------------------------------------------------ the run


def cancel_leftovers(client: Client) -> None:
    """A demo killed without cleanup may have left its job queued or running: cancel it, or the
    one worker would resume that job before starting ours."""
    for job in client.jobs.list(status=",".join(LIVE), limit=100).data:
        if job.name == JOB_NAME:
            client.jobs.cancel(job.id)
            print(f"cancelled an unfinished earlier demo job {job.id}")


def cancel(client: Client, job_id: str) -> None:
    try:
        client.jobs.cancel(job_id)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while client.jobs.retrieve(job_id).status in LIVE and time.monotonic() < deadline:
            time.sleep(0.5)
        print(f"job {job_id}: {client.jobs.retrieve(job_id).status}")
    except KeelError as exc:
        print(f"could not cancel job {job_id}: {exc}")


def run_job(client: Client, args: argparse.Namespace, started: float) -> dict[str, Any]:
    config = job_config(args)
    job = client.jobs.create(config, name=JOB_NAME, reward={"type": "builtin", "verifier": "task"})
    print(
        f"job {job.id}: {args.steps} steps × {args.prompts_per_step} prompts × "
        f"{args.group_size} samples, lr {args.lr:g}, seed {args.seed}"
    )
    progress = Progress(args.steps)
    try:
        follow(client, job.id, progress)
    except (KeyboardInterrupt, Interrupted):
        progress.close()
        print("\ninterrupted: cancelling the job")
        cancel(client, job.id)
        raise Interrupted from None
    progress.close()
    final = client.jobs.retrieve(job.id)
    if final.status != "succeeded":
        raise RuntimeError(f"job {job.id} {final.status}: {final.error or final.guard.last_reason}")
    return finish(client, final, config, started, args.data_dir)


def finish(client, job, config: dict, started: float, data_dir: Path) -> dict[str, Any]:
    out_dir = (data_dir / "demo" / job.id).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, step = download_final(client, job.id, out_dir)
    curves = fetch_curves(client, job.id)
    before, after = first(curves[ACC]), last(curves[ACC])
    png = out_dir / "training_curves.png"
    plot_curves(curves, png, f"keel demo: SmolLM2-135M-Instruct, addition, MiniRL ({job.id})")
    job_seconds = (job.finished_at - job.started_at).total_seconds()
    summary = {
        "job_id": job.id,
        "seed": config["seed"],
        "steps": step,
        "config": config,
        "heldout_accuracy_before": before,
        "heldout_accuracy_after": after,
        "train_reward_first": first(curves[REWARD]),
        "train_reward_last": last(curves[REWARD]),
        "job_seconds": job_seconds,
        "phase_seconds": phase_seconds(client, job.id, job_seconds),
        "runtime": job.runtime.model_dump(mode="json") if job.runtime else None,
        "wall_seconds": time.monotonic() - started,
        "checkpoint": str(checkpoint),
        "curves_png": str(png),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report(summary, config["eval_size"])
    return summary


def report(s: dict[str, Any], eval_size: int) -> None:
    def acc(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    before, after = acc(s["heldout_accuracy_before"]), acc(s["heldout_accuracy_after"])
    first_r, last_r = acc(s["train_reward_first"]), acc(s["train_reward_last"])
    path = s["checkpoint"]
    print()
    print(f"held-out accuracy (greedy, {eval_size} unseen sums): {before} before -> {after} after")
    print(f"train reward (sampled): {first_r} at step 1 -> {last_r} at step {s['steps']}")
    print(f"time: {s['job_seconds'] / 60:.1f} min training, {s['wall_seconds'] / 60:.1f} min total")
    print(f"checkpoint:      {path}")
    print(f"training curves: {s['curves_png']}")
    print("load it with transformers:")
    print(
        f"  from transformers import AutoModelForCausalLM, AutoTokenizer; "
        f'model = AutoModelForCausalLM.from_pretrained("{path}"); '
        f'tokenizer = AutoTokenizer.from_pretrained("{path}")'
    )


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _raise_interrupted)
    # Ctrl-C cancels the job even when the demo was started with SIGINT ignored (a shell's
    # background job, `nohup`): Python installs no KeyboardInterrupt handler then.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    service = KeelService(args.data_dir, choose_port(args.port))
    try:
        print(f"starting keel (embedded: SQLite + filesystem broker in {args.data_dir}) ...")
        admin_key = service.start()
        print(f"keel is up at {service.url} (API docs: {service.url}/docs)")
        print(f"dashboard: {service.url}/dashboard (sign in with {service.home}/admin_key)")
        with Client(base_url=service.url, api_key=admin_key) as client:
            cancel_leftovers(client)
            run_job(client, args, started)
        return 0
    except (KeyboardInterrupt, Interrupted):
        return 130
    except (KeelError, RuntimeError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        print(f"keel log: {service.log}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping keel ...", flush=True)
        service.stop()
        print(
            f"stopped; keel's data stays in {args.data_dir} (inspect it with "
            f"`keel up --home {args.data_dir}`)"
        )


if __name__ == "__main__":
    sys.exit(main())
