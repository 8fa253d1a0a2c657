"""The outbox: replies queued with the state change they report, sent within platform limits.

Queueing (`queue`) happens inside the pipeline's transaction: the engine's outcomes become
`outbox_messages` rows in the same commit as the reservations they describe, so a reply is never
sent for a change that rolled back, and never lost for one that committed. Each row carries

- an idempotency key, `f"{reservation_id or post_id}:{kind}"`, unique per account: queueing the
  same outcome again is a no-op, and Mastodon gets it as `Idempotency-Key`;
- a priority: payment needed (and other action-needed messages) 0, confirmed 1, promoted 2,
  waitlisted 3, rejected/expired/cancelled 4, status/balance/help 5;
- a visibility no more public than the post it answers (and at most `unlisted`, so a flash sale
  does not flood public timelines). Anything carrying one of the buyer's links (status page or
  top-up: bearer tokens) goes only by direct message; public replies carry no token.

Sending (`Sender`) is one loop per platform account, and several may run at once: each claims the
most urgent due message (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's single writer makes the
claim atomic there), marks it `sending` under a lease, sends, then records the platform id. A 429
puts the message back and waits for the reset; a transient error retries with exponential
backoff; a permanent one marks the message failed with the reason. A sender that dies mid-send
leaves a lapsed lease and the message is claimed again (Mastodon's Idempotency-Key keeps that
second attempt from posting twice).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot import links as buyer_links
from bot.replies import Links, render, text_hash, uses_personal_link
from bot.tables import outbox_messages
from config.brand import Brand
from config.settings import get_settings
from connectors.base import (
    AuthFailed,
    Connector,
    ConnectorError,
    OutgoingMessage,
    RateLimited,
    Rejected,
)
from connectors.pacing import Clock, SystemClock
from orders.outcomes import Outcome

log = logging.getLogger(__name__)

PRIORITY: dict[str, int] = {
    "payment_needed": 0,
    "reminder": 0,
    "topup": 0,
    "confirmed": 1,
    "promoted": 2,
    "waitlisted": 3,
    "rejected": 4,
    "expired": 4,
    "cancelled": 4,
    "status": 5,
    "balance": 5,
    "help": 5,
}
PRIORITY_NAMES = {
    0: "action needed",
    1: "confirmed",
    2: "promoted",
    3: "waitlisted",
    4: "rejected/expired",
    5: "status/help",
}
SILENT = frozenset({"ignored", "duplicate"})
SENDABLE_PLATFORMS = frozenset({"mastodon", "x"})  # a replayed text file has no one to answer
_RANK = {"direct": 0, "private": 1, "unlisted": 2, "public": 3}
_REPLY_CEILING = "unlisted"
_CHUNK = 500


def account_key(brand_id: str, platform: str) -> str:
    """The platform account a message goes out from (the same key the cursors use)."""
    return f"{brand_id}:{platform}"


def idempotency_key(outcome: Outcome) -> str:
    return f"{outcome.reservation_id or outcome.post_id}:{outcome.kind}"


def visibility_for(outcome: Outcome) -> str:
    """Direct for anything with one of the buyer's links (their status page or top-up link);
    else the post's visibility, capped at unlisted."""
    if uses_personal_link(outcome):
        return "direct"
    post = outcome.visibility if outcome.visibility in _RANK else "direct"
    return min(post, _REPLY_CEILING, key=_RANK.__getitem__)


# -- link signing in the caller's transaction ----------------------------------------------------


def _signer(session: Session) -> buyer_links.LinkSigner:
    """The buyer-link signer, its database key read within the caller's session (a second
    connection would wait on the SQLite write lock this very transaction holds)."""
    configured = buyer_links.configured_signer(get_settings())
    return configured or buyer_links.LinkSigner(buyer_links.session_secret(session))


# -- queueing ------------------------------------------------------------------------------------


