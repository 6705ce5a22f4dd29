"""the compute choices of a job's worker

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

`jobs.runtime` holds what the worker measured and chose when it started the job (device
profiles, GEMM rates, the compute dtype of the rollouts and of training); NULL until then.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("runtime", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("runtime")
