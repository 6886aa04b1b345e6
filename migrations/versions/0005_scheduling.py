"""scheduling: job priority and nproc, project limits (workers/scheduling.py)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Server defaults fill the rows that exist: priority 5 and one process, as specs default.
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="5", nullable=False))
        batch_op.add_column(sa.Column("nproc", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("last_sent_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_running_jobs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_started_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("last_started_at")
        batch_op.drop_column("max_running_jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("last_sent_at")
        batch_op.drop_column("nproc")
        batch_op.drop_column("priority")
