"""The clock: one leader, each job once per slot, holds lapse, reminders and public posts."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from bot import jobs
from bot.clock import AdvisoryLock, LeaseLock, crontab_weekdays, leadership_for, schedule
from bot.jobs import JobContext, run_job
from bot.pipeline import Pipeline, Source
from bot.tables import clock_runs, outbox_messages
from config.brand import Brand
from config.database import create_engine, session_factory
from config.loader import parse_brand
from config.settings import Settings
from connectors.pacing import FakeClock
from connectors.post import Post
from orders.campaigns import load_campaigns
from orders.tables import reservations

OPEN = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SOURCE = Source("tiny", "mastodon")

TINY = """
[brand]
id = "tiny"
name = "Tiny"

[accounts.mastodon]
base_url = "http://127.0.0.1:9"
username = "tinyshop"
token_env = "TINY_TOKEN"

[[campaigns]]
id = "tiny"
name = "Tiny drop"
hashtag = "Tiny"
currency = "USD"
opens_at = 2026-06-01T12:00:00Z
closes_at = 2026-06-01T13:00:00Z
hold_minutes = 0.5
reminder_minutes = 0.25

[[campaigns.products]]
sku = "ONE"
name = "The one"
price = 1000
stock = 1

[campaigns.announcements]
open.en = "Tiny drop is open: {stock} unit."
close.en = "Tiny drop closed: {reserved} of {stock} reserved."
progress.en = "{reserved} of {stock} reserved, see {status_url}"
progress_every_minutes = 5

