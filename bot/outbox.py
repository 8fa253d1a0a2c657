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
  top-up: bearer tokens) goes only by direct message; public replies carry no token;
- the outcome's facts (`facts_of`), not yet a text. At flash-sale scale most replies wait
  hours for the platform's posting budget, so a reply is written (`Composer`: template,
  language, freshly signed links, never a text the buyer already got) only when a sender claims
  it.

A storm's batch owes a reply to nearly every post, and a row per reply (three index entries) was
a third of the batch's time. So replies of one priority for one account go as one
`outbox_bundles` row when a batch has `BUNDLE_MIN` or more of them; a sender opens a bundle (its
replies become rows, the bundle is deleted, in one transaction) when it comes first in
(priority, due_at) order, so replies go out in the same order of urgency. A bundle that cannot
be opened is set aside with the reason and holds up nothing else.

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
import operator
import os
import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import orjson
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot import links as buyer_links
from bot.replies import Links, render, text_hash, uses_personal_link
from bot.tables import outbox_bundles, outbox_messages
from config.brand import Brand
from config.database import is_postgres
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
from connectors.post import Visibility
from orders.bulk import insert_rows
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


# -- queueing ------------------------------------------------------------------------------------

# The fields of an outcome a reply needs besides the message's own columns, in the order
# `facts_of` lists them. Append new fields at the end only: rows already queued are read by
# position, and a missing trailing field reads as None.
FACT_FIELDS = (
    "sku",
    "quantity",
    "state",
    "reason",
    "queue_position",
    "hold_expires_at",
    "amount_due",
    "balance",
    "amount",
    "lang",
    "visibility",
)
# A queued reply as `queue` builds it: its message columns other than the account and priority
# (which a bundle holds once for all its replies), then its facts. In a bundle the facts stay a
# nested array; in a message row they are a JSON text. Append new fields before `facts` only
# together with a migration: bundles already queued are read by position.
BUNDLE_FIELDS = (
    "idempotency_key",
    "platform",
    "kind",
    "buyer",
    "handle",
    "recipient_id",
    "in_reply_to",
    "visibility",
    "campaign_id",
    "reservation_id",
    "facts",
)
_FACTS_AT = BUNDLE_FIELDS.index("facts")
_QUEUE_COLUMNS = ("account", "priority", *BUNDLE_FIELDS)
# A batch's replies of one priority for one account go as one bundle from this many on; fewer
# go as rows straight away (a bundle saves nothing on a handful).
BUNDLE_MIN = 32


# What the reply to an outcome will say (`FACT_FIELDS`), read in one C call instead of eleven
# attribute reads in Python: `queue` runs once per outcome of a storm.
facts_of: Callable[[Outcome], tuple[Any, ...]] = operator.attrgetter(*FACT_FIELDS)


def decode_facts(facts: str) -> dict[str, Any]:
    values = dict(zip(FACT_FIELDS, orjson.loads(facts), strict=False))
    expires = values.get("hold_expires_at")
    if isinstance(expires, str):
        values["hold_expires_at"] = datetime.fromisoformat(expires)
    if values.get("visibility") is None:
        values.pop("visibility", None)
    return values


