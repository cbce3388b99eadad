"""Alembic environment: the connection comes from the caller (db.session.migrate) or the settings."""

from __future__ import annotations

from alembic import context
from secateurs.db.models import Base
from sqlalchemy import create_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from secateurs.db.settings import get_settings

    engine = create_engine(config.get_main_option("sqlalchemy.url") or get_settings().db_url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
