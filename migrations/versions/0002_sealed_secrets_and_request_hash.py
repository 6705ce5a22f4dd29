"""sealed job secrets and the create request's hash

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

`jobs.webhook_secret` now holds a Fernet token (longer than 200 characters), the reward token
is kept sealed beside its hash, and `request_sha256` lets a repeated `Idempotency-Key` be
compared with the first request. Rows from before keep NULLs (a replay of them re-reveals no
secret) and their webhook secret in plain text; the worker refuses to sign with a secret that
does not decrypt, so re-create webhook jobs that were queued across this upgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("reward_token_sealed", sa.Text(), nullable=True))
        batch.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))
        batch.alter_column(
            "webhook_secret",
            existing_type=sa.String(length=200),
            type_=sa.Text(),
            existing_nullable=True,
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "webhook_secret",
            existing_type=sa.Text(),
            type_=sa.String(length=200),
            existing_nullable=True,
        )
        batch.drop_column("request_sha256")
        batch.drop_column("reward_token_sealed")
