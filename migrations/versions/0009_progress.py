"""jobs: the running worker's phase and when it last made progress

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

Liveness is progress, not a heartbeat thread: the worker reports each phase it enters, the
heartbeat stores the latest, and a job with no progress for its phase's bound is failed as stuck.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("phase", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("progress_at")
        batch.drop_column("phase")
