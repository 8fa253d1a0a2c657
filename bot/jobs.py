"""The clock's jobs: module-level functions, each one transaction, safe to run twice.

`plan(ctx)` turns the brand files into the job list the clock schedules (`bot.clock`):

- `announce:<campaign>:open` / `:close`: once, at the campaign's open and close, a public post
  from the brand's announcement templates;
- `expire`: every `expire_seconds`, `orders.engine.expire_holds` (lapse holds, promote the
  waitlist), `orders.engine.capture_held` for each confirmation-step campaign whose
  `cancel_until` (else `closes_at`) has passed, and the replies;
- `remind`: every `remind_seconds`, a reminder to each buyer whose hold lapses within the
  campaign's `reminder_minutes`;
- `reconcile`: every `reconcile_minutes`, `bot.jobs_payments.reconcile_payments` (when Stripe is
  configured);
- `progress:<campaign>`: every `progress_every_minutes` while the campaign is open, a public
  "41,203 of 50,000 reserved" post;
- `cron:<campaign>:<id>`: the brand's own crontab lines, each running a built-in action.

Every run goes through `run_job`, which first asks the clock's `Leadership` (a standby clock does
nothing), then claims the run's slot in `clock_runs` (job id + the time slot the run belongs to)
in the same transaction as the job's own writes. Two clocks, a restarted clock, or a slow run
overlapping the next one therefore never run the same job for the same slot twice. Tests call
the job functions directly with a `JobContext` and a time; nothing here sleeps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot import outbox
from bot.clock import Leadership
from bot.replies import text_hash
from bot.tables import clock_runs, outbox_messages
from config.brand import Brand, Campaign, CronJob
from config.settings import Settings
from connectors.pacing import Clock, SystemClock
from orders import engine
from orders.outcomes import Outcome
from orders.tables import campaigns, products, reservations

log = logging.getLogger(__name__)

Action = Literal[
    "announce_open", "announce_close", "expire", "remind", "reconcile", "progress", "cron"
]


@dataclass
class JobContext:
    """What every job needs: the database, the brands, settings, time and who leads."""

    sessions: sessionmaker[Session]
    brands: Sequence[Brand]
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    leadership: Leadership | None = None
    holder: str = "clock"
    stripe_client: Any = None  # stripe.StripeClient, when STRIPE_SECRET_KEY is set
    expire_seconds: float = 5.0
    remind_seconds: float = 15.0
    reconcile_minutes: float = 10.0

    def brand_of(self, campaign_id: str) -> tuple[Brand, Campaign]:
        for brand in self.brands:
            for campaign in brand.campaigns:
                if campaign.id == campaign_id:
                    return brand, campaign
        raise KeyError(campaign_id)


_context: JobContext | None = None


def configure(ctx: JobContext) -> None:
    """Set the context the scheduled (module-level) job functions run with."""
    global _context
    _context = ctx


def context() -> JobContext:
    if _context is None:
        raise RuntimeError("bot.jobs.configure() was not called")
    return _context


# -- slots and claims ------------------------------------------------------------------------


def slot_for(period_seconds: float | None, now: datetime) -> str:
    """The run slot `now` falls in: `once` for one-off jobs, else the period's index."""
    if period_seconds is None:
        return "once"
    return str(math.floor(now.timestamp() / period_seconds))


def claim(session: Session, job_id: str, slot: str, *, holder: str, now: datetime) -> bool:
    """Record that `job_id` runs for `slot`; False if some clock already did (or does)."""
    try:
        with session.begin_nested():
            session.execute(
                clock_runs.insert().values(job_id=job_id, slot=slot, holder=holder, started_at=now)
            )
    except IntegrityError:
        return False
    return True


# -- queueing helpers ------------------------------------------------------------------------


def queue_outcomes(
    session: Session, ctx: JobContext, outcomes: Sequence[Outcome], *, now: datetime
) -> int:
    """Queue replies for outcomes, brand by brand."""
    by_brand: dict[str, tuple[Brand, list[Outcome]]] = {}
    for outcome in outcomes:
        try:
            brand, _ = ctx.brand_of(outcome.campaign_id)
        except KeyError:  # a campaign whose brand file this clock no longer loads
            log.error("no brand file for campaign %s: reply not queued", outcome.campaign_id)
            continue
        by_brand.setdefault(brand.brand.id, (brand, []))[1].append(outcome)
    queued = 0
    for brand, items in by_brand.values():
        queued += outbox.queue(session, items, brand=brand, now=now)
    return queued


