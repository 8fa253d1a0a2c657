"""Set-based statements for the engine's hot path, on PostgreSQL and SQLite.

A batch of thousands of posts must cost a handful of statements. On PostgreSQL new rows go by
binary COPY (`orders.bulk_copy`), and rows to update, or to insert skipping duplicates, travel
as one JSONB array of arrays, encoded by orjson and unpacked server-side (one statement, one
round trip); on SQLite, which runs in-process, rows go through the driver's `executemany`.
Lists of keys travel as one JSON array on both, so a statement's text never depends on the batch
size and its plan can be cached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    DateTime,
    Select,
    Table,
    Text,
    TextClause,
    bindparam,
    cast,
    func,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from config.database import is_postgres
from orders import bulk_copy


def _sqlite_text(value: datetime) -> str:
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


@lru_cache(maxsize=8192)
def sqlite_time(value: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it in SQLite (naive ISO text, microseconds)."""
    return _sqlite_text(value)


def _same(value: Any) -> Any:
    return value


class _SqliteTimes(dict[datetime | None, str | None]):
    """SQLite's text (`sqlite_time`) of each time asked for, encoded on first use."""

    def __init__(self) -> None:
        super().__init__({None: None})

    def __missing__(self, value: datetime) -> str:
        encoded = self[value] = _sqlite_text(value)
        return encoded


def time_encoder(session: Session) -> Callable[[datetime | None], Any]:
    """How row values of time columns are written: as they are on PostgreSQL, as SQLite's
    text on SQLite. Rows built with it go to `insert_rows(..., encoded=True)`.

    Each encoder remembers what it encoded: the rows of a batch share their times (a post's
    time is on its post row and on each of its reservation parts; holds of a campaign lapse
    together), and a remembered time costs one dict lookup, without a Python call."""
    return _same if is_postgres(session) else _SqliteTimes().__getitem__


def matching(
    session: Session, stmt: Select[Any], column: Any, values: Iterable[Any]
) -> Select[Any]:
    """`stmt` restricted to rows whose `column` is one of `values`, planned as one index probe
    per value, whatever the number of values (they travel as one JSON array).

    On PostgreSQL the values drive a LATERAL subquery (kept apart from the outer query by
    `OFFSET 0`), so the only plan is a nested loop of index probes on `column` and the equalities
    already in `stmt`. A plain `IN (...)` on a table that grew from empty during a storm and was
    never analysed gets planned as a scan of every row of the campaign, a cost that grows with
    every batch. Columns of the result keep their names.
    """
    payload = orjson.dumps(list(values)).decode()
    if is_postgres(session):
        keys = (
            func.jsonb_array_elements_text(cast(bindparam(None, payload, type_=Text()), JSONB))
            .table_valued("value")
            .alias("k")
        )
        inner = stmt.where(column == keys.c.value).offset(0).lateral("r")
        return select(inner).select_from(keys).join(inner, true())
    each = func.json_each(bindparam(None, payload, type_=Text())).table_valued("value")
    return stmt.where(column.in_(select(each.c.value)))


@lru_cache(maxsize=64)
def _jsonb_select(
    dialect: Dialect, table: Table, columns: tuple[str, ...], constants: tuple[str, ...]
) -> str:
    """A `SELECT` of rows unpacked server-side from one JSONB array of arrays (`:rows`).

    orjson encodes a batch in C and PostgreSQL parses it once: far cheaper than adapting one
    Python list per column (psycopg dumps array elements one by one in Python). Values that are
    the same for every row (`constants`) are bound once (`:k_<name>`, see `_jsonb_params`)
    instead of travelling in every row. The text depends only on the table and the names, so
    it is written once, not per batch.
    """
    fields = _jsonb_fields(dialect, table, columns, constants)
    return f"SELECT {fields} FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS e"


