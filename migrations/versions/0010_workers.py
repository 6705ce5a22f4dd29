"""workers: what each worker advertises (max trainer processes per job, rollout engines); the
rendezvous of a job of several machines

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

A worker upserts its row when it starts and on every heartbeat; job creation checks a job's
`distributed` request (processes per machine, machines, vLLM tensor parallel) against the workers
of its queue seen within the lease timeout (docs/how-to/distributed.md). `jobs.rendezvous` is the
host:port of the c10d rendezvous the lease holder of a several-machine job hosts, where the other
machines' workers join it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("queue", sa.String(length=200), nullable=False),
        sa.Column("max_processes", sa.Integer(), nullable=False),
        sa.Column("engines", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("rendezvous", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("rendezvous")
    op.drop_table("workers")
