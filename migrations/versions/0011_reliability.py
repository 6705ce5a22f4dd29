"""api keys remember the key that minted them

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

A key minted by a project key must not outlive it: `parent_key_id` names
the minting key, and revoking a key revokes every key it minted, and theirs. Keys from before
have no known parent (NULL), as keys minted by the admin key or `keel keys create` do.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("parent_key_id", sa.String(length=40), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_api_keys_parent_key_id_api_keys"),
            "api_keys",
            ["parent_key_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index(batch.f("ix_api_keys_parent_key_id"), ["parent_key_id"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index(batch.f("ix_api_keys_parent_key_id"))
        batch.drop_constraint(batch.f("fk_api_keys_parent_key_id_api_keys"), type_="foreignkey")
        batch.drop_column("parent_key_id")