def _jsonb_params(rows_json: str, constants: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a `_jsonb_select`: the rows as one JSON text, each constant once."""
    params: dict[str, Any] = {f"k_{name}": value for name, value in constants.items()}
    params["rows"] = rows_json
    return params


def _jsonb_fields(
    dialect: Dialect, table: Table, columns: tuple[str, ...], constants: tuple[str, ...]
) -> str:
    """`columns` cast from the JSON array `e`, then `constants` cast from `:k_<name>`."""

    def type_of(name: str) -> str:
        return str(table.c[name].type.compile(dialect=dialect))

    fields = [f"CAST(e->>{i} AS {type_of(name)}) AS {name}" for i, name in enumerate(columns)]
    fields += [f"CAST(:k_{name} AS {type_of(name)}) AS {name}" for name in constants]
    return ", ".join(fields)


@lru_cache(maxsize=64)
def _jsonb_insert(
    dialect: Dialect,
    table: Table,
    columns: tuple[str, ...],
    constants: tuple[str, ...],
    conflict: str,
) -> TextClause:
    select_rows = _jsonb_select(dialect, table, columns, constants)
    names = ", ".join([*columns, *constants])
    return text(f"INSERT INTO {table.name} ({names}) {select_rows}{conflict}")


def _is_time(type_: Any) -> bool:
    return isinstance(getattr(type_, "impl", type_), DateTime)


def _sqlite_rows(
    table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> Sequence[Sequence[Any]]:
    """Rows with their datetimes as SQLite stores them."""
    times = [i for i, name in enumerate(columns) if _is_time(table.c[name].type)]
    if not times:
        return rows
    out = []
    for row in rows:
        values = list(row)
        for i in times:
            v = values[i]
            if v is not None:
                values[i] = sqlite_time(v)
        out.append(tuple(values))
    return out


def insert_rows(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    constants: Mapping[str, Any] | None = None,
    encoded: bool = False,
    skip_conflicts_on: Sequence[str] | None = None,
) -> int:
    """Insert `rows` (tuples in `columns` order, plus `constants` for every row) in one
    statement and return how many were inserted. Callers filter out existing keys first,
    under the campaign lock; a row that still collides is an error that rolls the whole batch
    back, unless `skip_conflicts_on` names a unique key whose duplicates are to be skipped
    (`ON CONFLICT (...) DO NOTHING`). `encoded` says the rows' times were already written with
    `time_encoder`.

    On PostgreSQL rows go by binary COPY (`orders.bulk_copy`), their values as the column types
    take them; with `skip_conflicts_on`, which COPY cannot do, as one JSONB array."""
    if not rows:
        return 0
    constants = constants or {}
    if is_postgres(session) and not skip_conflicts_on:
        return bulk_copy.copy_rows(
            session, table, (*columns, *constants), rows, tuple(constants.values())
        )
    names = ", ".join([*columns, *constants])
    conflict = (
        f" ON CONFLICT ({', '.join(skip_conflicts_on)}) DO NOTHING" if skip_conflicts_on else ""
    )
    if is_postgres(session):
        statement = _jsonb_insert(
            session.get_bind().dialect, table, tuple(columns), tuple(constants), conflict
        )
        result = session.execute(statement, _jsonb_params(orjson.dumps(rows).decode(), constants))
        return int(result.rowcount)  # type: ignore[attr-defined]
    # Constants are written into the statement: the driver binds every parameter of every row
    # (about 0.1 us each), and a batch's constants would be bound again for each of its rows.
    # A batch's time makes the text new each time, so it is prepared once per batch.
    marks = ", ".join(["?"] * len(columns) + [sqlite_literal(v) for v in constants.values()])
    values = rows if encoded else _sqlite_rows(table, columns, rows)
    result = session.connection().exec_driver_sql(
        f"INSERT INTO {table.name} ({names}) VALUES ({marks}){conflict}", values
    )
    return int(result.rowcount)


def sqlite_literal(value: Any) -> str:
    """`value` as a SQLite literal, stored exactly as the driver would store it bound: text
    quoted (times as `sqlite_time`), 64-bit integers as they are, booleans as 1 or 0, None as
    NULL. Anything else is refused (TypeError), not guessed at."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return str(int(value))
    if isinstance(value, datetime):
        value = sqlite_time(value)
    if isinstance(value, str) and "\x00" not in value:
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQLite literal for {value!r}")


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
        select_rows = _jsonb_select(dialect, table, (*key, *columns), ())
        params = _jsonb_params(orjson.dumps(rows).decode(), {})
        sets = ", ".join(f"{c} = v.{c}" for c in columns)
        match = " AND ".join(f"{table.name}.{k} = v.{k}" for k in key)
        sql = f"UPDATE {table.name} SET {sets} FROM ({select_rows}) AS v WHERE {match}"
        session.execute(text(sql), params)
        return
    sets = ", ".join(f"{c} = ?" for c in columns)
    match = " AND ".join(f"{k} = ?" for k in key)
    n = len(key)
    reordered = [(*row[n:], *row[:n]) for row in rows]
    session.connection().exec_driver_sql(
        f"UPDATE {table.name} SET {sets} WHERE {match}",
        _sqlite_rows(table, [*columns, *key], reordered),
    )


def next_ids(session: Session, table: Table, count: int) -> list[int]:
    """`count` fresh primary keys for `table`, reserved in one statement.

    PostgreSQL draws them from the column's sequence; SQLite, whose writers are serialised by
    BEGIN IMMEDIATE, continues after the current maximum.
    """
    if count <= 0:
        return []
    if is_postgres(session):
        # One row: the ids as one JSON array, in the order drawn (decoded in C, not row by row).
        # The sequence is looked up once (`OFFSET 0` keeps the lookup from being inlined into
        # every row), not once per id: that costs more than drawing the id.
        drawn = session.execute(
            text(
                "SELECT CAST(json_agg(nextval(s.seq)) AS TEXT) FROM (SELECT CAST("
                f"pg_get_serial_sequence('{table.name}', 'id') AS REGCLASS) AS seq OFFSET 0) AS s "
                "CROSS JOIN generate_series(1, :n)"
            ),
            {"n": count},
        ).scalar_one()
        ids: list[int] = orjson.loads(drawn)
        return ids
    top = (
        session.connection()
        .exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {table.name}")
        .scalar_one()
    )
    return list(range(top + 1, top + 1 + count))


def insert_new(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    key: Sequence[str],
    constants: Mapping[str, Any],
) -> set[int]:
    """Insert those of `rows` whose `key` (a unique key of `table`, the first columns of
    `columns`) is not in the table yet; return the positions in `rows` of those skipped. Rows'
    keys must be distinct and their times written with `time_encoder`.

    The keys are looked up first (`_found`: one probe of the unique index per row, the keys
    travelling as one JSON array per value of their leading columns, a batch of posts having
    one platform), then the rest are inserted (`insert_rows`: binary COPY on PostgreSQL). The
    engine holds its campaigns' lock meanwhile, so no other worker inserts the same posts for
    the same campaign between the two. A row another transaction inserts in between all the
    same (the same post under another campaign's lock) fails the insert with the unique key's
    `IntegrityError`, and the transaction rolls back (`bot.pipeline` tries such a batch
    again, and the retry finds the row).
    """
    if not rows:
        return set()
    if tuple(columns[: len(key)]) != tuple(key):
        raise ValueError(f"the key {key} must be the first columns of {columns}")
    positions = _found(session, table, tuple(key), rows)
    if positions:
        rows = [row for n, row in enumerate(rows) if n not in positions]
    insert_rows(session, table, columns, rows, constants=constants, encoded=True)
    return positions


def _found(
    session: Session, table: Table, key: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> set[int]:
    """Positions in `rows` of those whose `key` (their first columns) is in `table` already.

    One query per value of the key's leading columns (a batch of posts has one platform): the
    key's last values travel as one JSON array, and each is one probe of the unique index."""
    lead = len(key) - 1
    connection = session.connection()
    sql = _found_statement(connection.dialect, table, key)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for n, row in enumerate(rows):
        groups.setdefault(tuple(row[:lead]), []).append(n)
    positions: set[int] = set()
    for prefix, where in groups.items():
        payload = orjson.dumps([rows[n][lead] for n in where]).decode()
        found = connection.exec_driver_sql(sql, (payload, *prefix)).all()
        positions.update(where[j] for (j,) in found)
    return positions


@lru_cache(maxsize=16)
def _found_statement(dialect: Dialect, table: Table, key: tuple[str, ...]) -> str:
    """`_found`'s query: the array's positions (from 0) whose value, with the leading values
    bound after the array, is a key of `table`.

    SQLite: `CROSS JOIN` keeps the array as the outer loop; left to itself, the planner may
    scan the table once per value instead. `+j.value` compares as a bound value would (the
    column's affinity applies: a number matches its text), not as json_each's column, which
    has none. PostgreSQL: the probe is a LATERAL subquery on each value, so the only plan is
    one index probe per value, whatever the table's statistics (see `matching`); text keys
    compare with the array's text as it is, other types are cast to the column's."""
    lead = len(key) - 1
    if dialect.name == "sqlite":
        same = " AND ".join([f"t.{k} = ?" for k in key[:lead]] + [f"t.{key[lead]} = +j.value"])
        return f"SELECT j.key FROM json_each(?) AS j CROSS JOIN {table.name} AS t ON {same}"
    last = table.c[key[lead]]
    value = (
        "k.value"
        if last.type.python_type is str
        else f"CAST(k.value AS {last.type.compile(dialect=dialect)})"
    )
    same = " AND ".join([f"t.{k} = %s" for k in key[:lead]] + [f"t.{key[lead]} = {value}"])
    return (
        "SELECT k.n - 1 FROM jsonb_array_elements_text(CAST(%s AS JSONB)) WITH ORDINALITY "
        f"AS k(value, n) CROSS JOIN LATERAL (SELECT 1 FROM {table.name} AS t WHERE {same} "
        "LIMIT 1) AS r"
    )
