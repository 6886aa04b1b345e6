"""teacher artifacts and model weight hashes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "teacher_artifacts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("teacher_sha256", sa.String(length=64), nullable=False),
        sa.Column("examples_sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "settings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_by_job_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teacher_artifacts")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_teacher_artifacts_fingerprint")),
    )
    with op.batch_alter_table("teacher_artifacts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_teacher_artifacts_teacher_sha256"), ["teacher_sha256"], unique=False
        )

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weights_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("weights_sha256")

    with op.batch_alter_table("teacher_artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_teacher_artifacts_teacher_sha256"))

    op.drop_table("teacher_artifacts")
