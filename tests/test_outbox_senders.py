"""Senders: every queued reply goes out exactly once, most urgent first, within the limits.

The rate-limit and error tests run the real Mastodon connector against mastodon-mock over HTTP;
faults come from the mock's own `/api/v1/_mock/faults`. Clocks are fake: a sender that "waits
for the reset" moves its clock forward instead of sleeping.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from fake_connectors import SendOnlyConnector
from mastodon_mock.config import (
    DatabaseConfig,
    MastodonMockConfig,
    SeedAccount,
    SeedConfig,
    StreamingConfig,
)
from mastodon_mock.testing import MockServer
from sqlalchemy import select
from sqlalchemy.engine import Engine

from bot.links import LinkSigner
from bot.outbox import Composer, Sender, queue
from bot.tables import outbox_messages
from config.database import create_engine, session_factory
from config.loader import load_brand
from connectors.base import OutgoingMessage, Transient
from connectors.mastodon import MastodonConnector
from connectors.pacing import FakeClock
from orders.outcomes import Outcome

ROOT = Path(__file__).resolve().parent.parent
BRAND = load_brand(ROOT / "config" / "brands" / "demo.toml")
SIGNER = LinkSigner(b"0123456789abcdef0123456789abcdef")
COMPOSER = Composer([BRAND], public_url="https://shop.example", signer=SIGNER)
BOT_TOKEN = "shop_token"  # a mock server's fixture token, not a credential
FANS = 20


@pytest.fixture
def server() -> Iterator[MockServer]:
    accounts = [SeedAccount(username="shop", access_token=BOT_TOKEN)]
    accounts += [SeedAccount(username=f"fan{i:02d}") for i in range(FANS)]
    config = MastodonMockConfig(
        database=DatabaseConfig(path=":memory:"),
        seed=SeedConfig(accounts=accounts),
        streaming=StreamingConfig(heartbeat_seconds=0.2),
    )
    with MockServer(config=config) as mock:
        yield mock


def queue_replies(engine: Engine, clock: FakeClock, count: int, platform: str = "mastodon") -> None:
    kinds = ["confirmed", "waitlisted", "payment_needed", "help", "rejected"]
    outcomes = [
        Outcome(
            kind=kinds[i % len(kinds)],  # type: ignore[arg-type]
            platform=platform,
            post_id=str(5000 + i),
            buyer=f"{platform}:{i % FANS}",
            handle=f"fan{i % FANS:02d}",
            campaign_id="demo",
            reservation_id=i + 1,
            sku="DEMO-64-BLACK",
            quantity=1,
            queue_position=i,
            amount_due=29900,
            hold_expires_at=clock.now() + timedelta(minutes=15),
        )
        for i in range(count)
    ]
    with session_factory(engine).begin() as session:
        queue(
            session,
            outcomes,
            brand=BRAND,
            now=clock.now(),
        )


def rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(outbox_messages))]


def bot_statuses(server: MockServer) -> list[dict[str, object]]:
    auth = {"Authorization": f"Bearer {BOT_TOKEN}"}
    me = requests.get(
        f"{server.base_url}/api/v1/accounts/verify_credentials", headers=auth, timeout=5
    ).json()
    found: list[dict[str, object]] = []
    url: str | None = f"{server.base_url}/api/v1/accounts/{me['id']}/statuses?limit=40"
    while url:
        page = requests.get(url, headers=auth, timeout=5)
        found += page.json()
        url = page.links.get("next", {}).get("url") if page.json() else None
    return found


def fault(server: MockServer, *, count: int, **effect: object) -> None:
    """Register a fault on the bot's status posts through the mock's control plane."""
    rule = {
        "match": {"methods": ["POST"], "path": "/api/v1/statuses"},
        "effect": effect,
        "count": count,
    }
    response = requests.post(f"{server.base_url}/api/v1/_mock/faults", json=rule, timeout=5)
    response.raise_for_status()


def mastodon(server: MockServer, clock: FakeClock) -> MastodonConnector:
    c = MastodonConnector(
        account_key="demo:mastodon", base_url=server.base_url, access_token=BOT_TOKEN, clock=clock
    )
    c.initialize()
    return c


def test_a_429_makes_the_sender_wait_for_the_reset_and_nothing_is_sent_twice(
    server: MockServer, engine: Engine
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    queue_replies(engine, clock, 24)
    reset = clock.now() + timedelta(minutes=5)
    fault(
        server,
        type="ratelimit",
        headers={
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset.isoformat().replace("+00:00", "Z"),
        },
        count=2,
    )
    sender = Sender(
        session_factory(engine), mastodon(server, clock), composer=COMPOSER, clock=clock
    )
    results = sender.drain()

    assert Counter(r.result for r in results) == {"sent": 24, "rate_limited": 2}
    assert clock.now() >= reset, "the sender waited for the window to reset"
    assert all(s < 301 for s in clock.sleeps)
    messages = rows(engine)
    assert {m["state"] for m in messages} == {"sent"}
    assert all(m["attempts"] == 1 for m in messages)  # a 429 is not the message's fault
    posted = bot_statuses(server)
    assert len(posted) == 24
    assert sorted(str(s["id"]) for s in posted) == sorted(str(m["platform_id"]) for m in messages)
    # The buyer's links (payment and status page) went by direct message only.
    direct = {str(s["id"]) for s in posted if s["visibility"] == "direct"}
    for m in messages:
        personal = "/topup/" in str(m["text"]) or "/me/" in str(m["text"])
        assert personal == (m["platform_id"] in direct)
    assert 0 < len(direct) < len(posted)  # a rejection carries no link and stays a reply


def test_most_urgent_first_then_retry_transient_and_fail_rejected(
    server: MockServer, engine: Engine
) -> None:
    clock = FakeClock(datetime.now(UTC))
    queue_replies(engine, clock, 8)
    fault(server, type="status", status=503, count=1)
    sender = Sender(
        session_factory(engine), mastodon(server, clock), composer=COMPOSER, clock=clock
    )

    first = sender.send_one()
    assert first is not None and first.result == "retry"
    by_id = {m["id"]: m for m in rows(engine)}
    assert by_id[first.message_id]["kind"] == "payment_needed"  # the most urgent went first
    assert by_id[first.message_id]["due_at"] > clock.now()  # backoff

    # A localized 422 is permanent: the message fails with the reason, the rest go out.
    fault(
        server,
        type="status",
        status=422,
        body={"error": "Validation failed: Text can't be blank"},
        count=1,
    )
    results = sender.drain()
    assert Counter(r.result for r in results) == {"failed": 1, "sent": 6}
    clock.advance(600)
    assert [r.result for r in sender.drain()] == ["sent"]  # the retried one, after its backoff
    failed = [m for m in rows(engine) if m["state"] == "failed"]
    assert len(failed) == 1 and "422" in str(failed[0]["error"])
    assert len(bot_statuses(server)) == 7


class RecordingConnector(SendOnlyConnector):
    """Counts sends per idempotency key; fails now and then, as a flaky network would."""

    platform = "x"

    def __init__(self, clock: FakeClock) -> None:
        super().__init__("demo:x", clock)
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._calls = 0

    def send(self, message: OutgoingMessage) -> str:
        with self._lock:
            self._calls += 1
            if self._calls % 7 == 0:
                raise Transient("connection reset")
            self.sent[message.idempotency_key] += 1
            return f"tweet-{self._calls}"


def test_several_senders_on_postgresql_never_send_a_message_twice(pg_url: str) -> None:
    engine = create_engine(pg_url, pool_size=10)
    clock = FakeClock(datetime.now(UTC))
    queue_replies(engine, clock, 400, platform="x")
    connector = RecordingConnector(clock)
    factory = session_factory(engine)
    senders = [
        Sender(factory, connector, composer=COMPOSER, clock=clock, name=f"worker-{i}")
        for i in range(6)
    ]
    errors: list[BaseException] = []

    def work(sender: Sender, barrier: threading.Barrier) -> None:
        try:
            barrier.wait()
            sender.drain()
        except BaseException as exc:
            errors.append(exc)

    # Rounds: all senders race for the queue; between rounds the clock moves past the backoff
    # of the messages that hit a transient error (never during one: a lapsed lease means the
    # sender died, and its message is claimed again).
    for _ in range(4):
        barrier = threading.Barrier(len(senders))
        threads = [threading.Thread(target=work, args=(s, barrier)) for s in senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        clock.advance(60)
    assert not errors
    messages = rows(engine)
    engine.dispose()
    assert len(connector.sent) == 400
    assert set(connector.sent.values()) == {1}
    assert {m["state"] for m in messages} == {"sent"}
    assert len({m["claimed_by"] for m in messages}) > 1, "the work was actually shared"
    # Replies are written as they are claimed, by six senders at once: still, no fan ever gets
    # the same text twice (X refuses a duplicate).
    written = [(m["buyer"], m["text_hash"]) for m in messages]
    assert len(set(written)) == len(written) == 400


def test_the_worker_loop_sends_everything_then_naps_on_its_clock(engine: Engine) -> None:
    stop = threading.Event()

    class NapWatch(FakeClock):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            if seconds == 5.0 and self.sleeps.count(5.0) >= 3:  # idle: nothing is due
                stop.set()

    clock = NapWatch(datetime.now(UTC))
    queue_replies(engine, clock, 12, platform="x")
    connector = RecordingConnector(clock)
    Sender(session_factory(engine), connector, composer=COMPOSER, clock=clock).run(
        stop, idle_seconds=5.0
    )
    # One send hit a flaky network: it was retried after its backoff, during a nap.
    assert sum(connector.sent.values()) == 12
    assert {m["state"] for m in rows(engine)} == {"sent"}
    assert max(m["attempts"] for m in rows(engine)) == 2


def test_the_sender_paces_itself_by_the_last_rate_limit_headers(engine: Engine) -> None:
    from connectors.pacing import x_window

    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    queue_replies(engine, clock, 3, platform="x")
    connector = RecordingConnector(clock)
    reset = int(clock.now().timestamp()) + 100
    # The last reply left 4 posts in a window that resets in 100 s: one every 25 s.
    connector.pacer.record(
        x_window(
            {
                "x-rate-limit-limit": "200",
                "x-rate-limit-remaining": "4",
                "x-rate-limit-reset": str(reset),
            }
        )
    )
    sender = Sender(session_factory(engine), connector, composer=COMPOSER, clock=clock)
    sender.send_one()
    assert clock.sleeps == [pytest.approx(25.0)]


def test_a_message_whose_sender_died_mid_send_goes_out_once_its_lease_lapses(
    engine: Engine,
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    queue_replies(engine, clock, 2, platform="x")
    connector = RecordingConnector(clock)
    factory = session_factory(engine)
    crashed = Sender(factory, connector, composer=COMPOSER, clock=clock, name="crashed")
    taken = crashed._claim()  # claimed, then the process died before sending
    assert taken is not None
    survivor = Sender(factory, connector, composer=COMPOSER, clock=clock, name="survivor")
    assert len(survivor.drain()) == 1  # only the other message: the claimed one is leased
    clock.advance(6 * 60)  # past the five-minute lease
    (again,) = survivor.drain()
    assert again.message_id == taken.id and again.result == "sent"
    assert sum(connector.sent.values()) == 2
