"""agent episodes: claims, turns, and the worker's policy server

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

An agent job's episodes are rollouts: `rollouts.claimed_at` marks the ones a harness has taken,
`episode_turns` holds each call's tokens (context, sampled, μ logprobs, policy version) and
messages, and `jobs.serve_url` where the running worker answers the episodes' calls.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("serve_url", sa.Text(), nullable=True))
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "episode_turns",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("sequence_index", sa.Integer(), nullable=False),
        sa.Column("context_ids", sa.JSON(), nullable=False),
        sa.Column("sampled_ids", sa.JSON(), nullable=False),
        sa.Column("logprobs", sa.JSON(), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("finish_reason", sa.String(length=20), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("reply", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_episode_turns_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_episode_turns")),
        sa.UniqueConstraint("rollout_id", "index", name=op.f("uq_episode_turns_rollout_id_index")),
    )


def downgrade() -> None:
    op.drop_table("episode_turns")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("claimed_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("serve_url")