def _used_texts(
    session: Session, keys: Iterable[tuple[str, str]]
) -> defaultdict[tuple[str, str], set[str]]:
    used: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    by_account: defaultdict[str, set[str]] = defaultdict(set)
    for account, buyer in keys:
        by_account[account].add(buyer)
    t = outbox_messages.c
    for account, buyers in by_account.items():
        ordered = sorted(buyers)
        for start in range(0, len(ordered), _CHUNK):
            rows = session.execute(
                select(t.buyer, t.text_hash).where(
                    t.account == account, t.buyer.in_(ordered[start : start + _CHUNK])
                )
            )
            for buyer, digest in rows:
                used[(account, buyer)].add(digest)
    return used


def queue(
    session: Session,
    outcomes: Sequence[Outcome],
    *,
    brand: Brand,
    now: datetime,
    public_url: str | None = None,
    signer: buyer_links.LinkSigner | None = None,
) -> int:
    """Queue the replies `outcomes` call for, in the caller's transaction (flush, no commit).

    Returns how many new messages were queued (an outcome queued before is skipped).
    """
    wanted = [
        o
        for o in outcomes
        if o.kind not in SILENT and o.kind in PRIORITY and o.platform in SENDABLE_PLATFORMS
    ]
    if not wanted:
        return 0
    base_url = public_url or get_settings().public_url
    signer = signer or _signer(session)
    pairs = {(account_key(brand.brand.id, o.platform), o.buyer) for o in wanted}
    used = _used_texts(session, pairs)
    rows: list[dict[str, Any]] = []
    seen_keys: set[tuple[str, str]] = set()
    for outcome in wanted:
        account = account_key(brand.brand.id, outcome.platform)
        key = idempotency_key(outcome)
        if (account, key) in seen_keys:
            continue
        seen_keys.add((account, key))
        # One token per purpose: the status link cannot open a payment, nor the payment link
        # the status page.
        me = signer.issue(outcome.buyer, outcome.campaign_id, purpose="me", now=now)
        pay = signer.issue(outcome.buyer, outcome.campaign_id, purpose="pay", now=now)
        due = outcome.amount if outcome.kind == "topup" else outcome.amount_due
        links = Links(
            status_url=buyer_links.status_url(base_url, me),
            topup_url=buyer_links.topup_url(base_url, pay, due),
        )
        taken = used[(account, outcome.buyer)]
        text, lang = render(outcome, brand=brand, links=links, used=taken)
        # Whatever the templates say, a text that carries a token never goes out in public.
        personal = me in text or pay in text
        digest = text_hash(text)
        taken.add(digest)
        rows.append(
            {
                "account": account,
                "idempotency_key": key,
                "platform": outcome.platform,
                "kind": outcome.kind,
                "priority": PRIORITY[outcome.kind],
                "buyer": outcome.buyer,
                "handle": outcome.handle,
                "recipient_id": outcome.buyer.partition(":")[2] or None,
                "in_reply_to": outcome.post_id,
                "visibility": "direct" if personal else visibility_for(outcome),
                "lang": lang,
                "text": text,
                "text_hash": digest,
                "campaign_id": outcome.campaign_id,
                "reservation_id": outcome.reservation_id,
                "state": "queued",
                "attempts": 0,
                "due_at": now,
                "created_at": now,
            }
        )
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # executemany with RETURNING: SQLAlchemy batches it into multi-row INSERTs ("insertmanyvalues")
    # from one cached compilation, so a batch of 500 costs a few statements, not 500.
    inserted = session.execute(
        insert(outbox_messages)
        .on_conflict_do_nothing(index_elements=["account", "idempotency_key"])
        .returning(outbox_messages.c.id),
        rows,
    ).all()
    session.flush()
    return len(inserted)


# -- sending -------------------------------------------------------------------------------------

SendResult = Literal["sent", "retry", "failed", "rate_limited"]


@dataclass(frozen=True, slots=True)
class Sent:
    """What one `Sender.send_one` did."""

    message_id: int
    result: SendResult
    platform_id: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Claim:
    id: int
    attempts: int
    message: OutgoingMessage


