"""Connector cursors, stored per account feed in the caller's transaction.

A key is `bot.pipeline.Source.cursor_key`: `brand:platform` for an account's mentions, and
`brand:platform#tag` for its campaign hashtag's feed, so the two positions never overwrite
each other.

`save` only ever flushes: the pipeline calls it in the transaction that applies the batch the
cursor came from, so the cursor and the batch's effects commit together or not at all.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.tables import connector_cursors


def load(session: Session, account_key: str) -> str | None:
    """The saved position of `account_key`, or None if it never saved one."""
    return session.execute(
        select(connector_cursors.c.cursor).where(connector_cursors.c.account_key == account_key)
    ).scalar_one_or_none()


def load_all(session: Session) -> dict[str, str]:
    """Every saved position, by key (one row per account feed: a small table)."""
    rows = session.execute(select(connector_cursors.c.account_key, connector_cursors.c.cursor))
    return {key: cursor for key, cursor in rows}


def save(session: Session, account_key: str, cursor: str, *, at: datetime | None = None) -> None:
    """Set the position of `account_key` (an upsert; the caller commits)."""
    when = at or datetime.now(UTC)
    values = {"account_key": account_key, "cursor": cursor, "updated_at": when}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(connector_cursors).values(**values)
        session.execute(
            pg.on_conflict_do_update(
                index_elements=[connector_cursors.c.account_key],
                set_={"cursor": pg.excluded.cursor, "updated_at": pg.excluded.updated_at},
            )
        )
    elif dialect == "sqlite":
        lite = sqlite.insert(connector_cursors).values(**values)
        session.execute(
            lite.on_conflict_do_update(
                index_elements=[connector_cursors.c.account_key],
                set_={"cursor": lite.excluded.cursor, "updated_at": lite.excluded.updated_at},
            )
        )
    else:  # pragma: no cover - only the two supported backends run
        changed = session.execute(
            update(connector_cursors)
            .where(connector_cursors.c.account_key == account_key)
            .values(cursor=cursor, updated_at=when)
        )
        if not changed.rowcount:  # type: ignore[attr-defined]
            session.execute(connector_cursors.insert().values(**values))
    session.flush()
