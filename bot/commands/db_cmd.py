"""`flashtag db upgrade`: apply the Alembic migrations."""

from __future__ import annotations

import typer

from bot.schema import upgrade
from config.settings import get_settings

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    db: str | None = typer.Option(None, "--db", help="Database URL (default: DATABASE_URL)"),
    revision: str = typer.Option("head", help="Target revision"),
) -> None:
    """Create or migrate the schema (the Procfile's release step)."""
    url = db or get_settings().database_url
    upgrade(url, revision)
    typer.echo(f"database at {revision}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