[[campaigns.jobs]]
id = "weekday-progress"
cron = "0 9 * * 1-5"
action = "progress_post"
"""


@pytest.fixture
def brand() -> Brand:
    return parse_brand(TINY)


@pytest.fixture
def sessions(engine: Engine, brand: Brand) -> sessionmaker[Session]:
    factory = session_factory(engine)
    with factory.begin() as session:
        load_campaigns(session, [brand], now=OPEN)
    return factory


def context(
    sessions: sessionmaker[Session], brand: Brand, clock: FakeClock, **kw: object
) -> JobContext:
    settings = Settings(PUBLIC_URL="https://shop.example")  # type: ignore[call-arg]
    return JobContext(sessions=sessions, brands=[brand], settings=settings, clock=clock, **kw)  # type: ignore[arg-type]


def fan(n: int, at: datetime) -> Post:
    return Post(
        platform="mastodon",
        post_id=str(100 + n),
        author_id=str(n),
        author_handle=f"fan{n}",
        created_at=at,
        text="@tinyshop #Tiny",
        hashtags=("tiny",),
        mentions=("tinyshop",),
        lang="en",
    )


def count(sessions: sessionmaker[Session], **where: str) -> int:
    with sessions() as session:
        query = select(func.count()).select_from(outbox_messages)
        for column, value in where.items():
            query = query.where(outbox_messages.c[column] == value)
        return int(session.scalar(query) or 0)


def test_a_lapsed_hold_expires_and_the_waitlist_moves_up(
    sessions: sessionmaker[Session], brand: Brand
) -> None:
    clock = FakeClock(OPEN + timedelta(seconds=1))
    pipeline = Pipeline(sessions, [brand], clock=clock)
    pipeline.submit(fan(1, OPEN), SOURCE)
    pipeline.submit(fan(2, OPEN + timedelta(milliseconds=5)), SOURCE)
    pipeline.drain()
    ctx = context(sessions, brand, clock, remind_seconds=1.0)

    clock.advance(20)  # 10 s before the 30 s hold lapses: the buyer is reminded, once
    assert run_job("remind", ctx=ctx) == "ran:1"
    clock.advance(1)
    assert run_job("remind", ctx=ctx) == "ran:0"
    assert count(sessions, kind="reminder") == 1

    assert run_job("expire", ctx=ctx) == "ran:0"  # not yet
    clock.advance(10)
    assert run_job("expire", ctx=ctx).startswith("ran:")
    with sessions() as session:
        states = dict(session.execute(select(reservations.c.post_id, reservations.c.state)).all())
    assert states == {"101": "expired", "102": "awaiting_payment"}
    assert count(sessions, kind="expired") == 1
    assert count(sessions, kind="promoted") == 1


def test_the_expire_job_takes_held_money_once_cancellations_are_over(engine: Engine) -> None:
    # A confirmation-step campaign only holds the buyer's credit; after cancel_until nobody
    # can cancel, so the clock takes the money (the sales account is credited) on its own.
    from bot.commands.orders_cmd import one_reply_per_kind
    from orders.audit import audit
    from orders.payments import hold_ref
    from wallet.stripe_payments import PaidSession, apply_paid_session
    from wallet.tables import accounts, transfers

    held_brand = parse_brand(
        TINY.replace(
            "hold_minutes = 0.5",
            "hold_minutes = 0.5\nconfirmation_step = true\ncancel_until = 2026-06-01T12:30:00Z",
        )
    )
    sessions = session_factory(engine)
    with sessions.begin() as session:
        load_campaigns(session, [held_brand], now=OPEN)
        paid = PaidSession("cs_1", "mastodon:1", "tiny", 1000, "USD", "pi_1", None)
        apply_paid_session(session, paid, at=OPEN, via="webhook")
    clock = FakeClock(OPEN + timedelta(seconds=1))
    pipeline = Pipeline(sessions, [held_brand], clock=clock)
    pipeline.submit(fan(1, OPEN), SOURCE)
    pipeline.drain()
    ctx = context(sessions, held_brand, clock)

    def books() -> tuple[str | None, str | None, tuple[int, int]]:
        with sessions() as session:
            rid, payment = session.execute(select(reservations.c.id, reservations.c.payment)).one()
            state = session.scalar(
                select(transfers.c.state).where(transfers.c.ref == hold_ref(rid))
            )
            a = accounts.c
            sales = session.execute(
                select(a.credits_posted, a.credits_pending).where(
                    a.kind == "sales", a.owner == "tiny"
                )
            ).one()
            return payment, state, (sales[0], sales[1])

    assert books() == ("held", "pending", (0, 1000))
    clock.advance(20 * 60)  # 12:20, cancellations still open: the money stays held
    assert run_job("expire", ctx=ctx) == "ran:0"
    assert books() == ("held", "pending", (0, 1000))

    clock.advance(11 * 60)  # 12:31: past cancel_until
    assert run_job("expire", ctx=ctx) == "ran:0"  # the buyer was told "confirmed" already
    assert books() == ("posted", "posted", (1000, 0))
    clock.advance(ctx.expire_seconds)
    assert run_job("expire", ctx=ctx) == "ran:0"  # captured once
    assert books() == ("posted", "posted", (1000, 0))
    with sessions() as session:
        assert audit(session, extra=(one_reply_per_kind,)) == []
    assert count(sessions, kind="confirmed") == 1


@pytest.mark.parametrize("leaders", ["one leader", "both think they lead"])
def test_two_clocks_never_run_the_same_job_twice(
    sessions: sessionmaker[Session], brand: Brand, db_url: str, leaders: str
) -> None:
    clock = FakeClock(OPEN)
    engines = [create_engine(db_url), create_engine(db_url)]
    calls: list[str] = []
    real_expire = jobs.expire

    def counting(ctx: JobContext, session: Session, now: datetime) -> int:
        calls.append(ctx.holder)
        return real_expire(ctx, session, now)

    try:
        ctxs = []
        for i, eng in enumerate(engines):
            lead = leadership_for(eng, clock=clock) if leaders == "one leader" else None
            ctxs.append(
                context(session_factory(eng), brand, clock, leadership=lead, holder=f"clock{i}")
            )
        original = jobs._ACTIONS["expire"]
        jobs._ACTIONS["expire"] = lambda c, s, n, p: counting(c, s, n)
        results: list[str] = []
        for _slot in range(8):
            barrier = threading.Barrier(2)

            def go(ctx: JobContext, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                results.append(run_job("expire", ctx=ctx) + "|" + ctx.holder)
                results.append(run_job("announce:tiny:open", ctx=ctx) + "|" + ctx.holder)

            threads = [threading.Thread(target=go, args=(c,)) for c in ctxs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            clock.advance(ctxs[0].expire_seconds)
    finally:
        jobs._ACTIONS["expire"] = original
        for ctx in ctxs:
            if ctx.leadership is not None:
                ctx.leadership.release()
        for eng in engines:
            eng.dispose()

    assert len(calls) == 8  # one run per slot, never two
    assert count(sessions, kind="announcement") == 1
    with sessions() as session:
        slots = session.execute(
            select(clock_runs.c.slot, func.count())
            .where(clock_runs.c.job_id == "expire")
            .group_by(clock_runs.c.slot)
        ).all()
    assert len(slots) == 8 and all(n == 1 for _, n in slots)
    if leaders == "one leader":
        assert len(set(calls)) == 1  # the standby never acted
        assert sum(r.startswith("standby") for r in results) == 16


def test_a_standby_takes_over_when_the_leaders_lease_lapses(engine: Engine) -> None:
    clock = FakeClock(OPEN)
    first = LeaseLock(engine, holder="a", clock=clock, seconds=30)
    second = LeaseLock(engine, holder="b", clock=clock, seconds=30)
    assert first.acquire() and not second.acquire()
    clock.advance(20)
    assert first.acquire()  # renewed
    clock.advance(20)
    assert not second.acquire()
    clock.advance(11)  # the leader went quiet for more than a lease
    assert second.acquire() and not first.acquire()
    second.release()
    assert first.acquire()


def test_progress_posts_never_pile_up_and_announce_only_while_open(
    sessions: sessionmaker[Session], brand: Brand
) -> None:
    clock = FakeClock(OPEN - timedelta(minutes=1))
    ctx = context(sessions, brand, clock)
    assert run_job("announce:tiny:open", ctx=ctx) == "ran:0"  # early: not open yet
    clock.advance(61)
    assert run_job("progress:tiny", ctx=ctx) == "ran:1"
    clock.advance(300)
    assert run_job("progress:tiny", ctx=ctx) == "ran:0"  # the first is still queued: refreshed
    with sessions() as session:
        texts = list(session.scalars(select(outbox_messages.c.text)))
    assert texts == ["0 of 1 reserved, see https://shop.example/c/tiny"]
    clock.advance(3600)
    assert run_job("announce:tiny:close", ctx=ctx) == "ran:1"
    assert count(sessions, kind="announcement", visibility="public") == 1


def test_the_schedule_coalesces_and_chooses_misfire_grace_per_job(
    sessions: sessionmaker[Session], brand: Brand
) -> None:
    ctx = context(sessions, brand, FakeClock(OPEN))
    scheduler = BackgroundScheduler(timezone=UTC)
    schedule(scheduler, ctx)
    found = {job.id: job for job in scheduler.get_jobs()}
    assert set(found) == {
        "expire",
        "remind",
        "announce:tiny:open",
        "announce:tiny:close",
        "progress:tiny",
        "cron:tiny:weekday-progress",
    }
    assert all(job.coalesce and job.max_instances == 1 for job in found.values())
    assert found["expire"].misfire_grace_time is None
    assert found["announce:tiny:open"].misfire_grace_time == 3600
    assert found["progress:tiny"].misfire_grace_time == 30
    monday_nine = found["cron:tiny:weekday-progress"].trigger.get_next_fire_time(
        None,
        datetime(2026, 6, 6, 0, 0, tzinfo=UTC),  # a Saturday
    )
    assert monday_nine == datetime(2026, 6, 8, 9, 0, tzinfo=UTC)


def test_crontab_weekdays_mean_what_crontab_means() -> None:
    assert crontab_weekdays("0 9 * * 1-5") == "0 9 * * mon-fri"
    assert crontab_weekdays("30 18 * * 0,6") == "30 18 * * sun,sat"
    assert crontab_weekdays("0 0 * * 7") == "0 0 * * sun"
    assert crontab_weekdays("*/5 * * * *") == "*/5 * * * *"
    # Ranges from Sunday and steps are crontab's days, written out.
    every_day = "sun,mon,tue,wed,thu,fri,sat"
    assert crontab_weekdays("0 9 * * 0-6") == f"0 9 * * {every_day}"
    assert crontab_weekdays("0 9 * * 0-7") == f"0 9 * * {every_day}"
    assert crontab_weekdays("0 9 * * */2") == "0 9 * * sun,tue,thu,sat"
    assert crontab_weekdays("0 9 * * 1-5/2") == "0 9 * * mon,wed,fri"
    saturday = datetime(2026, 6, 6, 10, 0, tzinfo=UTC)
    sunday_nine = datetime(2026, 6, 7, 9, 0, tzinfo=UTC)
    for line in ("0 9 * * 0-6", "0 9 * * */2", "0 9 * * 0-3"):
        trigger = CronTrigger.from_crontab(crontab_weekdays(line), timezone=UTC)
        assert trigger.get_next_fire_time(None, saturday) == sunday_nine, line
    with pytest.raises(ValueError):
        CronTrigger.from_crontab(crontab_weekdays("0 9 * * 1-0"), timezone=UTC)


def test_on_postgresql_leadership_dies_with_the_leaders_connection(pg_url: str) -> None:
    engines = [create_engine(pg_url) for _ in range(3)]
    first = AdvisoryLock(engines[0], holder="a")
    second = AdvisoryLock(engines[1], holder="b")
    try:
        assert first.acquire() and first.acquire()  # holding it is idempotent
        assert not second.acquire()
        assert first._conn is not None
        pid = first._conn.execute(select(func.pg_backend_pid())).scalar_one()
        first._conn.commit()
        with engines[2].connect() as admin:  # the leader's connection dies (a crash, a network cut)
            admin.execute(select(func.pg_terminate_backend(pid)))
            gone = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
            for _ in range(500):  # termination is asynchronous: wait for the backend to exit
                if admin.execute(gone, {"pid": pid}).scalar_one() == 0:
                    break
                admin.rollback()
                threading.Event().wait(0.01)
        assert second.acquire()
        assert not first.acquire()  # it notices, and stands by
        second.release()
        assert first.acquire()  # a clean step-down hands over at once
    finally:
        first.release()
        second.release()
        for eng in engines:
            eng.dispose()
