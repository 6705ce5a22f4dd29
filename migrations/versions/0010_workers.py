"""workers: what each worker advertises (max trainer processes per job, rollout engines)

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-05

A worker upserts its row when it starts and on every heartbeat; job creation checks a job's
`distributed` request (processes per machine, machines, vLLM tensor parallel) against the workers
of its queue seen within the lease timeout (docs/how-to/distributed.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
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


def downgrade() -> None:
    op.drop_table("workers")
