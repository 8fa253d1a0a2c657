"""PostgreSQL's binary COPY (`orders.bulk_copy`): what the engine's inserts go through there.

Rows arrive exactly as given, their failures are SQLAlchemy's errors (so `bot.pipeline` retries
what it retries for any statement), a value of the wrong type or length is refused, the
connection goes on after any of these, and a key probe (`orders.bulk._found`) works for keys
that are not text.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import ARRAY, Column, Engine, Float, MetaData, String, Table, select, text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.database import create_engine, session_factory
from orders.bulk import insert_new, insert_rows
from orders.bulk_copy import copy_types
from orders.placing import RESERVATION_COLUMNS
from orders.tables import posts, reservations

pytestmark = pytest.mark.postgres

AT = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
COLUMNS = ("platform", "post_id", "campaign_id", "buyer", "posted_at", "decision", "reason")
CONSTANTS = {"attempts": 1, "seen_at": AT + timedelta(seconds=1)}


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = create_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def post(post_id: str, reason: str | None = None) -> tuple[object, ...]:
    return ("mastodon", post_id, "mi2", "mastodon:1", AT, "order", reason)


def test_rows_are_stored_as_given_with_the_constants_on_every_row(
    sessions: sessionmaker[Session],
) -> None:
    tricky = "tab\there, newline\nthere, a quote ' and a backslash \\ and 中文 ＃ＭＩ２"
    with sessions.begin() as session:
        stored = insert_rows(
            session, posts, COLUMNS, [post("1", tricky), post("2")], constants=CONSTANTS
        )
        assert stored == 2
    with sessions() as session:
        rows = session.execute(select(posts).order_by(posts.c.post_id)).all()
    assert [r.reason for r in rows] == [tricky, None]
    assert {(r.posted_at, r.seen_at, r.attempts) for r in rows} == {
        (AT, AT + timedelta(seconds=1), 1)
    }


def test_the_types_are_the_columns_own(engine: Engine) -> None:
    names = ("post_id", "posted_at", "attempts", "quantity")
    assert copy_types(engine.dialect, posts, names) == (
        "varchar",
        "timestamp with time zone",
        "smallint",
        "integer",
    )
    assert copy_types(engine.dialect, reservations, ("id", "queue_ticket")) == ("bigint", "bigint")
    other = Table("other", MetaData(), Column("share", Float), Column("tags", ARRAY(String(8))))
    for name in ("share", "tags"):
        with pytest.raises(TypeError, match=f"other.{name}: no binary COPY"):
            copy_types(engine.dialect, other, (name,))


def test_a_duplicate_key_is_sqlalchemys_integrity_error_and_the_connection_goes_on(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        insert_rows(session, posts, COLUMNS, [post("1")], constants=CONSTANTS)
    with pytest.raises(IntegrityError, match="pk_order_posts"), sessions.begin() as session:
        insert_rows(session, posts, COLUMNS, [post("2"), post("1")], constants=CONSTANTS)
    with sessions.begin() as session:  # the failed COPY ended: the next statement runs
        insert_rows(session, posts, COLUMNS, [post("3")], constants=CONSTANTS)
    with sessions() as session:
        assert session.execute(select(posts.c.post_id)).scalars().all() == ["1", "3"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (1, 2),  # a number for a text column
        (4, datetime(2026, 3, 1, 12, 0)),  # a naive time: flashtag stores UTC times only
        (4, "2026-03-01 12:00:00+00"),  # a time as text
    ],
)
def test_a_value_of_the_wrong_type_is_refused_and_the_connection_goes_on(
    sessions: sessionmaker[Session], field: int, value: object
) -> None:
    bad = list(post("2"))
    bad[field] = value
    with pytest.raises(TypeError), sessions.begin() as session:
        insert_rows(session, posts, COLUMNS, [post("1"), tuple(bad)], constants=CONSTANTS)
    with sessions.begin() as session:  # the COPY was abandoned, not left open
        insert_rows(session, posts, COLUMNS, [post("3")], constants=CONSTANTS)
    with sessions() as session:
        assert session.execute(select(posts.c.post_id)).scalars().all() == ["3"]


def test_a_text_longer_than_its_column_is_refused_not_cut_short(
    sessions: sessionmaker[Session],
) -> None:
    """`bot.pipeline.refusal` keeps such posts from the engine; here the database says no."""
    with pytest.raises(DataError, match="too long"), sessions.begin() as session:
        insert_rows(session, posts, COLUMNS, [post("9" * 65)], constants=CONSTANTS)


def test_a_connection_the_server_dropped_is_invalidated(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        backend = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        with pytest.raises(OperationalError) as raised:
            insert_rows(session, posts, COLUMNS, [post("1")], constants=CONSTANTS)
        assert raised.value.connection_invalidated
    with sessions.begin() as session:  # the pool hands out a working connection again
        assert insert_rows(session, posts, COLUMNS, [post("1")], constants=CONSTANTS) == 1


def test_insert_new_probes_a_key_whose_last_column_is_a_number(
    sessions: sessionmaker[Session],
) -> None:
    """The reservations' unique key ends with `part`, a SMALLINT."""
    columns = ("platform", "post_id", "part", *RESERVATION_COLUMNS[5:])
    base: dict[str, object] = dict.fromkeys(RESERVATION_COLUMNS[5:])
    base |= {
        "buyer": "mastodon:1",
        "handle": "@fan@example.social",
        "visibility": "public",
        "sku": "MI2-16GB-BLACK",
        "quantity": 1,
        "state": "rejected",
        "reason": "sold_out",
        "posted_at": AT,
        "amount": 0,
    }

    def part(post_id: str, n: int) -> tuple[object, ...]:
        return ("mastodon", post_id, n, *(base[c] for c in RESERVATION_COLUMNS[5:]))

    constants = {"campaign_id": "mi2", "cause": "order", "created_at": AT, "updated_at": AT}
    key = ("platform", "post_id", "part")
    with sessions.begin() as session:
        first = [part("1", 0), part("1", 1)]
        assert insert_new(session, reservations, columns, first, key=key, constants=constants) == (
            set()
        )
        again = [part("1", 1), part("1", 2), part("2", 0), part("1", 0)]
        skipped = insert_new(session, reservations, columns, again, key=key, constants=constants)
        assert skipped == {0, 3}
        stored = session.execute(select(reservations.c.post_id, reservations.c.part)).all()
    assert sorted(stored) == [("1", 0), ("1", 1), ("1", 2), ("2", 0)]
