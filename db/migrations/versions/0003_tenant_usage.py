"""tenants.stored_bytes, upload_minute, uploads_this_minute: per-tenant storage and upload-rate limits

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stored_bytes", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("upload_minute", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("uploads_this_minute", sa.Integer(), nullable=False, server_default="0"))
    # what each tenant already keeps
    op.execute(
        "UPDATE tenants SET stored_bytes = "
        "COALESCE((SELECT SUM(size_bytes) FROM models WHERE models.tenant_id = tenants.id), 0) + "
        "COALESCE((SELECT SUM(size_bytes) FROM datasets WHERE datasets.tenant_id = tenants.id), 0) + "
        "COALESCE((SELECT SUM(artifacts.size_bytes) FROM artifacts JOIN jobs ON jobs.id = artifacts.job_id "
        "WHERE jobs.tenant_id = tenants.id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("uploads_this_minute")
        batch_op.drop_column("upload_minute")
        batch_op.drop_column("stored_bytes")
