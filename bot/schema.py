"""All of flashtag's tables, package by package, and the Alembic upgrade that creates them."""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, inspect

from config.database import create_engine, normalize_url

# Each package keeps its own metadata (one MetaData per package, in `<package>/tables.py`);
# table modules listed here register their tables on it. The bot is the only place that sees
# them all.
METADATA_MODULES = (
    "wallet.tables",
    "wallet.stripe_tables",
    "orders.tables",
    "bot.tables",
    "bot.links",
)

MIGRATIONS = Path(__file__).parent / "migrations"


def all_metadata() -> list[MetaData]:
    """Every package's table metadata (a package without tables yet is skipped)."""
    found: list[MetaData] = []
    for name in METADATA_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        if all(module.metadata is not m for m in found):
            found.append(module.metadata)
    return found


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision` (the Procfile's release step)."""
    command.upgrade(alembic_config(url), revision)


def prepare(url: str) -> None:
    """Make the database at `url` ready to use: migrate it (a new database gets the whole
    history, so a later `flashtag db upgrade` knows where it stands). A database whose tables
    were created without migrations (test fixtures, benchmark scratch databases) only gets any
    missing tables."""
    engine = create_engine(url)
    try:
        names = set(inspect(engine).get_table_names())
        if names and "alembic_version" not in names:
            for metadata in all_metadata():
                metadata.create_all(engine)
            return
    finally:
        engine.dispose()
    upgrade(url)
