"""The `flashtag` command line. Each area registers its commands from `bot.commands`."""

from __future__ import annotations

import os
import re
import sys

import typer
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from bot.collector import tune_collector
from bot.commands import (
    bench_cmd,
    config_cmd,
    db_cmd,
    orders_cmd,
    outbox_cmd,
    parse_cmd,
    replay_cmd,
    run_cmd,
    wallet_cmd,
    web_cmd,
)
from config.loader import BrandFileError
from orders.campaigns import CampaignLoadError

app = typer.Typer(
    name="flashtag",
    help="Sell by posts on Mastodon and X: hashtag orders, first-come stock, prepaid credits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

config_cmd.register(app)
db_cmd.register(app)
orders_cmd.register(app)
wallet_cmd.register(app)
outbox_cmd.register(app)
parse_cmd.register(app)
run_cmd.register(app)
web_cmd.register(app)
replay_cmd.register(app)
bench_cmd.register(app)


def main() -> None:
    tune_collector()
    try:
        app()
    except Exception as exc:
        reason = explain(exc)
        if reason is None or os.environ.get("FLASHTAG_TRACEBACK"):
            raise
        for line in reason.splitlines():
            typer.echo(f"error {line}", err=True)
        sys.exit(1)


def explain(exc: BaseException) -> str | None:
    """What a user can act on in an error that any command may meet (a brand file that does not
    load, a database that cannot be reached or has no schema), in a line or a few; None for
    anything else, which is a bug and keeps its traceback.

    `FLASHTAG_TRACEBACK=1` shows the traceback anyway."""
    if isinstance(exc, BrandFileError):
        return str(exc)
    if isinstance(exc, CampaignLoadError):
        return f"brand file: {exc}"
    if isinstance(exc, NoSuchModuleError) or (
        isinstance(exc, ArgumentError) and str(exc).startswith("Could not parse SQLAlchemy URL")
    ):
        return f"database URL: {exc} (set --db or DATABASE_URL, see README)"
    if isinstance(exc, ModuleNotFoundError) and exc.name in _DRIVERS:
        return (
            f"database URL: no driver {exc.name!r} for it; flashtag runs on "
            "sqlite:///FILE and postgresql://USER@HOST/DB"
        )
    if isinstance(exc, DBAPIError):
        lines = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
        first = lines[0] if lines else type(exc.orig).__name__
        if _NO_TABLE.search(first):
            return (
                f"database: {first}: this database has no flashtag tables yet; "
                "run `flashtag db upgrade` (with the same --db or DATABASE_URL) first"
            )
        if _OLD_SCHEMA.search(first):
            return (
                f"database: {first}: this database's tables are older than this flashtag; "
                "run `flashtag db upgrade` (with the same --db or DATABASE_URL)"
            )
        if isinstance(exc, OperationalError) and _UNREACHABLE.search(first):
            return f"database: {first}"
    return None


# Database drivers a URL may ask for that flashtag does not install.
_DRIVERS = frozenset({"MySQLdb", "pymysql", "psycopg2", "asyncpg", "pyodbc", "cx_Oracle"})
# SQLite's and PostgreSQL's words for a table that is not there.
_NO_TABLE = re.compile(r"no such table|relation \"[^\"]+\" does not exist")
# ... and for a column that a newer schema added.
_OLD_SCHEMA = re.compile(
    r"no such column|column \"[^\"]+\" (of relation \"[^\"]+\" )?does not exist"
)
# A database that cannot be opened or reached (anything else is a bug, and keeps its traceback).
_UNREACHABLE = re.compile(
    r"unable to open database file|database is locked|connection (failed|refused)"
    r"|could not connect|could not translate host|password authentication failed"
    r"|database \"[^\"]+\" does not exist|server closed the connection|timeout expired",
    re.IGNORECASE,
)
