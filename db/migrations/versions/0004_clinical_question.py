"""The study's clinical question (indication / history): a nullable free-text column on `studies`.

Existing studies keep NULL (no question). Adding a nullable column needs no table copy on SQLite, so
no trigger is dropped; on PostgreSQL it is a catalogue change only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `studies.clinical_question` (NULL for every existing study)."""
    op.add_column("studies", sa.Column("clinical_question", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop `studies.clinical_question` (and every stored question)."""
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("clinical_question")
