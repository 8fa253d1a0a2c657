"""Outbox throughput: queueing replies in the pipeline's transaction, and claiming them to send.

    .venv/bin/python bench/outbox_throughput.py [--db URL] [--batches 20] [--batch 500]
        [--senders 4] [--rows]

1. `queue`: batches of engine outcomes (a flash-sale mix: half confirmed, a quarter waitlisted,
   a fifth payment-needed, the rest rejected) are queued, one transaction per batch, as the
   pipeline does it: a bundle per priority (`--rows`: one outbox row per reply, as batches
   under `BUNDLE_MIN` are). Reported per outcome in CPU time of this process.
2. Senders: `--senders` threads open the bundles, claim, "send" (a connector that answers at
   once) and record every queued message, so the figure is the database's claim/record cost,
   the ceiling the outbox adds on top of the platforms' own limits (Mastodon: 300 statuses per
   3 h).

Prints one JSON object. The default database is a fresh SQLite file in a temporary directory;
pass a PostgreSQL URL (an empty database) to measure `FOR UPDATE SKIP LOCKED` claiming.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.links import LinkSigner
from bot.outbox import BUNDLE_MIN, Composer, Sender, queue
from bot.schema import all_metadata
from config.database import create_engine, session_factory
from config.loader import load_brand
from connectors.base import Connector, OutgoingMessage, Sink
from connectors.pacing import Pacer, SystemClock
from connectors.post import Signal
from orders.outcomes import Outcome

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["confirmed"] * 10 + ["waitlisted"] * 5 + ["payment_needed"] * 4 + ["rejected"]


class InstantConnector(Connector):
    platform = "mastodon"

    def __init__(self) -> None:
        self.account_key = "demo:mastodon"
        self.pacer = Pacer(SystemClock())
        self._lock = threading.Lock()
        self.count = 0

    def initialize(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def poll(self, cursor: str | None) -> tuple[list[Signal], str | None]:
        return [], cursor

    def stream(self, sink: Sink) -> None:
        pass

    def send(self, message: OutgoingMessage) -> str:
        with self._lock:
            self.count += 1
            return str(self.count)


def outcomes(batch: int, start: int, now: datetime) -> list[Outcome]:
    return [
        Outcome(
            kind=KINDS[i % len(KINDS)],  # type: ignore[arg-type]
            platform="mastodon",
            post_id=str(10_000_000 + i),
            buyer=f"mastodon:{i % 50_000}",
            handle=f"fan{i % 50_000}",
            campaign_id="demo",
            reservation_id=i + 1,
            sku="DEMO-64-BLACK",
            quantity=1,
            queue_position=i,
            amount_due=29900,
            hold_expires_at=now + timedelta(minutes=15),
            reason="over_limit",
        )
        for i in range(start, start + batch)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default=None)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--rows", action="store_true", help="queue one row per reply")
    args = parser.parse_args()
    url = args.db or f"sqlite:///{tempfile.mkdtemp()}/outbox.db"
    engine = (
        create_engine(url, pool_size=args.senders + 2) if "postgres" in url else create_engine(url)
    )
    for metadata in all_metadata():
        metadata.create_all(engine)
    factory = session_factory(engine)
    brand = load_brand(ROOT / "config" / "brands" / "demo.toml")
    signer = LinkSigner(b"benchmark-key-not-a-secret-0123")
    now = datetime.now(UTC)

    cpu, wall = time.process_time(), time.perf_counter()
    for b in range(args.batches):
        with factory.begin() as session:
            queue(
                session,
                outcomes(args.batch, b * args.batch, now),
                brand=brand,
                now=now,
                bundle_min=args.batch + 1 if args.rows else BUNDLE_MIN,
            )
    queued = args.batches * args.batch
    queue_cpu, queue_wall = time.process_time() - cpu, time.perf_counter() - wall

    connector = InstantConnector()
    composer = Composer([brand], public_url="https://shop.example", signer=signer)
    senders = [
        Sender(factory, connector, composer=composer, name=f"s{i}") for i in range(args.senders)
    ]
    threads = [threading.Thread(target=s.drain) for s in senders]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    send_wall = time.perf_counter() - wall
    engine.dispose()
    report = {
        "database": engine.dialect.name,
        "queued": queued,
        "queued_as": "rows" if args.rows else "bundles",
        "queue_outcomes_per_cpu_second": round(queued / queue_cpu),
        "queue_outcomes_per_wall_second": round(queued / queue_wall),
        "senders": args.senders,
        "sent": connector.count,
        "sent_per_wall_second": round(connector.count / send_wall),
    }
    print(json.dumps(report))  # noqa: T201


if __name__ == "__main__":
    main()