def queue_public_post(
    session: Session,
    *,
    brand: Brand,
    campaign: Campaign,
    kind: str,
    key: str,
    text: str,
    priority: int,
    now: datetime,
) -> int:
    """Queue one public post (no reply target) from each of the brand's accounts."""
    platforms = [p for p in ("mastodon", "x") if getattr(brand.accounts, p) is not None]
    t = outbox_messages.c
    queued = 0
    for platform in platforms:
        account = outbox.account_key(brand.brand.id, platform)
        exists = session.execute(
            select(t.id).where(t.account == account, t.idempotency_key == key)
        ).first()
        if exists is not None:
            continue
        session.execute(
            outbox_messages.insert().values(
                account=account,
                idempotency_key=key,
                platform=platform,
                kind=kind,
                priority=priority,
                buyer="",
                handle="",
                visibility="public",
                lang=campaign.language,
                text=text,
                text_hash=text_hash(text),
                campaign_id=campaign.id,
                state="queued",
                attempts=0,
                due_at=now,
                created_at=now,
            )
        )
        queued += 1
    session.flush()
    return queued


def _counts(session: Session, campaign: Campaign) -> dict[str, int]:
    p = products.c
    row = session.execute(
        select(func.coalesce(func.sum(p.stock), 0), func.coalesce(func.sum(p.allocated), 0)).where(
            p.campaign_id == campaign.id
        )
    ).one()
    stock, allocated = int(row[0]), int(row[1])
    confirmed = int(
        session.execute(
            select(func.coalesce(func.sum(reservations.c.quantity), 0)).where(
                reservations.c.campaign_id == campaign.id, reservations.c.state == "confirmed"
            )
        ).scalar_one()
    )
    waiting = int(
        session.execute(
            select(func.coalesce(func.sum(reservations.c.quantity), 0)).where(
                reservations.c.campaign_id == campaign.id, reservations.c.state == "waitlisted"
            )
        ).scalar_one()
    )
    return {
        "stock": stock or campaign.total_stock,
        "reserved": allocated,
        "confirmed": confirmed,
        "left": max(stock - allocated, 0),
        "waitlisted": waiting,
    }


def render(template: str, session: Session, ctx: JobContext, campaign: Campaign) -> str:
    """A brand template with its `{placeholders}` filled (unknown ones are left as they are)."""
    counts = _counts(session, campaign)
    values: dict[str, str] = {
        "campaign": campaign.name,
        "hashtag": f"#{campaign.hashtag}",
        "status_url": f"{ctx.settings.public_url.rstrip('/')}/c/{campaign.id}",
        "opens_at": campaign.opens_at.isoformat(),
        "closes_at": campaign.closes_at.isoformat(),
    }
    values.update({k: f"{v:,}" for k, v in counts.items()})

    class _Keep(dict[str, str]):
        def __missing__(self, key: str) -> str:
            return "{" + key + "}"

    return template.format_map(_Keep(values))


def _template(texts: Mapping[str, str], campaign: Campaign, brand: Brand) -> str | None:
    return (
        texts.get(campaign.language)
        or texts.get(brand.brand.language)
        or next(iter(texts.values()), None)
    )


# -- the jobs --------------------------------------------------------------------------------


def announce(
    ctx: JobContext,
    session: Session,
    now: datetime,
    *,
    campaign_id: str,
    which: str,
    message: dict[str, str] | None = None,
    key: str | None = None,
) -> int:
    """The open or close announcement (or a brand cron job's message)."""
    brand, campaign = ctx.brand_of(campaign_id)
    if which == "open" and not campaign.opens_at <= now < campaign.closes_at:
        log.info("skipping the open announcement of %s: not open now", campaign_id)
        return 0
    texts: Mapping[str, str] = (
        message if message is not None else getattr(campaign.announcements, which)
    )
    template = _template(texts, campaign, brand)
    if not template:
        return 0
    text = render(template, session, ctx, campaign)
    return queue_public_post(
        session,
        brand=brand,
        campaign=campaign,
        kind="announcement",
        key=key or f"announce:{campaign_id}:{which}",
        text=text,
        priority=1,
        now=now,
    )


