"""The storage floor of a storm: its post and reservation rows inserted with no engine around them.

    .venv/bin/python bench/insert_floor.py [--db URL] [--posts 1300000] [--batch 4000]
        [--buyers storm|random] [--without INDEX ...] [--no-checkpointer]
        [--wal-autocheckpoint PAGES]

Rows shaped like the storm's (`flashtag bench storm` at the defaults: one post row per post,
a reservation for 85% of them, seven in ten of those waitlisted; buyers as the storm has them,
numbered as each first posts, three in ten posting again within the next 2% of the storm)
go through the engine's own statements (`orders.bulk.insert_new` for posts, `insert_rows` for
reservations), one transaction per batch, and nothing else runs: no parsing, no placing, no
wallet, no outbox. The time spent in the inserts and commits (`wall_s`, not `elapsed_s`, which
also counts generating the rows) is what the storm's writer cannot go below on this schema,
whatever the Python around it. `--without` drops the named indexes of `order_reservations` first, to
show what each costs (`ix_order_reservations_campaign_buyer`, say). On SQLite the log is
checkpointed as the worker does it (`config.database.WalCheckpointer`); `--no-checkpointer` and
`--wal-autocheckpoint 1000` (SQLite's own default) show what that saves.

`--buyers random` draws each post's buyer from 900,000 fans instead, in no order: what a sale
looks like where account ids have nothing to do with who posts first (X's ids, or Mastodon
accounts the brand's server already knew). The buyers' index, in buyer order, then changes a
scattered page for nearly every reservation, where the storm's buyers mostly append to it.

Prints one JSON object: seconds of wall and CPU time per table (CPU of this process: on SQLite
that includes the database, on PostgreSQL the server's work is in the wall time only).
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bot.bench import drop_tables, reset_tables
from bot.pipeline import DEFAULT_MAX_POSTS
from bot.storm import StormSpec
from config import database
from config.database import WalCheckpointer, create_engine, session_factory
from orders.bulk import insert_new, insert_rows, time_encoder
from orders.engine import POST_COLUMNS
from orders.placing import RESERVATION_COLUMNS
from orders.tables import posts, reservations

SKUS = ("MI2-16GB-BLACK", "MI2-16GB-WHITE", "MI2-32GB-BLACK", "MI2-32GB-WHITE")
FANS = 900_000
FAN_BASE = 1_000_000  # buyer ids keep the same number of digits, so text order is number order
REPEAT_FAN_SHARE = StormSpec().repeat_fan_share  # the storm's own


class StormFans:
    """Buyers in the storm's order (`bot.storm`): a new fan for each post but the repeats,
    numbered in order of first post; `REPEAT_FAN_SHARE` of the fans post once or twice more,
    each within the next `gap` posts, as `bot.storm.storm` has them."""

    def __init__(self, rng: random.Random, total: int) -> None:
        self.rng = rng
        self.gap = max(2, total // 50)
        self.pending: list[tuple[int, int, int]] = []
        self.line = self.fans = self.seq = 0

    def __call__(self) -> int:
        line, self.line = self.line, self.line + 1
        if self.pending and self.pending[0][0] <= line:
            return FAN_BASE + heapq.heappop(self.pending)[2]
        fan, self.fans = self.fans, self.fans + 1
        if self.rng.random() < REPEAT_FAN_SHARE:
            for _ in range(1 + (self.rng.random() < 0.5)):
                self.seq += 1
                due = line + 1 + self.rng.randrange(self.gap)
                heapq.heappush(self.pending, (due, self.seq, fan))
        return FAN_BASE + fan


OPENS = datetime(2012, 9, 5, 12, 0, tzinfo=UTC)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _batch(
    rng: random.Random, first: int, size: int, encode: Any, fan: Callable[[], int]
) -> tuple[list[Any], list[Any]]:
    """One batch of post rows and reservation rows, ids and post ids going up as in a storm,
    each post by `fan()`."""
    post_rows: list[Any] = []
    reservation_rows: list[Any] = []
    for n in range(first, first + size):
        post_id = str(88_576_465_308_876_800 + n * 65_536)
        buyer = f"mastodon:{fan()}"
        posted = encode(OPENS + timedelta(microseconds=n * 230 + rng.randrange(1000)))
        post_rows.append(("mastodon", post_id, "mi2", buyer, posted, "order", None, 1))
        draw = rng.random()
        if draw >= 0.85:
            continue
        state = "waitlisted" if draw < 0.6 else "rejected" if draw < 0.8 else "awaiting_payment"
        expires = encode(OPENS + timedelta(minutes=30)) if state == "awaiting_payment" else None
        reservation_rows.append(
            (
                n,
                "mi2",
                "mastodon",
                post_id,
                0,
                buyer,
                f"@fan{buyer[9:]}@example.social",
                "zh",
                "public",
                SKUS[n % 4],
                1,
                state,
                "over_limit" if state == "rejected" else None,
                posted,
                posted if state == "awaiting_payment" else None,
                expires,
                n if state == "waitlisted" else None,
                199_900,
                None,
            )
        )
    return post_rows, reservation_rows


def _timed(spent: dict[str, list[float]], name: str, step: Any, *args: Any, **kwargs: Any) -> None:
    wall, cpu = time.perf_counter(), _cpu()
    step(*args, **kwargs)
    spent[name][0] += time.perf_counter() - wall
    spent[name][1] += _cpu() - cpu


def _insert(
    sessions: Any,
    rng: random.Random,
    total: int,
    batch: int,
    spent: dict[str, list[float]],
    fan: Callable[[], int],
) -> int:
    """Insert the storm's rows batch by batch; returns how many reservations went in."""
    reserved = 0
    for first in range(0, total, batch):
        now = OPENS + timedelta(microseconds=(first + batch) * 230)
        with sessions() as session, session.begin():
            post_rows, reservation_rows = _batch(
                rng, first, min(batch, total - first), time_encoder(session), fan
            )
            reserved += len(reservation_rows)
            _timed(
                spent,
                "posts",
                insert_new,
                session,
                posts,
                POST_COLUMNS,
                post_rows,
                key=("platform", "post_id"),
                constants={"attempts": 1, "seen_at": now},
            )
            _timed(
                spent,
                "reservations",
                insert_rows,
                session,
                reservations,
                RESERVATION_COLUMNS,
                reservation_rows,
                constants={"cause": "order", "created_at": now, "updated_at": now},
                encoded=True,
            )
            _timed(spent, "commit", session.commit)
    return reserved


