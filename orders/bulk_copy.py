"""PostgreSQL's binary `COPY ... FROM STDIN`: the cheapest way to add a batch of rows.

An `INSERT ... SELECT` from one JSONB array has the server parse the JSON, then cast each field
from its text; on the storage floor (`bench/insert_floor.py --db ...`) that parsing was about a
seventh of the server's work. Binary COPY sends each value already in the server's own format:
psycopg writes the rows in C, once the column types are set, and the server only checks and
stores them. On the floor it cut the reservations' insert by about 30%; the writer's CPU for
the floor's inserts rose by 1.1 to 1.5 s over the whole storm, with the posts' key probe.

COPY has no `ON CONFLICT`: it is for rows whose keys the caller has checked (under the
campaign lock, or probed for just before), and a row that still collides fails the whole
statement, as an `INSERT` would. So does a text longer than its column, which an `INSERT`
from JSON (an explicit cast) would have cut short.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

# The column types rows are copied into, as PostgreSQL names them and psycopg's `set_types`
# takes them. Any other type is refused rather than guessed at.
_COPYABLE = frozenset(
    (
        "varchar",
        "text",
        "smallint",
        "integer",
        "bigint",
        "boolean",
        "timestamp with time zone",
    )
)


@lru_cache(maxsize=64)
def copy_types(dialect: Dialect, table: Table, names: tuple[str, ...]) -> tuple[str, ...]:
    """The PostgreSQL type name of each of `names` (`VARCHAR(64)` is `varchar`); a type COPY
    is not set up for here is a `TypeError` naming the column."""
    types = []
    for name in names:
        compiled = str(table.c[name].type.compile(dialect=dialect)).lower()
        base = "varchar" if re.fullmatch(r"varchar\(\d+\)", compiled) else compiled
        if base not in _COPYABLE:
            raise TypeError(f"{table.name}.{name}: no binary COPY set up for {compiled}")
        types.append(base)
    return tuple(types)


def copy_rows(
    session: Session,
    table: Table,
    names: tuple[str, ...],
    rows: Sequence[Sequence[Any]],
    extra: tuple[Any, ...] = (),
) -> int:
    """Write `rows` (values in `names` order, each followed by `extra`) into `table` with one
    binary COPY on the session's connection, inside its transaction; returns how many rows.

    Values go as they are: a column's value must be of the Python type its PostgreSQL type
    takes (str for text, int for integers, an aware datetime for a timestamp with time zone).
    Anything else is refused with a `TypeError`, before the server stores any of the rows,
    instead of being converted. The server's errors are raised as SQLAlchemy raises a
    statement's (`IntegrityError` for a duplicate key, and so on)."""
    connection = session.connection()
    dialect = connection.dialect
    types = copy_types(dialect, table, names)
    statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
    driver = connection.connection.driver_connection
    assert driver is not None
    whole = ((*row, *extra) for row in rows) if extra else rows
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            write = copy.write_row
            for row in whole:
                write(row)
    except dialect.loaded_dbapi.Error as error:
        # A connection the server dropped is marked unusable, as SQLAlchemy does for its own.
        lost = dialect.is_disconnect(error, driver, None)
        if lost:
            connection.invalidate(error)
        raise DBAPIError.instance(
            statement, None, error, dialect.loaded_dbapi.Error, connection_invalidated=lost
        ) from error
    return len(rows)
