"""`flashtag clock`: the one process that acts on time.

An APScheduler 3.11 `BlockingScheduler` runs the job plan of `bot.jobs` (announcements, hold
reminders, hold expiry and waitlist promotion, Stripe reconciliation, progress posts and the
brands' own cron jobs). Any number of clock processes may run; only the leader acts:

- on PostgreSQL the leader holds a session-level advisory lock (`pg_try_advisory_lock`) on a
  connection it keeps open, so the lock dies with the process or its connection;
- on SQLite (and as a fallback anywhere) the leader holds a lease row in `clock_leases`,
  renewed every few seconds and taken over only once it has expired.

A standby clock runs the same schedule and skips every job until it wins leadership. Behind the
leadership, every job run claims a row in `clock_runs` keyed by (job, run slot), so even two
clocks that both believe they lead (a lease that expired mid-job, a network partition) never run
the same job for the same slot twice. See docs/operations.md for the scheduling choices.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.tables import clock_leases
from config.brand import Brand, crontab_weekdays
from config.settings import Settings
from connectors.pacing import Clock, SystemClock

if TYPE_CHECKING:
    from bot.jobs import JobContext, JobSpec

log = logging.getLogger(__name__)

# An arbitrary, fixed 64-bit key: "flashtag clock" for pg_try_advisory_lock.
ADVISORY_KEY = 0x666C_6173_6874_6167
LEASE_NAME = "clock"
LEASE_SECONDS = 30.0


def clock_identity() -> str:
    """A name for this clock process, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leadership(Protocol):
    """Who may act. `acquire()` is called often (every job run and a heartbeat)."""

    holder: str

    def acquire(self) -> bool:
        """Try to be (or stay) the leader; True when this clock leads now."""
        ...

    def release(self) -> None:
        """Step down (on shutdown), so a standby takes over without waiting."""
        ...


class AdvisoryLock:
    """PostgreSQL: a session-level advisory lock held on a dedicated connection."""

    def __init__(self, engine: Engine, *, holder: str | None = None, key: int = ADVISORY_KEY):
        self._engine = engine
        self._key = key
        self._conn: Connection | None = None
        self._mutex = threading.Lock()
        self.holder = holder or clock_identity()

    def acquire(self) -> bool:
        with self._mutex:
            if self._conn is not None:
                try:
                    self._conn.execute(select(1))
                    self._conn.commit()
                    return True
                except DBAPIError:
                    log.warning("clock lost its database connection; leadership lost")
                    self._drop()
            conn = self._engine.connect()
            try:
                got = bool(conn.execute(select(func.pg_try_advisory_lock(self._key))).scalar())
                conn.commit()
            except DBAPIError:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._conn = conn
            log.info("clock %s is the leader (advisory lock)", self.holder)
            return True

    def release(self) -> None:
        with self._mutex:
            if self._conn is None:
                return
            try:
                self._conn.execute(select(func.pg_advisory_unlock(self._key)))
                self._conn.commit()
            except DBAPIError:
                pass
            self._drop()

    def _drop(self) -> None:
        # Invalidate rather than return it to the pool: a pooled connection would keep its
        # session, and with it any advisory lock it still holds.
        if self._conn is not None:
            with contextlib.suppress(DBAPIError):
                self._conn.invalidate()
                self._conn.close()
        self._conn = None


class LeaseLock:
    """A lease row any database can hold: taken when free or expired, renewed by its holder."""

    def __init__(
        self,
        engine: Engine,
        *,
        holder: str | None = None,
        clock: Clock | None = None,
        seconds: float = LEASE_SECONDS,
        name: str = LEASE_NAME,
    ) -> None:
        self._engine = engine
        self._clock: Clock = clock or SystemClock()
        self._seconds = seconds
        self._name = name
        self.holder = holder or clock_identity()

    def acquire(self) -> bool:
        now = self._clock.now()
        until = now + timedelta(seconds=self._seconds)
        table = clock_leases
        with self._engine.begin() as conn:
            taken = conn.execute(
                update(table)
                .where(table.c.name == self._name)
                .where((table.c.holder == self.holder) | (table.c.expires_at <= now))
                .values(holder=self.holder, expires_at=until, renewed_at=now)
            ).rowcount
            if taken:
                return True
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    table.insert().values(
                        name=self._name, holder=self.holder, expires_at=until, renewed_at=now
                    )
                )
        except IntegrityError:
            return False
        log.info("clock %s is the leader (lease)", self.holder)
        return True

    def release(self) -> None:
        now = self._clock.now()
        with self._engine.begin() as conn:
            conn.execute(
                update(clock_leases)
                .where(clock_leases.c.name == self._name)
                .where(clock_leases.c.holder == self.holder)
                .values(expires_at=now)
            )


