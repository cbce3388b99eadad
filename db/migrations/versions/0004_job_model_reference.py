"""jobs.model_id without its foreign key: a finished job keeps the id of the model it pruned after that model is
deleted (DELETE /v1/models/{id}), as a record of where its result came from

A model still used by a queued or running job cannot be deleted (the API answers 409); that rule, not the
foreign key, now keeps every job that will run pointed at a model that exists.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# SQLite keeps the constraint unnamed: batch mode names what it reflects with this, so that it can be dropped
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    names = [fk["name"] for fk in sa.inspect(op.get_bind()).get_foreign_keys("jobs")
             if fk["referred_table"] == "models"]
    with op.batch_alter_table("jobs", schema=None, naming_convention=NAMING) as batch_op:
        for name in names:
            batch_op.drop_constraint(name or "fk_jobs_model_id_models", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.create_foreign_key("fk_jobs_model_id_models", "models", ["model_id"], ["id"])