def run(
    url: str,
    total: int,
    batch: int,
    without: list[str],
    *,
    buyers: str = "storm",
    checkpointer: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    rng = random.Random(seed)
    fan = StormFans(rng, total) if buyers == "storm" else lambda: FAN_BASE + rng.randrange(FANS)
    reset_tables(url)
    engine = create_engine(url)
    spent = {"posts": [0.0, 0.0], "reservations": [0.0, 0.0], "commit": [0.0, 0.0]}
    try:
        with engine.begin() as conn:
            for name in without:
                conn.execute(text(f"DROP INDEX {name}"))
        started = time.perf_counter()
        # As the worker and the replay run it (it does nothing on PostgreSQL).
        with WalCheckpointer(url if checkpointer else "postgresql://"):
            reserved = _insert(session_factory(engine), rng, total, batch, spent, fan)
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
        drop_tables(url)
    return {
        "database": "postgresql" if url.startswith("postgres") else "sqlite",
        "posts": total,
        "reservations": reserved,
        "batch": batch,
        "buyers": buyers,
        "without": without,
        "checkpointer": checkpointer,
        "wal_autocheckpoint": database.WAL_AUTOCHECKPOINT_PAGES,
        "elapsed_s": round(elapsed, 2),
        "wall_s": {name: round(w, 2) for name, (w, _) in spent.items()},
        "cpu_s": {name: round(c, 2) for name, (_, c) in spent.items()},
        "us_per_row": {
            "posts": round(spent["posts"][0] / total * 1e6, 1),
            "reservations": round(spent["reservations"][0] / max(reserved, 1) * 1e6, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--posts", type=int, default=1_300_000)
    parser.add_argument("--batch", type=int, default=DEFAULT_MAX_POSTS, help="posts per batch")
    parser.add_argument(
        "--buyers",
        choices=("storm", "random"),
        default="storm",
        help="buyers in the storm's order (numbered as they first post), or drawn at random",
    )
    parser.add_argument("--without", nargs="*", default=[], help="indexes to drop first")
    parser.add_argument(
        "--no-checkpointer",
        action="store_true",
        help="SQLite: checkpoint from the committing connection only, without the thread",
    )
    parser.add_argument(
        "--wal-autocheckpoint",
        type=int,
        default=database.WAL_AUTOCHECKPOINT_PAGES,
        help="SQLite: pages in the log before a commit checkpoints it",
    )
    args = parser.parse_args()
    database.WAL_AUTOCHECKPOINT_PAGES = args.wal_autocheckpoint  # read at each connection
    with tempfile.TemporaryDirectory() as scratch:
        url = args.db or f"sqlite:///{Path(scratch) / 'floor.db'}"
        result = run(
            url,
            args.posts,
            args.batch,
            args.without,
            buyers=args.buyers,
            checkpointer=not args.no_checkpointer,
        )
        sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
