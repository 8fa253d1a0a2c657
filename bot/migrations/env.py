"""Alembic environment: every package's metadata, one connection, batch mode on SQLite."""

from __future__ import annotations

from alembic import context

from bot.schema import all_metadata
from config.database import create_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url is not None
engine = create_engine(url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=all_metadata(),
        render_as_batch=engine.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
