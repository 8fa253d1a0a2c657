"""`flashtag outbox status`: queue depth per priority and the time to empty it at today's pace."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from bot.outbox import PRIORITY_NAMES, queue_status
from config.database import create_engine, session_factory
from config.settings import get_settings

outbox_app = typer.Typer(help="Replies waiting to be sent.", no_args_is_help=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (nothing sent in the last hour)"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@outbox_app.command("status")
def outbox_status(
    db: str | None = typer.Option(None, "--db", help="Database URL (default: DATABASE_URL)"),
) -> None:
    """Queue depth per account and priority, and the ETA at the last hour's sending pace."""
    engine = create_engine(db or get_settings().database_url)
    try:
        with session_factory(engine)() as session:
            now = datetime.now(UTC)
            accounts = queue_status(session, now=now)
    finally:
        engine.dispose()
    if not accounts:
        typer.echo("outbox empty")
        return
    for account in accounts:
        typer.echo(
            f"{account.account}: {account.total} queued, {account.sending} sending, "
            f"{account.failed} failed, {account.sent_last_hour} sent in the last hour"
        )
        for priority, name in PRIORITY_NAMES.items():
            count = account.depth.get(priority, 0)
            if count:
                typer.echo(f"  {priority} {name:<18} {count:>8}")
        if account.oldest_due is not None:
            waited = (now - account.oldest_due).total_seconds()
            typer.echo(f"  oldest waiting      {_duration(max(waited, 0.0))}")
        typer.echo(f"  ETA at current pace {_duration(account.eta_seconds())}")


def register(app: typer.Typer) -> None:
    app.add_typer(outbox_app, name="outbox")
