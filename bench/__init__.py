"""keel's performance benchmarks: step time against TRL, rollout throughput, the service's
overhead, reward ingest, checkpoint sizes, LoRA, the demo's wall time, each writing its results
under bench/results/. The research harness is `research`; nothing of keel imports either."""
