"""checkpoint kinds, pinning and retention

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A checkpoint is downloaded as one of several kinds (weights, adapter, merged, full), each with
its own archive size and sha256, stored in `checkpoints.kinds` instead of the one
`size_bytes`/`sha256` pair. Rows from before described the archive of the whole directory,
which is the `full` kind: they keep it as their only kind (re-hashing their files is no job for
a migration). `pinned` marks a checkpoint retention never deletes; `deleted_at` marks one whose
files retention deleted.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_checkpoints = sa.table(
    "checkpoints",
    sa.column("id", sa.String(length=40)),
    sa.column("size_bytes", sa.BigInteger()),
    sa.column("sha256", sa.String(length=64)),
    sa.column("kinds", sa.JSON()),
)


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("kinds", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_checkpoints.c.id, _checkpoints.c.size_bytes, _checkpoints.c.sha256)
    ).all()
    for row in rows:
        full = {"full": {"size_bytes": row.size_bytes, "sha256": row.sha256}}
        conn.execute(_checkpoints.update().where(_checkpoints.c.id == row.id).values(kinds=full))
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column("kinds", existing_type=sa.JSON(), nullable=False)
        batch.alter_column("pinned", existing_type=sa.Boolean(), server_default=None)
        batch.drop_column("sha256")
        batch.drop_column("size_bytes")


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))
    conn = op.get_bind()
    for row in conn.execute(sa.select(_checkpoints.c.id, _checkpoints.c.kinds)).all():
        full = (row.kinds or {}).get("full", {"size_bytes": 0, "sha256": ""})
        conn.execute(
            _checkpoints.update()
            .where(_checkpoints.c.id == row.id)
            .values(size_bytes=full["size_bytes"], sha256=full["sha256"])
        )
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column("size_bytes", existing_type=sa.BigInteger(), nullable=False)
        batch.alter_column("sha256", existing_type=sa.String(length=64), nullable=False)
        batch.drop_column("deleted_at")
        batch.drop_column("pinned")
        batch.drop_column("kinds")
