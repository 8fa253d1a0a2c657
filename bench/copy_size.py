"""What one binary COPY costs on PostgreSQL by the rows it carries: why larger batches pay.

    .venv/bin/python bench/copy_size.py --db postgresql://... [--rows N ...] [--repeat 40]

(`--rows`: the sizes to time, 100 250 500 750 1000 2000 4000 by default.)

Rows shaped like the storm's post rows (`orders.tables.posts`'s columns, no index) go into a
scratch table (`bench_copy_size`, dropped at the end) by the engine's own COPY
(`orders.bulk_copy.copy_rows`), one COPY and one commit at a time, `--repeat` times per size.
Prints one JSON object: each size's median milliseconds per COPY (sent, run and answered;
the commit apart) and microseconds per row.

On PostgreSQL 15 a COPY buffers up to 1,000 rows, each in a slot of its own that it makes,
pins the table's row type for, and drops at the end; with one row type behind every pin, the
pins pile into one chain of the transaction's resource owner, so a COPY's own overhead grows
faster than its rows up to 1,000 of them and stays the same above. In a `perf` profile of
1,000-row COPYs, `ResourceOwnerRememberTupleDesc` and the functions around it take about half
of the server's samples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, MetaData, Table

from config.database import create_engine, session_factory
from orders.bulk_copy import copy_rows
from orders.engine import POST_COLUMNS
from orders.tables import posts

NAMES = (*POST_COLUMNS, "attempts", "seen_at")  # the engine's COPY of post rows


def post_row(n: int, now: datetime) -> tuple[Any, ...]:
    """A storm post's row: numbered post id and buyer, an order decided now."""
    return (
        "mastodon",
        str(10**15 + n),
        "xiaomi-mi2",
        f"mastodon:{n}",
        now,
        "order",
        None,
        1,
        1,
        now,
    )


def scratch_table() -> Table:
    """The post rows' columns, without their key: the COPY alone, no index to maintain."""
    return Table(
        "bench_copy_size",
        MetaData(),
        *(Column(c.name, c.type, nullable=c.nullable) for c in posts.columns if c.name in NAMES),
    )


def run(url: str, sizes: list[int], repeat: int) -> dict[str, Any]:
    """Time `repeat` COPYs of each size in `sizes` into a scratch table at `url`."""
    if not url.startswith(("postgresql", "postgres:")):
        raise SystemExit(
            "bench/copy_size.py measures PostgreSQL's COPY: give --db postgresql://..."
        )
    if repeat < 1 or min(sizes) < 1:
        raise SystemExit("--rows and --repeat take positive numbers")
    table = scratch_table()
    engine = create_engine(url)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    results: dict[str, Any] = {}
    table.drop(engine, checkfirst=True)
    table.create(engine)
    try:
        serial = 0
        for size in sizes:
            spent: list[float] = []
            for _ in range(repeat):
                rows = [post_row(n, now) for n in range(serial, serial + size)]
                serial += size
                with sessions() as session:
                    session.connection()  # the checkout and BEGIN are not the COPY's
                    started = time.perf_counter()
                    copy_rows(session, table, NAMES, rows)
                    spent.append(time.perf_counter() - started)
                    session.commit()
            median = statistics.median(spent)
            results[str(size)] = {
                "ms_per_copy": round(median * 1000, 3),
                "us_per_row": round(median / size * 1e6, 2),
            }
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()
    return {"database": "postgresql", "repeat": repeat, "copies": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="a PostgreSQL URL (a scratch database)")
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[100, 250, 500, 750, 1000, 2000, 4000]
    )
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    sys.stdout.write(json.dumps(run(args.db, args.rows, args.repeat), indent=2) + "\n")


if __name__ == "__main__":
    main()
