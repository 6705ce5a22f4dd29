"""the Routing Replay mode a job runs with and why

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

`jobs.routing_replay` holds the worker's replay summary (requested mode, mode in force, the
reason with its numbers, the deciding step, switches); NULL until the job's first step.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("routing_replay", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("routing_replay")