def progress(
    ctx: JobContext,
    session: Session,
    now: datetime,
    *,
    campaign_id: str,
    message: dict[str, str] | None = None,
    key: str | None = None,
) -> int:
    """A public progress post while the campaign is open.

    It never piles up: while an earlier progress post of the campaign still waits in the outbox
    (a storm's replies come first), that post is brought up to date instead of queueing another,
    so at most one progress post per account is ever pending and the posting budget goes to
    replies.
    """
    brand, campaign = ctx.brand_of(campaign_id)
    if not campaign.opens_at <= now < campaign.closes_at:
        return 0
    texts: Mapping[str, str] = message or {
        str(k): v for k, v in campaign.announcements.progress.items()
    }
    template = _template(texts, campaign, brand)
    if not template:
        return 0
    text = render(template, session, ctx, campaign)
    t = outbox_messages.c
    refreshed = (
        session.execute(
            select(t.id).where(
                t.campaign_id == campaign_id, t.kind == "progress", t.state == "queued"
            )
        )
        .scalars()
        .all()
    )
    if refreshed:
        session.execute(
            update(outbox_messages)
            .where(t.id.in_(refreshed))
            .values(text=text, text_hash=text_hash(text))
        )
        return 0
    return queue_public_post(
        session,
        brand=brand,
        campaign=campaign,
        kind="progress",
        key=key or f"progress:{campaign_id}:{int(now.timestamp())}",
        text=text,
        priority=2,
        now=now,
    )


def capture_due(session: Session, now: datetime) -> list[Outcome]:
    """Take the held money of every confirmation-step campaign whose cancellations are over.

    A campaign with `confirmation_step` only holds a buyer's credit when it confirms an order;
    once `cancel_until` has passed (`closes_at` when it is unset) nobody can cancel any more,
    so its confirmed reservations still `held` are captured (`orders.engine.capture_held`).
    Orders confirmed later are captured by the next run.
    """
    c = campaigns.c
    r = reservations.c
    held = (
        select(r.id)
        .where(r.campaign_id == c.id, r.state == "confirmed", r.payment == "held")
        .exists()
    )
    due = session.execute(
        select(c.id)
        .where(
            c.confirmation_step.is_(True),
            func.coalesce(c.cancel_until, c.closes_at) <= now,
            held,
        )
        .order_by(c.id)
    ).scalars()
    outcomes: list[Outcome] = []
    for campaign_id in due.all():
        captured = engine.capture_held(session, campaign_id, now=now)
        log.info("captured %d held payment(s) of %s", len(captured), campaign_id)
        outcomes.extend(captured)
    return outcomes


def expire(ctx: JobContext, session: Session, now: datetime) -> int:
    """Lapse every hold past its expiry, promote the waitlist, capture the held payments of
    confirmation-step campaigns whose cancellations are over, queue the replies."""
    outcomes = engine.expire_holds(session, now)
    if outcomes:
        log.info("expired/promoted: %d outcome(s)", len(outcomes))
    outcomes.extend(capture_due(session, now))
    return queue_outcomes(session, ctx, outcomes, now=now)


def remind(ctx: JobContext, session: Session, now: datetime) -> int:
    """Remind each buyer once, `reminder_minutes` before their hold lapses."""
    return queue_outcomes(session, ctx, engine.due_reminders(session, now), now=now)


def reconcile(ctx: JobContext, now: datetime) -> int:
    """Stripe reconciliation (its own transactions: Stripe is called with none open)."""
    if ctx.stripe_client is None:
        return 0
    from bot.jobs_payments import reconcile_payments

    report = reconcile_payments(ctx.sessions, ctx.stripe_client, ctx.brands, now=now)
    return len(report.applied)


# -- the plan and the runner -----------------------------------------------------------------


