"""the stability guard's summary on jobs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

`jobs.guard` holds the guard's summary (triggers fired, the last reason, rollbacks and the
learning-rate scale they left; NULL = nothing fired yet). The guard pins the last checkpoint
taken before a trigger fired with `checkpoints.pinned` (revision 0004).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("guard", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("guard")