def queue(
    session: Session,
    outcomes: Sequence[Outcome],
    *,
    brand: Brand,
    now: datetime,
    bundle_min: int = BUNDLE_MIN,
) -> int:
    """Queue the replies `outcomes` call for, in the caller's transaction (no commit).

    A reply is queued as its outcome's facts; its text is written when a sender claims it
    (`Composer`), so a buyer's link is signed only for a message that goes out. Replies of one
    priority for one account go as one `outbox_bundles` row when there are `bundle_min` or more
    of them (a storm's batch), else as one `outbox_messages` row each; a sender opens a bundle
    when it comes first (`open_bundle`). Returns how many replies were queued: an outcome whose
    reply was queued before is skipped, or, in a bundle, dropped when the bundle is opened.
    """
    accounts = {p: account_key(brand.brand.id, p) for p in SENDABLE_PLATFORMS}
    groups: defaultdict[tuple[str, int], list[tuple[Any, ...]]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    # What a reply's visibility depends on, remembered for this call: a storm's outcomes share
    # a handful of (kind, state, post visibility) triples.
    visibilities: dict[tuple[Any, ...], str] = {}
    for o in outcomes:
        kind = o.kind
        priority = PRIORITY.get(kind)
        account = accounts.get(o.platform)
        if priority is None or account is None:
            continue
        key = f"{o.reservation_id or o.post_id}:{kind}"
        if (account, key) in seen:
            continue
        seen.add((account, key))
        shape = (kind, o.state, o.visibility)
        visibility = visibilities.get(shape)
        if visibility is None:
            visibility = visibilities[shape] = visibility_for(o)
        groups[account, priority].append(
            (
                key,
                o.platform,
                kind,
                o.buyer,
                o.handle,
                o.buyer.partition(":")[2] or None,
                o.post_id,
                visibility,
                o.campaign_id,
                o.reservation_id,
                facts_of(o),
            )
        )
    rows: list[tuple[Any, ...]] = []
    bundles: list[tuple[str, int, int, str]] = []
    bundled = 0
    for (account, priority), replies in groups.items():
        if len(replies) >= bundle_min:
            bundles.append((account, priority, len(replies), orjson.dumps(replies).decode()))
            bundled += len(replies)
        else:
            rows.extend(_message_row(account, priority, reply) for reply in replies)
    if bundles:
        # Plain parameters: a bundle is one long text, which a JSON array of rows would escape
        # and the server parse again.
        session.execute(
            insert(outbox_bundles),
            [
                {
                    "account": account,
                    "priority": priority,
                    "size": size,
                    "replies": replies_json,
                    "due_at": now,
                    "created_at": now,
                }
                for account, priority, size, replies_json in bundles
            ],
        )
    return bundled + _insert_messages(session, rows, due_at=now, created_at=now)


def _message_row(account: str, priority: int, reply: Sequence[Any]) -> tuple[Any, ...]:
    """An `outbox_messages` row (`_QUEUE_COLUMNS`) of a reply in `BUNDLE_FIELDS` order."""
    return (account, priority, *reply[:_FACTS_AT], orjson.dumps(reply[_FACTS_AT]).decode())


def _insert_messages(
    session: Session, rows: Sequence[tuple[Any, ...]], *, due_at: datetime, created_at: datetime
) -> int:
    return insert_rows(
        session,
        outbox_messages,
        _QUEUE_COLUMNS,
        rows,
        constants={"state": "queued", "attempts": 0, "due_at": due_at, "created_at": created_at},
        skip_conflicts_on=("account", "idempotency_key"),
    )


def open_bundle(session: Session, bundle: Row[Any]) -> int:
    """Turn a bundle (a row of `outbox_bundles` with all its columns) into its messages, in the
    caller's transaction, and delete it. Returns how many messages were queued: a reply queued
    before (same account and idempotency key) is dropped."""
    replies = orjson.loads(bundle.replies)
    rows = [_message_row(bundle.account, bundle.priority, reply) for reply in replies]
    queued = _insert_messages(session, rows, due_at=bundle.due_at, created_at=bundle.created_at)
    session.execute(delete(outbox_bundles).where(outbox_bundles.c.id == bundle.id))
    return queued


# -- writing a reply when it is claimed ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """A reply's text as it goes out."""

    text: str
    text_hash: str
    lang: str | None
    visibility: Visibility


class ComposeError(Exception):
    """A queued reply that cannot be written (its brand file is no longer loaded)."""


class Composer:
    """Writes queued replies: template, language, the buyer's links, never a text twice.

    Runs in the sender's claim transaction. The buyer's links are signed at that moment, so a
    link is as fresh as the message that carries it. On PostgreSQL a transaction-scoped advisory
    lock per (account, buyer) keeps two senders from choosing the same text for one buyer at the
    same time; SQLite's single writer already does.
    """

    def __init__(
        self,
        brands: Iterable[Brand],
        *,
        public_url: str | None = None,
        signer: buyer_links.LinkSigner | None = None,
    ) -> None:
        self.brands = {b.brand.id: b for b in brands}
        self._public_url = public_url
        self._signer = signer

    def signer(self, session: Session) -> buyer_links.LinkSigner:
        """The buyer-link signer; its database key is read within the caller's session (a
        second connection would wait on the SQLite write lock this very transaction holds)."""
        if self._signer is None:
            configured = buyer_links.configured_signer(get_settings())
            self._signer = configured or buyer_links.LinkSigner(buyer_links.session_secret(session))
        return self._signer

    def write(self, session: Session, message: Any, *, now: datetime) -> Written:
        """The text of the queued reply `message` (a row of `outbox_messages`)."""
        brand_id = message.account.rpartition(":")[0]
        brand = self.brands.get(brand_id)
        if brand is None:
            raise ComposeError(f"no brand file loaded for brand {brand_id!r}")
        outcome = Outcome(
            kind=message.kind,
            platform=message.platform,
            post_id=message.in_reply_to or "",
            buyer=message.buyer,
            handle=message.handle,
            campaign_id=message.campaign_id or "",
            reservation_id=message.reservation_id,
            **decode_facts(message.facts),
        )
        used = self._used_texts(session, message.account, message.buyer)
        signer = self.signer(session)
        me = signer.issue(outcome.buyer, outcome.campaign_id, purpose="me", now=now)
        pay = signer.issue(outcome.buyer, outcome.campaign_id, purpose="pay", now=now)
        base_url = self._public_url or get_settings().public_url
        due = outcome.amount if outcome.kind == "topup" else outcome.amount_due
        links = Links(
            status_url=buyer_links.status_url(base_url, me),
            topup_url=buyer_links.topup_url(base_url, pay, due),
        )
        text, lang = render(outcome, brand=brand, links=links, used=used)
        # Whatever the templates say, a text that carries a token never goes out in public.
        personal = me in text or pay in text
        return Written(
            text=text,
            text_hash=text_hash(text),
            lang=lang,
            visibility="direct" if personal else cast(Visibility, message.visibility),
        )

    @staticmethod
    def _used_texts(session: Session, account: str, buyer: str) -> set[str]:
        if is_postgres(session):
            session.execute(
                select(func.pg_advisory_xact_lock(func.hashtextextended(f"{account}|{buyer}", 0)))
            )
        t = outbox_messages.c
        return set(
            session.execute(
                select(t.text_hash).where(
                    t.account == account, t.buyer == buyer, t.text_hash.is_not(None)
                )
            ).scalars()
        )


# -- sending -------------------------------------------------------------------------------------

SendResult = Literal["sent", "retry", "failed", "rate_limited"]
_ClaimResult = Literal["claimed", "none", "lost", "skipped", "opened"]


def _written_error(exc: Exception) -> str:
    if isinstance(exc, ComposeError):
        return str(exc)
    return f"cannot write the reply: {type(exc).__name__}: {exc}"[:500]


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
        composer: Composer,
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
        self._composer = composer
        self.account = account or connector.account_key
        self._clock: Clock = clock or SystemClock()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._lease = lease
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap

    def _claim(self) -> _Claim | None:
        races = 0
        while races < 10:
            result, claim = self._try_claim()
            if result == "lost":
                races += 1
            elif result not in ("skipped", "opened"):
                # Skipped: a message that could not be written was failed. Opened: a bundle's
                # replies came first and are messages now. Either way, claim the next.
                return claim
        return None

    def _try_claim(self) -> tuple[_ClaimResult, _Claim | None]:
        """What happened, and the claim. Losing a race happens only where SKIP LOCKED is not
        available; a message that cannot be written is marked failed and skipped."""
        now = self._clock.now()
        t = outbox_messages.c
        columns = (
            t.id,
            t.state,
            t.priority,
            t.due_at,
            t.attempts,
            t.account,
            t.platform,
            t.kind,
            t.buyer,
            t.campaign_id,
            t.reservation_id,
            t.facts,
            t.text,
            t.text_hash,
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
            row: Any = None
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
            if (row is None or row.state == "queued") and self._open_bundle_before(
                session, row, now
            ):
                return "opened", None  # its replies come first: claim again from the messages
            if row is None:
                return "none", None
            written = Written(row.text, row.text_hash, row.lang, row.visibility)
            if row.text is None:
                try:
                    written = self._composer.write(session, row, now=now)
                except SQLAlchemyError:
                    raise  # the database's fault, not the message's: the run loop backs off
                except Exception as exc:
                    # A reply that cannot be written (its brand file gone, facts or templates
                    # that no longer fit) fails alone; it must not stop the sender, nor come
                    # first again after every restart.
                    if not isinstance(exc, ComposeError):
                        log.exception("%s message %s cannot be written", self.account, row.id)
                    session.execute(
                        update(outbox_messages)
                        .where(t.id == row.id, t.attempts == row.attempts)
                        .values(state="failed", error=_written_error(exc), lease_until=None)
                    )
                    log.error("%s message %s cannot be written: %s", self.account, row.id, exc)
                    return "skipped", None
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
                    text=written.text,
                    text_hash=written.text_hash,
                    lang=written.lang,
                    visibility=written.visibility,
                )
                .returning(t.id)
            ).first()
            if claimed is None:
                return "lost", None
        message = OutgoingMessage(
            text=written.text,
            visibility=written.visibility,
            idempotency_key=f"{self.account}:{row.idempotency_key}",
            in_reply_to=row.in_reply_to,
            recipient_handle=row.handle,
            recipient_id=row.recipient_id,
            lang=written.lang,
        )
        return "claimed", _Claim(id=row.id, attempts=row.attempts + 1, message=message)

    def _open_bundle_before(self, session: Session, row: Any, now: datetime) -> bool:
        """Open the account's most urgent due bundle if it comes before the queued `row` (None:
        no queued message) in (priority, due_at) order. True when the messages must be read
        again: a bundle was opened (or set aside, failed), or another sender was opening one."""
        b = outbox_bundles.c
        query = select(outbox_bundles).where(
            b.account == self.account, b.due_at <= now, b.error.is_(None)
        )
        if row is not None:
            query = query.where(
                or_(
                    b.priority < row.priority,
                    and_(b.priority == row.priority, b.due_at < row.due_at),
                )
            )
        query = query.order_by(b.priority, b.due_at, b.id).limit(1)
        bundle = session.execute(query.with_for_update(skip_locked=True)).first()
        if bundle is None:
            if not is_postgres(session) or session.execute(query).first() is None:
                return False
            # Another sender is opening a bundle that comes first: wait for it rather than send
            # a less urgent reply meanwhile. Once it commits the bundle is gone (None here).
            bundle = session.execute(query.with_for_update()).first()
            if bundle is None:
                return True
        try:
            with session.begin_nested():
                open_bundle(session, bundle)
        except (DataError, IntegrityError, LookupError, TypeError, ValueError) as exc:
            # Replies that cannot become messages must not hold up the rest of the queue: the
            # bundle keeps them, with the reason (`flashtag outbox status` counts them failed).
            log.error("%s bundle %s cannot be opened: %s", self.account, bundle.id, exc)
            session.execute(
                update(outbox_bundles)
                .where(b.id == bundle.id)
                .values(error=f"cannot be opened: {type(exc).__name__}: {exc}"[:500])
            )
        return True

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
    b = outbox_bundles.c
    depth: defaultdict[str, dict[int, int]] = defaultdict(dict)
    counts: defaultdict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    oldest: dict[str, datetime] = {}

    def waiting(account: str, priority: int, n: int, first_due: Any) -> None:
        depth[account][priority] = depth[account].get(priority, 0) + n
        due = _aware(first_due)
        if due is not None and (account not in oldest or due < oldest[account]):
            oldest[account] = due

    for account, priority, state, n, first_due in session.execute(
        select(t.account, t.priority, t.state, func.count(), func.min(t.due_at))
        .where(t.state != "sent")
        .group_by(t.account, t.priority, t.state)
    ):
        if state == "queued":
            waiting(account, priority, n, first_due)
        else:
            counts[account][state] += n
    # Replies in bundles wait like queued messages (one queued before may still be dropped when
    # its bundle is opened); those of a bundle that could not be opened count as failed.
    for account, priority, failed, n, first_due in session.execute(
        select(
            b.account, b.priority, b.error.is_not(None), func.sum(b.size), func.min(b.due_at)
        ).group_by(b.account, b.priority, b.error.is_not(None))
    ):
        if failed:
            counts[account]["failed"] += int(n)
        else:
            waiting(account, priority, int(n), first_due)
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