class Sender:
    """Sends one platform account's messages, most urgent first. Several may run at once."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        connector: Connector,
        *,
        account: str | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        lease: timedelta = timedelta(minutes=5),
        max_attempts: int = 8,
        backoff_base: float = 2.0,
        backoff_cap: float = 900.0,
    ) -> None:
        self._factory = factory
        self._connector = connector
        self.account = account or connector.account_key
        self._clock: Clock = clock or SystemClock()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._lease = lease
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap

    def _claim(self) -> _Claim | None:
        for _ in range(10):
            lost, claim = self._try_claim()
            if not lost:
                return claim
        return None

    def _try_claim(self) -> tuple[bool, _Claim | None]:
        """(lost the race, claim). Losing happens only where SKIP LOCKED is not available."""
        now = self._clock.now()
        t = outbox_messages.c
        columns = (
            t.id,
            t.attempts,
            t.text,
            t.visibility,
            t.idempotency_key,
            t.in_reply_to,
            t.handle,
            t.recipient_id,
            t.lang,
        )
        with self._factory.begin() as session:
            # Two index walks on (account, state, priority, due_at, id) rather than one OR that
            # would scan every queued row: first a message whose sender died (its lease lapsed;
            # there are at most as many `sending` rows as senders), then the most urgent due one.
            row = None
            for state, due in (("sending", t.lease_until < now), ("queued", t.due_at <= now)):
                row = session.execute(
                    select(*columns)
                    .where(t.account == self.account, t.state == state, due)
                    .order_by(t.priority, t.due_at, t.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is not None:
                    break
            if row is None:
                return False, None
            claimed = session.execute(
                update(outbox_messages)
                .where(
                    t.id == row.id, t.state.in_(("queued", "sending")), t.attempts == row.attempts
                )
                .values(
                    state="sending",
                    claimed_by=self.name,
                    lease_until=now + self._lease,
                    attempts=t.attempts + 1,
                )
                .returning(t.id)
            ).first()
            if claimed is None:
                return True, None
        message = OutgoingMessage(
            text=row.text,
            visibility=row.visibility,
            idempotency_key=f"{self.account}:{row.idempotency_key}",
            in_reply_to=row.in_reply_to,
            recipient_handle=row.handle,
            recipient_id=row.recipient_id,
            lang=row.lang,
        )
        return False, _Claim(id=row.id, attempts=row.attempts + 1, message=message)

    def _finish(self, claim: _Claim, **values: Any) -> None:
        t = outbox_messages.c
        with self._factory.begin() as session:
            session.execute(
                update(outbox_messages)
                .where(t.id == claim.id, t.state == "sending", t.claimed_by == self.name)
                .values(lease_until=None, **values)
            )

    def backoff(self, attempts: int) -> float:
        return float(min(self._backoff_cap, self._backoff_base ** max(attempts, 1)))

    def send_one(self) -> Sent | None:
        """Wait for the pace, claim the most urgent due message and send it. None = nothing due."""
        wait = self._connector.send_delay()
        if wait > 0:
            self._clock.sleep(wait)
        claim = self._claim()
        if claim is None:
            return None
        try:
            platform_id = self._connector.send(claim.message)
        except RateLimited as exc:
            # Not the message's fault: put it back as it was and wait for the window to reset.
            self._finish(claim, state="queued", attempts=claim.attempts - 1)
            wait = max((exc.reset_at - self._clock.now()).total_seconds(), 0.0)
            log.info("%s rate limited; waiting %.0fs for the reset", self.account, wait)
            self._clock.sleep(wait)
            return Sent(claim.id, "rate_limited", error=str(exc))
        except AuthFailed:
            self._finish(claim, state="queued", attempts=claim.attempts - 1)
            raise
        except Rejected as exc:
            self._finish(claim, state="failed", error=_reason(exc))
            log.warning("%s message %s rejected: %s", self.account, claim.id, _reason(exc))
            return Sent(claim.id, "failed", error=_reason(exc))
        except ConnectorError as exc:
            if claim.attempts >= self._max_attempts:
                self._finish(claim, state="failed", error=f"gave up: {_reason(exc)}")
                return Sent(claim.id, "failed", error=_reason(exc))
            due = self._clock.now() + timedelta(seconds=self.backoff(claim.attempts))
            self._finish(claim, state="queued", due_at=due, error=_reason(exc))
            return Sent(claim.id, "retry", error=_reason(exc))
        self._finish(
            claim, state="sent", platform_id=platform_id, sent_at=self._clock.now(), error=None
        )
        return Sent(claim.id, "sent", platform_id=platform_id)

    def drain(self, limit: int | None = None) -> list[Sent]:
        """Send until nothing is due (or `limit` messages were handled)."""
        done: list[Sent] = []
        while limit is None or len(done) < limit:
            result = self.send_one()
            if result is None:
                break
            done.append(result)
        return done

    def run(self, stop: threading.Event, *, idle_seconds: float = 1.0) -> None:
        """The worker loop: send while there is work, nap when there is none, until `stop`."""
        failures = 0
        while not stop.is_set():
            try:
                result = self.send_one()
            except AuthFailed:
                log.error("%s: credentials rejected; the sender stops", self.account)
                raise
            except SQLAlchemyError:
                # The database blinked (a restart, a failover): log, back off, carry on.
                failures += 1
                log.exception("%s: outbox database error; retrying", self.account)
                self._clock.sleep(min(self.backoff(failures), 60.0))
                continue
            failures = 0
            if result is None:
                self._clock.sleep(idle_seconds)


def _reason(exc: ConnectorError) -> str:
    status = f"HTTP {exc.status}: " if exc.status else ""
    return f"{status}{exc}"[:500]


# -- status --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountQueue:
    """One account's queue as `flashtag outbox status` shows it."""

    account: str
    depth: dict[int, int]
    sending: int
    failed: int
    sent_last_hour: int
    oldest_due: datetime | None

    @property
    def total(self) -> int:
        return sum(self.depth.values())

    def eta_seconds(self) -> float | None:
        """Time to empty the queue at the pace of the last hour (None: nothing sent lately)."""
        if self.total == 0:
            return 0.0
        if self.sent_last_hour == 0:
            return None
        return self.total / self.sent_last_hour * 3600.0


