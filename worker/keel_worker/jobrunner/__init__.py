"""What `keel.run_job` does with one job: lease, prompts, rewards, the step loop, checkpoints.

Split by concept: `control` (lease heartbeat, cancel/pause requests), `prompts` (the job's prompt
source), `rewards` (builtin / webhook / external reward sources over the database), `webhook`
(signed delivery to a reward service), `spec` (the job row parsed once), `loop` (the training loop
around `keel_worker.training.step.Trainer`), `runner` (one delivery of the task, start to finish).
A job of several ranks (`config.distributed`): `group` (the lease holder launches and watches
them), `group_agent` (one machine's torch.distributed launcher), `rank` (the program each rank
runs), `follow` (rank 0 leads the loop, the others follow its directives), `group_progress` (what
the ranks tell their worker), `joining` (a worker of another machine joins), `group_probe` (the
group's self-check).
Stale leases are re-enqueued by `keel_server.platform.leases`, which the API and every worker run.
Only `loop` imports torch; the rest stays light so `keel_worker.tasks` imports fast.
"""
