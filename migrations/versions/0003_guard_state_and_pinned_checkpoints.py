"""the stability guard's summary on jobs, and pinned checkpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

`jobs.guard` holds the guard's summary (triggers fired, the last reason, rollbacks and the
learning-rate scale they left; NULL = nothing fired yet). `checkpoints.pinned` marks a checkpoint
that retention never deletes: the guard pins the last checkpoint taken before a trigger fired.
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
        batch.add_column(sa.Column("guard", sa.JSON(), nullable=True))
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(
            sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("pinned")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("guard")
