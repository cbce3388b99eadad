"""jobs.error_type: why a failed job failed, as a stable word (the API's `error.type`)

`invalid-model`, `invalid-spec`, `invalid-data`, `unsupported-model`, `fidelity-budget`, `resource-limit`,
`verification-failed`, `storage-unavailable`, `worker-lost` or `internal-error`. Jobs that failed before this
revision kept only their message; they read `internal-error` unless the message says otherwise.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error_type", sa.String(40), nullable=True))
    # the failures earlier revisions wrote with a message that says their kind
    op.execute("UPDATE jobs SET error_type = 'resource-limit' WHERE status = 'failed' AND error LIKE '%time limit%'")
    op.execute("UPDATE jobs SET error_type = 'worker-lost' WHERE status = 'failed' AND error LIKE '%giving up'")
    op.execute("UPDATE jobs SET error_type = 'internal-error' WHERE status = 'failed' AND error_type IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("error_type")