def queue_status(session: Session, *, now: datetime) -> list[AccountQueue]:
    t = outbox_messages.c
    depth: defaultdict[str, dict[int, int]] = defaultdict(dict)
    counts: defaultdict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    oldest: dict[str, datetime | None] = {}
    for account, priority, state, n, first_due in session.execute(
        select(t.account, t.priority, t.state, func.count(), func.min(t.due_at))
        .where(t.state != "sent")
        .group_by(t.account, t.priority, t.state)
    ):
        if state == "queued":
            depth[account][priority] = depth[account].get(priority, 0) + n
            due = _aware(first_due)
            current = oldest.get(account)
            oldest[account] = due if current is None or (due and due < current) else current
        else:
            counts[account][state] += n
    hour_ago = now - timedelta(hours=1)
    for account, n in session.execute(
        select(t.account, func.count())
        .where(t.state == "sent", t.sent_at >= hour_ago)
        .group_by(t.account)
    ):
        counts[account]["sent"] += n
    accounts = sorted(set(depth) | set(counts))
    return [
        AccountQueue(
            account=a,
            depth=dict(sorted(depth.get(a, {}).items())),
            sending=counts[a]["sending"],
            failed=counts[a]["failed"],
            sent_last_hour=counts[a]["sent"],
            oldest_due=oldest.get(a),
        )
        for a in accounts
    ]


def _aware(value: Any) -> datetime | None:
    from datetime import UTC

    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if isinstance(value, datetime) else None
