"""`flashtag audit` and `flashtag export`: check every invariant, and hand a brand its orders."""

from __future__ import annotations

import csv
import sys
from enum import StrEnum

import orjson
import typer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.tables import outbox_messages
from config.database import create_engine, session_factory
from config.settings import get_settings
from orders.audit import audit
from orders.export import FIELDS, export_rows
from orders.tables import campaigns


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


def one_reply_per_kind(session: Session) -> list[str]:
    """Every reservation gets at most one reply of each kind (docs/design.md)."""
    o = outbox_messages.c
    rows = session.execute(
        select(o.reservation_id, o.kind, func.count())
        .where(o.reservation_id.is_not(None))
        .group_by(o.reservation_id, o.kind)
        .having(func.count() > 1)
        .limit(20)
    )
    return [f"reservation {rid}: {n} replies of kind {kind}" for rid, kind, n in rows]


def audit_command(
    db: str | None = typer.Option(None, "--db", help="Database URL (default: DATABASE_URL)"),
) -> None:
    """Check every invariant in docs/design.md; exit 1 and say what broke."""
    engine = create_engine(db or get_settings().database_url)
    try:
        with session_factory(engine)() as session:
            problems = audit(session, extra=(one_reply_per_kind,))
    finally:
        engine.dispose()
    if problems:
        for problem in problems:
            typer.echo(problem, err=True)
        typer.echo(f"audit: {len(problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo("audit: every invariant holds")


FORMAT_OPTION = typer.Option(ExportFormat.jsonl, "--format", help="jsonl or csv")


def export_command(
    campaign: str = typer.Option(..., "--campaign", help="Campaign id"),
    fmt: ExportFormat = FORMAT_OPTION,
    db: str | None = typer.Option(None, "--db", help="Database URL (default: DATABASE_URL)"),
) -> None:
    """Write one line per reservation of CAMPAIGN to stdout."""
    engine = create_engine(db or get_settings().database_url)
    try:
        with session_factory(engine)() as session:
            known = session.scalar(select(campaigns.c.id).where(campaigns.c.id == campaign))
            if known is None:
                typer.echo(f"no campaign {campaign!r} in this database", err=True)
                raise typer.Exit(1)
            rows = export_rows(session, campaign)
            if fmt is ExportFormat.csv:
                writer = csv.DictWriter(sys.stdout, fieldnames=FIELDS, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
            else:
                out = sys.stdout.buffer
                for row in rows:
                    out.write(orjson.dumps(row) + b"\n")
                out.flush()
    finally:
        engine.dispose()


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
    app.command("export")(export_command)
