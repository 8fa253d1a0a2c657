"""Signed, expiring buyer links: `/topup/{token}` and `/me/{token}`.

A token names a buyer and a campaign and carries its expiry; it is
`base64url(json [buyer, campaign, expires_epoch]) "." base64url(HMAC-SHA256)`, so it cannot be
guessed or altered, and verification compares MACs in constant time. The MAC also binds the
token's purpose, `"me"` (the status page) or `"pay"` (top-up), which is not in the payload: a
status token is refused by `/topup/` and a pay token by `/me/`. Whoever holds a token can see
that buyer's status page, or top up their wallet (never spend or withdraw), so tokens are bearer
secrets: they go to the buyer only by direct message and are never logged.

The key is `FLASHTAG_LINK_SECRET`. Without it (development), each database gets its own random
key, created on first use and kept in the `link_secrets` table, so links survive restarts and
two databases never accept each other's links; a warning says so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import quote, urlencode

from sqlalchemy import Column, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from bot.tables import metadata
from config.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(days=7)
# v2 binds the purpose; v1 tokens (one token for both routes) are no longer accepted.
_CONTEXT = b"flashtag-buyer-link-v2."

Purpose = Literal["me", "pay"]
PURPOSES: tuple[Purpose, ...] = ("me", "pay")

link_secrets = Table(
    "link_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("secret", String(128), nullable=False),
)


class InvalidLinkError(Exception):
    """A token that was not signed with our key, or is malformed."""


class ExpiredLinkError(InvalidLinkError):
    """A genuine token past its expiry."""


@dataclass(frozen=True)
class BuyerLink:
    buyer: str
    campaign_id: str
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """Signs and verifies buyer tokens with one key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the link secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, purpose: Purpose, payload: str) -> bytes:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown link purpose {purpose!r}")
        message = _CONTEXT + purpose.encode("ascii") + b"." + payload.encode("ascii")
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def sign(self, buyer: str, campaign_id: str, expires_at: datetime, *, purpose: Purpose) -> str:
        body = json.dumps(
            [buyer, campaign_id, int(expires_at.timestamp())],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        payload = _b64(body.encode("utf-8"))
        return f"{payload}.{_b64(self._mac(purpose, payload))}"

    def issue(
        self,
        buyer: str,
        campaign_id: str,
        *,
        purpose: Purpose,
        now: datetime,
        ttl: timedelta = DEFAULT_TTL,
    ) -> str:
        return self.sign(buyer, campaign_id, now + ttl, purpose=purpose)

    def verify(self, token: str, *, purpose: Purpose, now: datetime) -> BuyerLink:
        """The link a token stands for, if it was signed for `purpose`; raises
        `InvalidLinkError` / `ExpiredLinkError`."""
        payload, dot, mac = token.partition(".")
        if not dot or not payload or not mac or len(token) > 1024:
            raise InvalidLinkError("malformed token")
        try:
            expected = _b64(self._mac(purpose, payload))
        except UnicodeEncodeError as exc:
            raise InvalidLinkError("malformed token") from exc
        # Compare the canonical encodings, so no second spelling of a MAC is accepted.
        if not hmac.compare_digest(mac.encode("utf-8"), expected.encode("ascii")):
            raise InvalidLinkError("bad signature")
        try:
            buyer, campaign_id, expires = json.loads(_unb64(payload).decode("utf-8"))
        except (binascii.Error, ValueError, TypeError) as exc:
            raise InvalidLinkError("malformed payload") from exc
        if not isinstance(buyer, str) or not isinstance(campaign_id, str):
            raise InvalidLinkError("malformed payload")
        if not isinstance(expires, int):
            raise InvalidLinkError("malformed payload")
        expires_at = datetime.fromtimestamp(expires, UTC)
        if now >= expires_at:
            raise ExpiredLinkError("link expired")
        return BuyerLink(buyer, campaign_id, expires_at)


def link_id(token: str) -> str:
    """A stable, non-secret name for a token (what idempotency keys and logs may carry)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def topup_url(public_url: str, token: str, amount: int | None = None) -> str:
    url = f"{public_url.rstrip('/')}/topup/{quote(token, safe='')}"
    return f"{url}?{urlencode({'amount': amount})}" if amount is not None else url


def status_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/me/{quote(token, safe='')}"


def session_secret(session: Session) -> bytes:
    """This database's own random link key, created on first use, read in `session` (so a
    caller holding SQLite's write lock does not wait on a second connection)."""
    found = session.execute(
        select(link_secrets.c.secret).where(link_secrets.c.name == "buyer_links")
    ).scalar_one_or_none()
    if found is None:
        # Two processes starting at once both try; the first key wins for both.
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        session.execute(
            dialect.insert(link_secrets)
            .values(name="buyer_links", secret=secrets.token_hex(32))
            .on_conflict_do_nothing(index_elements=["name"])
        )
        found = session.execute(
            select(link_secrets.c.secret).where(link_secrets.c.name == "buyer_links")
        ).scalar_one()
    return bytes.fromhex(found)


def database_secret(factory: sessionmaker[Session]) -> bytes:
    """This database's own random link key, in a transaction of its own."""
    with factory.begin() as session:
        return session_secret(session)


def configured_signer(settings: Settings) -> LinkSigner | None:
    """The signer from `FLASHTAG_LINK_SECRET`, or None when it is unset."""
    if settings.link_secret is not None and settings.link_secret.get_secret_value():
        return LinkSigner(settings.link_secret.get_secret_value().encode("utf-8"))
    return None


def signer_for(settings: Settings, factory: sessionmaker[Session]) -> LinkSigner:
    """The signer from `FLASHTAG_LINK_SECRET`, or this database's own key when it is unset."""
    configured = configured_signer(settings)
    if configured is not None:
        return configured
    log.warning(
        "FLASHTAG_LINK_SECRET is not set: buyer links are signed with a random key kept in this "
        "database (fine for development; set FLASHTAG_LINK_SECRET in production)"
    )
    return LinkSigner(database_secret(factory))
