"""The model's draft no longer changes a study's status (issues 19 and 20): the worklist shows a study "new" until a
person saves a draft or signs.

Data only, no schema change. Stores written before this revision marked a study "drafted" as soon as the
model's draft was saved (an upload, `medcm ingest`, the receiver, STOW-RS or `medcm fetch` with a
checkpoint). For every study whose latest report version is a machine draft (status "draft", source
"draft"), this sets the status its latest other version gives, as `db.versions` now does: "signed",
"drafted" (a person's draft) or, with none, "new". Downgrading marks those studies "drafted" again, as the
code before this revision did.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The studies whose highest report version is a draft the model wrote (source "draft").
LATEST_IS_MACHINE_DRAFT = """
    studies.id IN (SELECT r.study_id FROM reports r
                   WHERE r.status = 'draft' AND r.source = 'draft'
                     AND r.version = (SELECT MAX(v.version) FROM reports v WHERE v.study_id = r.study_id))
"""
# The status the study's highest version that is not a machine draft gives ("new" with none).
PERSON_STATUS = """
    COALESCE((SELECT CASE WHEN p.status = 'signed' THEN 'signed' ELSE 'drafted' END FROM reports p
              WHERE p.study_id = studies.id AND NOT (p.status = 'draft' AND p.source = 'draft')
              ORDER BY p.version DESC LIMIT 1), 'new')
"""


def upgrade() -> None:
    op.execute(f"UPDATE studies SET status = {PERSON_STATUS} WHERE {LATEST_IS_MACHINE_DRAFT}")


def downgrade() -> None:
    op.execute(f"UPDATE studies SET status = 'drafted' WHERE {LATEST_IS_MACHINE_DRAFT}")