def leadership_for(engine: Engine, *, clock: Clock | None = None) -> Leadership:
    """The advisory lock on PostgreSQL, the lease row elsewhere."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine)
    return LeaseLock(engine, clock=clock)


def utcnow(clock: Clock | None = None) -> datetime:
    return (clock or SystemClock()).now()


# -- the scheduler ---------------------------------------------------------------------------


def _trigger(spec: JobSpec) -> BaseTrigger:
    if spec.trigger == "date":
        assert spec.run_at is not None
        return DateTrigger(run_date=spec.run_at, timezone=UTC)
    if spec.trigger == "interval":
        assert spec.period_seconds is not None
        return IntervalTrigger(
            seconds=spec.period_seconds, start_date=spec.start, end_date=spec.end, timezone=UTC
        )
    assert spec.cron is not None
    return CronTrigger.from_crontab(crontab_weekdays(spec.cron), timezone=ZoneInfo(spec.timezone))


ANNOUNCEMENT_GRACE_SECONDS = 3600


def schedule(scheduler: BaseScheduler, ctx: JobContext) -> list[JobSpec]:
    """Add every job of `bot.jobs.plan(ctx)` to `scheduler` (see docs/operations.md).

    All jobs coalesce (a backlog of missed runs becomes one run: each job catches up on
    everything in one go) and run one instance at a time. Misfire grace is per job: hold expiry,
    reminders and reconciliation run however late (`None`), since what they owe does not go
    away; an announcement more than an hour late is skipped, a progress post 30 s late is stale.
    """
    from bot.jobs import plan

    specs = plan(ctx)
    for spec in specs:
        grace = spec.misfire_grace_seconds
        if spec.trigger == "date":
            grace = ANNOUNCEMENT_GRACE_SECONDS
        scheduler.add_job(
            "bot.jobs:run_job",
            trigger=_trigger(spec),
            args=[spec.id],
            id=spec.id,
            name=spec.id,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=grace,
            replace_existing=True,
        )
    if ctx.leadership is not None:
        scheduler.add_job(
            "bot.clock:heartbeat",
            trigger=IntervalTrigger(seconds=LEASE_SECONDS / 3, timezone=UTC),
            id="leadership",
            name="leadership",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
            replace_existing=True,
        )
    return specs


def heartbeat() -> None:
    """Keep (or try to take) leadership between job runs."""
    from bot import jobs

    leadership = jobs.context().leadership
    if leadership is not None:
        try:
            leadership.acquire()
        except DBAPIError:
            log.warning("leadership heartbeat failed", exc_info=True)


def build_context(
    sessions: sessionmaker[Session],
    engine: Engine,
    brands: list[Brand],
    settings: Settings,
    *,
    clock: Clock | None = None,
    expire_seconds: float = 5.0,
    remind_seconds: float = 15.0,
) -> JobContext:
    """The job context of a clock process, with leadership for its database."""
    clock = clock or SystemClock()
    leadership = leadership_for(engine, clock=clock)
    stripe_client = None
    if settings.stripe_secret_key is not None and settings.stripe_secret_key.get_secret_value():
        from wallet.stripe_payments import make_client

        stripe_client = make_client(settings.stripe_secret_key.get_secret_value())
    from bot.jobs import JobContext

    return JobContext(
        sessions=sessions,
        brands=brands,
        settings=settings,
        clock=clock,
        leadership=leadership,
        holder=leadership.holder,
        stripe_client=stripe_client,
        expire_seconds=expire_seconds,
        remind_seconds=remind_seconds,
    )


def run_blocking(ctx: JobContext) -> None:
    """`flashtag clock`: schedule the plan and block until SIGTERM/SIGINT; then step down."""
    from bot import jobs

    jobs.configure(ctx)
    scheduler = BlockingScheduler(timezone=UTC)
    specs = schedule(scheduler, ctx)
    log.info("clock %s scheduled %d job(s)", ctx.holder, len(specs))

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: the clock stops", signum)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        scheduler.start()
    finally:
        if ctx.leadership is not None:
            ctx.leadership.release()


def start_background(ctx: JobContext) -> BackgroundScheduler:
    """The same schedule in a background thread (`flashtag run` and the demo)."""
    from bot import jobs

    jobs.configure(ctx)
    scheduler = BackgroundScheduler(timezone=UTC)
    schedule(scheduler, ctx)
    scheduler.start()
    return scheduler