Trigger = Literal["date", "interval", "cron"]


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job, as `bot.clock` hands it to APScheduler."""

    id: str
    action: Action
    trigger: Trigger
    period_seconds: float | None = None  # interval jobs; also the claim slot size
    run_at: datetime | None = None  # date jobs
    start: datetime | None = None
    end: datetime | None = None
    cron: str | None = None
    timezone: str = "UTC"
    params: dict[str, Any] = field(default_factory=dict)
    # None: run however late (a late expiry is still owed); else skip runs later than this.
    misfire_grace_seconds: int | None = None


def _cron_spec(campaign: Campaign, job: CronJob) -> JobSpec:
    params: dict[str, Any] = {
        "campaign_id": campaign.id,
        "cron_action": job.action,
        "message": dict(job.message),
    }
    stale_is_useless = job.action in ("progress_post", "announce")
    return JobSpec(
        id=f"cron:{campaign.id}:{job.id}",
        action="cron",
        trigger="cron",
        period_seconds=60.0,  # crontab resolution: one run per minute at most
        cron=job.cron,
        timezone=campaign.timezone,
        params=params,
        misfire_grace_seconds=60 if stale_is_useless else None,
    )


def plan(ctx: JobContext) -> list[JobSpec]:
    """Every job the brand files call for."""
    specs = [
        JobSpec(
            id="expire", action="expire", trigger="interval", period_seconds=ctx.expire_seconds
        ),
        JobSpec(
            id="remind", action="remind", trigger="interval", period_seconds=ctx.remind_seconds
        ),
    ]
    if ctx.stripe_client is not None:
        specs.append(
            JobSpec(
                id="reconcile",
                action="reconcile",
                trigger="interval",
                period_seconds=ctx.reconcile_minutes * 60,
            )
        )
    for brand in ctx.brands:
        for campaign in brand.campaigns:
            ann = campaign.announcements
            if ann.open:
                specs.append(
                    JobSpec(
                        id=f"announce:{campaign.id}:open",
                        action="announce_open",
                        trigger="date",
                        run_at=campaign.opens_at,
                        params={"campaign_id": campaign.id},
                    )
                )
            if ann.close:
                specs.append(
                    JobSpec(
                        id=f"announce:{campaign.id}:close",
                        action="announce_close",
                        trigger="date",
                        run_at=campaign.closes_at,
                        params={"campaign_id": campaign.id},
                    )
                )
            if ann.progress:
                specs.append(
                    JobSpec(
                        id=f"progress:{campaign.id}",
                        action="progress",
                        trigger="interval",
                        period_seconds=ann.progress_every_minutes * 60.0,
                        start=campaign.opens_at,
                        end=campaign.closes_at,
                        params={"campaign_id": campaign.id},
                        misfire_grace_seconds=30,
                    )
                )
            for job in campaign.jobs:
                specs.append(_cron_spec(campaign, job))
    return specs


def _spec(job_id: str, ctx: JobContext) -> JobSpec:
    for spec in plan(ctx):
        if spec.id == job_id:
            return spec
    raise KeyError(job_id)


def run_job(job_id: str, *, ctx: JobContext | None = None, now: datetime | None = None) -> str:
    """Run one job of the plan once, if this clock leads and nobody ran its current slot.

    Returns what happened: `standby`, `skipped` (slot already run) or `ran:<n>`.
    """
    ctx = ctx or context()
    spec = _spec(job_id, ctx)
    if ctx.leadership is not None and not ctx.leadership.acquire():
        return "standby"
    now = now or ctx.clock.now()
    slot = slot_for(spec.period_seconds, now)
    params = dict(spec.params)
    if spec.action == "reconcile" or params.get("cron_action") == "reconcile_payments":
        with ctx.sessions.begin() as session:
            if not claim(session, spec.id, slot, holder=ctx.holder, now=now):
                return "skipped"
        return f"ran:{reconcile(ctx, now)}"
    with ctx.sessions.begin() as session:
        if not claim(session, spec.id, slot, holder=ctx.holder, now=now):
            return "skipped"
        done = _ACTIONS[spec.action](ctx, session, now, params)
    return f"ran:{done}"


def _cron(ctx: JobContext, session: Session, now: datetime, params: dict[str, Any]) -> int:
    action = params["cron_action"]
    campaign_id = params["campaign_id"]
    message = params.get("message") or None
    key = f"cron:{campaign_id}:{int(now.timestamp() // 60)}"
    if action == "progress_post":
        return progress(ctx, session, now, campaign_id=campaign_id, message=message, key=key)
    if action == "announce":
        return announce(
            ctx, session, now, campaign_id=campaign_id, which="cron", message=message or {}, key=key
        )
    if action == "expire_holds":
        return expire(ctx, session, now)
    raise ValueError(f"unknown cron action {action!r}")


_ACTIONS: dict[str, Callable[[JobContext, Session, datetime, dict[str, Any]], int]] = {
    "announce_open": lambda c, s, n, p: announce(
        c, s, n, campaign_id=p["campaign_id"], which="open"
    ),
    "announce_close": lambda c, s, n, p: announce(
        c, s, n, campaign_id=p["campaign_id"], which="close"
    ),
    "expire": lambda c, s, n, p: expire(c, s, n),
    "remind": lambda c, s, n, p: remind(c, s, n),
    "progress": lambda c, s, n, p: progress(c, s, n, campaign_id=p["campaign_id"]),
    "cron": _cron,
}
