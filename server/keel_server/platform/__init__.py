"""keel's shared platform: what the API process and the worker processes both stand on.

Settings (one `Settings` per process), artifact storage, the Celery producer and its queues, job
leases and their reaper, secrets at rest and credentials (`security`), model access policy,
webhook target rules and telemetry. Like `keel_server.db`, it knows nothing of HTTP, the services
or the worker (the `platform` contract in `.importlinter`); the API reaches it through services.
"""
