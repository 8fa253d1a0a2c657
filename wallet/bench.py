"""Measure the ledger's hot path: ``python -m wallet.bench --db URL [--holds N] [--buyers M]``.

Point it at a scratch database: it creates the wallet tables if missing and writes one run's
worth of top-ups and purchases under a fresh namespace. It tops up M buyers one Stripe payment
at a time (the webhook path), then holds N purchases in engine-sized batches (half posted at
once, half left pending), posts half of the pending ones and voids the rest, audits the ledger,
and prints the timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from config.database import create_engine
from wallet import ledger
from wallet.tables import metadata


def run(url: str, *, holds: int, buyers: int, batch: int) -> dict[str, object]:
    engine = create_engine(url)
    metadata.create_all(engine)
    ns = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    result: dict[str, object] = {"db": engine.dialect.name, "holds": holds, "buyers": buyers}
    with Session(engine) as session:
        started = time.perf_counter()
        for i in range(buyers):
            ledger.credit_topup(
                session,
                buyer=f"bench:{ns}{i}",
                amount=holds // buyers * 100 + 100,
                currency="CNY",
                stripe_ref=f"{ns}:cs{i}",
                at=now,
            )
            if i % 500 == 499:
                session.commit()
        session.commit()
        result["topups_per_s"] = round(buyers / (time.perf_counter() - started))

        pending: list[str] = []
        started = time.perf_counter()
        for start in range(0, holds, batch):
            post = (start // batch) % 2 == 0
            requests = [
                ledger.HoldRequest(
                    f"bench:{ns}{n % buyers}",
                    f"bench-{ns}",
                    100,
                    "CNY",
                    f"{ns}:r{n}",
                    None if post else now + timedelta(minutes=30),
                )
                for n in range(start, min(holds, start + batch))
            ]
            held = ledger.hold_many(session, requests, post=post, at=now)
            session.commit()
            if not post:
                pending.extend(held)
        elapsed = time.perf_counter() - started
        result["hold_many_s"] = round(elapsed, 2)
        result["holds_per_s"] = round(holds / elapsed)

        started = time.perf_counter()
        half = len(pending) // 2
        ledger.post_many(session, pending[:half], at=now)
        ledger.void_many(session, pending[half:], at=now)
        session.commit()
        result["post_void_s"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        problems = ledger.audit(session)
        result["audit_s"] = round(time.perf_counter() - started, 2)
        result["audit_problems"] = problems
    engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a scratch database URL")
    parser.add_argument("--holds", type=int, default=50_000)
    parser.add_argument("--buyers", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=5_000, help="holds per hold_many call")
    args = parser.parse_args()
    report = run(args.db, holds=args.holds, buyers=args.buyers, batch=args.batch)
    print(json.dumps(report, indent=2))  # noqa: T201 (a command-line report)


if __name__ == "__main__":
    main()
