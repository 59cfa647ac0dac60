"""The initial case store: patients, studies, series, instances, reports, embeddings, events.

Revision ID: 0001
Revises:
Create Date: 2025-11-27

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    # db.models.UTCDateTime stores this type; a migration must not import the (changing) models.
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table of the case store."""
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pseudonym", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
        sa.UniqueConstraint("pseudonym", name=op.f("uq_patients_pseudonym")),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.CheckConstraint("status IN ('new', 'drafted', 'signed')", name=op.f("ck_studies_status")),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_studies_patient_id_patients")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("study_uid", name=op.f("uq_studies_study_uid")),
    )
    op.create_index(op.f("ix_studies_created_at"), "studies", ["created_at"])
    op.create_index(op.f("ix_studies_patient_id"), "studies", ["patient_id"])
    op.create_index(op.f("ix_studies_status"), "studies", ["status"])
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_uid", sa.String(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("modality", sa.String(), nullable=False),
        sa.Column("body_part", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], name=op.f("fk_series_study_id_studies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("series_uid", name=op.f("uq_series_series_uid")),
    )
    op.create_index(op.f("ix_series_study_id"), "series", ["study_id"])
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("metadata_json", sa.JSON(), nullable=False),
        sa.Column("modality", sa.String(), nullable=False),
        sa.Column("body_part", sa.String(), nullable=False),
        sa.Column("preview_png", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"], name=op.f("fk_instances_series_id_series")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instances_sop_instance_uid")),
    )
    op.create_index(op.f("ix_instances_body_part"), "instances", ["body_part"])
    op.create_index(op.f("ix_instances_modality"), "instances", ["modality"])
    op.create_index(op.f("ix_instances_series_id"), "instances", ["series_id"])
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sections_json", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("signed_at", _utc(), nullable=True),
        sa.Column("signed_by", sa.String(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.CheckConstraint("status IN ('draft', 'signed')", name=op.f("ck_reports_status")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_reports_version_positive")),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], name=op.f("fk_reports_study_id_studies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
        sa.UniqueConstraint("study_id", "version", name=op.f("uq_reports_study_id_version")),
    )
    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("owner_key", sa.String(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("report_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.String(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.CheckConstraint(
            "(kind = 'image' AND instance_id IS NOT NULL AND report_id IS NULL)"
            " OR (kind = 'report' AND report_id IS NOT NULL AND instance_id IS NULL)",
            name=op.f("ck_embeddings_owner"),
        ),
        sa.CheckConstraint("dim > 0", name=op.f("ck_embeddings_dim_positive")),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instances.id"], name=op.f("fk_embeddings_instance_id_instances"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["report_id"], ["reports.id"], name=op.f("fk_embeddings_report_id_reports"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embeddings")),
        sa.UniqueConstraint("kind", "owner_key", "model_id", name=op.f("uq_embeddings_kind_owner_key_model_id")),
    )
    op.create_index(op.f("ix_embeddings_instance_id"), "embeddings", ["instance_id"])
    op.create_index(op.f("ix_embeddings_report_id"), "embeddings", ["report_id"])
    op.create_index("ix_embeddings_kind_model_id", "embeddings", ["kind", "model_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", _utc(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("study_uid", sa.String(), nullable=True),
        sa.Column("detail_json", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_kind"), "events", ["kind"])
    op.create_index(op.f("ix_events_study_uid"), "events", ["study_uid"])
    op.create_index(op.f("ix_events_time"), "events", ["time"])


def downgrade() -> None:
    """Drop every table (and with them all data) of the case store."""
    for table in ("events", "embeddings", "reports", "instances", "series", "studies", "patients"):
        op.drop_table(table)  # SQLite and PostgreSQL drop a table's indexes with it
