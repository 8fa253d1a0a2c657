"""Set-based statements for the engine's hot path, on PostgreSQL and SQLite.

A batch of thousands of posts must cost a handful of statements. On PostgreSQL rows travel as
one array per column and are unpacked server-side with `unnest` (one statement, one round trip,
no per-row parsing); on SQLite, which runs in-process, they go through the driver's
`executemany`. Lists of keys travel as one array (PostgreSQL) or one JSON text (SQLite), so a
statement's text never depends on the batch size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, any_, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def sqlite_time(value: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it in SQLite (naive ISO text, microseconds)."""
    v = value.astimezone(UTC)
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 (hot path: faster than strftime)
        v.year,
        v.month,
        v.day,
        v.hour,
        v.minute,
        v.second,
        v.microsecond,
    )


def one_of(session: Session, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN values` with one bound parameter, whatever the number of values."""
    items = list(values)
    if is_postgres(session):
        return column == any_(bindparam(None, items, type_=ARRAY(column.type)))  # type: ignore[no-any-return]
    each = func.json_each(json.dumps(items, default=_json_default)).table_valued("value")
    return column.in_(select(each.c.value))  # type: ignore[no-any-return]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return sqlite_time(value)
    raise TypeError(type(value))


def insert_rows(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    skip_existing: bool = False,
    returning: Sequence[str] = (),
) -> list[Row[Any]]:
    """Insert `rows` (tuples in `columns` order) in one statement.

    With `skip_existing`, rows that collide with a unique key are skipped (ON CONFLICT DO
    NOTHING). `returning` names columns to return for the rows actually inserted; on SQLite it
    requires `skip_existing=False` (callers there filter out existing keys first, under the
    database's single write lock).
    """
    if not rows:
        return []
    names = ", ".join(columns)
    if is_postgres(session):
        dialect = session.get_bind().dialect
        casts = ", ".join(
            f"CAST(:c{i} AS {table.c[name].type.compile(dialect=dialect)}[])"
            for i, name in enumerate(columns)
        )
        sql = f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({casts})"
        if skip_existing:
            sql += " ON CONFLICT DO NOTHING"
        if returning:
            sql += " RETURNING " + ", ".join(returning)
        params = {f"c{i}": list(col) for i, col in enumerate(zip(*rows, strict=True))}
        result = session.execute(text(sql), params)
        return list(result) if returning else []
    if returning:
        raise ValueError("RETURNING with executemany is not supported on SQLite")
    verb = "INSERT OR IGNORE" if skip_existing else "INSERT"
    marks = ", ".join("?" for _ in columns)
    converted = [
        tuple(sqlite_time(v) if isinstance(v, datetime) else v for v in row) for row in rows
    ]
    session.connection().exec_driver_sql(
        f"{verb} INTO {table.name} ({names}) VALUES ({marks})", converted
    )
    return []


def update_rows(
    session: Session,
    table: Table,
    key: Sequence[str],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Set `columns` on the rows identified by `key`, one statement for all rows.

    Each row is a tuple of the key values followed by the new column values.
    """
    if not rows:
        return
    if is_postgres(session):
        dialect = session.get_bind().dialect
        names = [*key, *columns]
        casts = ", ".join(
            f"CAST(:c{i} AS {table.c[name].type.compile(dialect=dialect)}[])"
            for i, name in enumerate(names)
        )
        sets = ", ".join(f"{c} = v.{c}" for c in columns)
        match = " AND ".join(f"{table.name}.{k} = v.{k}" for k in key)
        sql = (
            f"UPDATE {table.name} SET {sets} FROM unnest({casts}) AS v({', '.join(names)}) "
            f"WHERE {match}"
        )
        params = {f"c{i}": list(col) for i, col in enumerate(zip(*rows, strict=True))}
        session.execute(text(sql), params)
        return
    sets = ", ".join(f"{c} = ?" for c in columns)
    match = " AND ".join(f"{k} = ?" for k in key)
    n = len(key)
    converted = [
        tuple(sqlite_time(v) if isinstance(v, datetime) else v for v in (*row[n:], *row[:n]))
        for row in rows
    ]
    session.connection().exec_driver_sql(f"UPDATE {table.name} SET {sets} WHERE {match}", converted)


def next_ids(session: Session, table: Table, count: int) -> list[int]:
    """`count` fresh primary keys for `table`, reserved in one statement.

    PostgreSQL draws them from the column's sequence; SQLite, whose writers are serialised by
    BEGIN IMMEDIATE, continues after the current maximum.
    """
    if count <= 0:
        return []
    if is_postgres(session):
        rows = session.execute(
            text(
                f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"n": count},
        )
        return [r[0] for r in rows]
    top = session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    return list(range(top + 1, top + 1 + count))
