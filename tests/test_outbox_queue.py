"""Queueing replies: what a buyer would receive, how urgently, and how publicly."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fake_connectors import SendOnlyConnector
from sqlalchemy import select
from sqlalchemy.engine import Engine

from bot import cursors
from bot.links import PURPOSES, InvalidLinkError, LinkSigner
from bot.outbox import PRIORITY, Composer, Sender, queue, queue_status
from bot.replies import load_templates
from bot.tables import outbox_messages
from config.database import session_factory
from config.loader import load_brand
from connectors.base import OutgoingMessage
from orders.outcomes import Outcome

ROOT = Path(__file__).resolve().parent.parent
BRAND = load_brand(ROOT / "config" / "brands" / "demo.toml")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SIGNER = LinkSigner(b"0123456789abcdef0123456789abcdef")
URL = "https://shop.example"


def outcome(kind: str, post_id: str = "1001", **kw: object) -> Outcome:
    fields: dict[str, object] = {
        "platform": "mastodon",
        "buyer": "mastodon:42",
        "handle": "fan@social.example",
        "campaign_id": "demo",
        "sku": "DEMO-64-BLACK",
        "quantity": 1,
        "visibility": "public",
    }
    fields.update(kw)
    return Outcome(kind=kind, post_id=post_id, **fields)  # type: ignore[arg-type]


class RecordingConnector(SendOnlyConnector):
    """Takes every message the sender hands it, instantly, and keeps them."""

    platform = "mastodon"

    def __init__(self) -> None:
        super().__init__("demo:mastodon", FixedClock())
        self.sent: list[OutgoingMessage] = []

    def send(self, message: OutgoingMessage) -> str:
        self.sent.append(message)
        return str(len(self.sent))


class FixedClock:
    def now(self) -> datetime:
        return NOW

    def sleep(self, seconds: float) -> None:
        return None


def _queue(engine: Engine, outcomes: list[Outcome]) -> int:
    with session_factory(engine).begin() as session:
        return queue(session, outcomes, brand=BRAND, now=NOW)


def _send_all(engine: Engine) -> list[OutgoingMessage]:
    """Send every queued reply as a sender does: written when claimed, most urgent first."""
    connector = RecordingConnector()
    composer = Composer([BRAND], public_url=URL, signer=SIGNER)
    sender = Sender(session_factory(engine), connector, composer=composer, clock=FixedClock())
    sender.drain()
    return connector.sent


def _rows(engine: Engine) -> list[dict[str, object]]:
    """Every message, after each queued one was written and sent."""
    _send_all(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(outbox_messages).order_by(outbox_messages.c.id))
        return [dict(r._mapping) for r in rows]


def test_a_fan_gets_each_reply_once_even_if_the_batch_is_queued_again(engine: Engine) -> None:
    batch = [
        outcome("confirmed", "1", reservation_id=7),
        outcome("waitlisted", "2", reservation_id=8, queue_position=3),
    ]
    assert _queue(engine, batch) == 2
    assert _queue(engine, batch) == 0
    rows = _rows(engine)
    assert [r["idempotency_key"] for r in rows] == ["7:confirmed", "8:waitlisted"]
    assert "number 3 on the waitlist" in str(rows[1]["text"])


def _tokens_accepted(text: str) -> list[tuple[str, str]]:
    """Every (purpose, token) in `text` that a buyer-link route would accept."""
    accepted = []
    for candidate in re.findall(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", text):
        for purpose in PURPOSES:
            try:
                SIGNER.verify(candidate, purpose=purpose, now=NOW)
            except InvalidLinkError:
                continue
            accepted.append((purpose, candidate))
    return accepted


@pytest.mark.parametrize("post", ["public", "unlisted", "private", "direct"])
@pytest.mark.parametrize("lang", ["en", "ja", "zh"])
def test_no_reply_a_stranger_can_read_carries_a_buyers_link(
    engine: Engine, post: str, lang: str
) -> None:
    # Every kind of reply, in every language, to posts of every visibility: anything not sent by
    # direct message is readable by strangers, so it must hold no token either route accepts.
    kinds = [k for k in PRIORITY if k != "promoted"]
    batch = [
        outcome(
            kind,
            str(i),
            reservation_id=i,
            lang=lang,
            visibility=post,
            amount_due=29900,
            amount=5000,
            balance=100,
            queue_position=2,
            reason="sold_out",
            hold_expires_at=NOW + timedelta(minutes=15),
        )
        for i, kind in enumerate(kinds)
    ]
    batch += [
        outcome("promoted", "p1", reservation_id=100, lang=lang, visibility=post),
        outcome(
            "promoted",
            "p2",
            reservation_id=101,
            lang=lang,
            visibility=post,
            state="awaiting_payment",
            amount_due=29900,
            hold_expires_at=NOW + timedelta(minutes=15),
        ),
    ]
    assert _queue(engine, batch) == len(batch)
    rows = _rows(engine)
    seen = set()
    for row in rows:
        text = str(row["text"])
        found = _tokens_accepted(text)
        seen |= {purpose for purpose, _ in found}
        if row["visibility"] != "direct":
            assert found == [], (row["kind"], row["visibility"], text)
            assert "/me/" not in text and "/topup/" not in text, (row["kind"], text)
    assert seen == {"me", "pay"}  # the links do go out, by direct message
    # A reply with no link still answers as publicly as the post allows (capped at unlisted).
    rejected = next(r for r in rows if r["kind"] == "rejected")
    assert rejected["visibility"] == ("unlisted" if post == "public" else post)


def test_each_link_opens_only_its_own_page(engine: Engine) -> None:
    _queue(
        engine,
        [
            outcome(
                "payment_needed",
                reservation_id=9,
                amount_due=29900,
                hold_expires_at=NOW + timedelta(minutes=15),
            ),
            outcome("confirmed", "1002", reservation_id=10),
        ],
    )
    by_kind = {r["kind"]: str(r["text"]) for r in _rows(engine)}
    pay = by_kind["payment_needed"].split(f"{URL}/topup/")[1].split("?")[0]
    me = by_kind["confirmed"].split(f"{URL}/me/")[1].split()[0]
    assert SIGNER.verify(pay, purpose="pay", now=NOW).buyer == "mastodon:42"
    assert SIGNER.verify(me, purpose="me", now=NOW).buyer == "mastodon:42"
    with pytest.raises(InvalidLinkError):
        SIGNER.verify(pay, purpose="me", now=NOW)  # /me/ refuses a payment token
    with pytest.raises(InvalidLinkError):
        SIGNER.verify(me, purpose="pay", now=NOW)  # /topup/ refuses a status token


def test_payment_links_go_only_by_direct_message(engine: Engine) -> None:
    _queue(
        engine,
        [
            outcome(
                "payment_needed",
                reservation_id=9,
                amount_due=29900,
                hold_expires_at=NOW + timedelta(minutes=15),
            ),
            outcome("confirmed", "1002", reservation_id=10),
        ],
    )
    by_kind = {r["kind"]: r for r in _rows(engine)}
    pay = by_kind["payment_needed"]
    assert pay["visibility"] == "direct"
    assert f"{URL}/topup/" in str(pay["text"]) and "USD 299.00" in str(pay["text"])
    assert "/topup/" not in str(by_kind["confirmed"]["text"])
    assert f"{URL}/me/" in str(by_kind["confirmed"]["text"])
    assert by_kind["confirmed"]["visibility"] == "direct"  # the status link is a secret too


@pytest.mark.parametrize(
    ("post", "expected"),
    [
        ("public", "unlisted"),
        ("unlisted", "unlisted"),
        ("private", "private"),
        ("direct", "direct"),
    ],
)
def test_a_reply_is_never_more_public_than_the_post(
    engine: Engine, post: str, expected: str
) -> None:
    _queue(engine, [outcome("rejected", reservation_id=1, visibility=post, reason="sold_out")])
    assert _rows(engine)[0]["visibility"] == expected


def test_the_most_urgent_reply_has_the_lowest_priority_number(engine: Engine) -> None:
    kinds = ["help", "rejected", "waitlisted", "promoted", "confirmed", "payment_needed"]
    _queue(
        engine,
        [outcome(k, str(i), reservation_id=i, reason="over_limit") for i, k in enumerate(kinds)],
    )
    by_kind = {r["kind"]: r["priority"] for r in _rows(engine)}
    ordered = sorted(by_kind, key=lambda k: by_kind[k])
    assert ordered == list(reversed(kinds))


def test_replies_follow_the_posts_language_and_fall_back_to_the_brands(engine: Engine) -> None:
    _queue(
        engine,
        [
            outcome("waitlisted", "1", reservation_id=1, lang="ja", queue_position=2),
            outcome("waitlisted", "2", reservation_id=2, lang="zh-CN", queue_position=2),
            outcome("waitlisted", "3", reservation_id=3, lang="ko", queue_position=2),
        ],
    )
    texts = {r["lang"]: str(r["text"]) for r in _rows(engine)}
    assert "キャンセル待ち" in texts["ja"]
    assert "候补" in texts["zh"]
    assert "waitlist" in texts["en"]  # Korean has no templates: the brand's English


def test_a_buyer_never_gets_the_same_text_twice(engine: Engine) -> None:
    # Five help requests from one fan, in two batches: X refuses duplicate replies.
    _queue(engine, [outcome("help", str(i), reservation_id=None) for i in range(3)])
    _queue(engine, [outcome("help", str(i), reservation_id=None) for i in range(3, 5)])
    texts = [str(r["text"]) for r in _rows(engine)]
    assert len(texts) == 5
    assert len(set(texts)) == 5
    # Another fan may get the first variant again.
    _queue(engine, [outcome("help", "99", buyer="mastodon:43", handle="other")])
    other = str(_rows(engine)[-1]["text"])
    assert other.split(URL)[0] == texts[0].split(URL)[0]


def test_ignored_and_duplicate_outcomes_send_nothing(engine: Engine) -> None:
    replayed = outcome("confirmed", "3", reservation_id=3, platform="text")  # no one to answer
    assert _queue(engine, [outcome("ignored"), outcome("duplicate", "2"), replayed]) == 0
    assert _rows(engine) == []


def test_every_language_has_every_kind_and_the_same_placeholders() -> None:
    templates = load_templates()
    english = templates["en"]
    for lang in ("ja", "zh"):
        table = templates[lang]
        assert set(table) == set(english), lang
        for kind, variants in english.items():
            if kind == "reasons":
                continue
            assert isinstance(variants, list)
            for ours, theirs in zip(variants, table[kind], strict=True):  # type: ignore[call-overload]
                for link in ("{topup_url}", "{status_url}"):
                    assert (link in ours) == (link in theirs), (lang, kind, link)


def test_status_counts_the_queue_per_priority(engine: Engine) -> None:
    _queue(
        engine,
        [
            outcome("payment_needed", "1", reservation_id=1, amount_due=100),
            outcome("confirmed", "2", reservation_id=2),
            outcome("confirmed", "3", reservation_id=3),
        ],
    )
    with session_factory(engine)() as session:
        (account,) = queue_status(session, now=NOW)
    assert account.account == "demo:mastodon"
    assert account.depth == {0: 1, 1: 2}
    assert account.eta_seconds() is None  # nothing sent yet, so no pace to go by


def test_cursors_advance_only_when_the_transaction_commits(engine: Engine) -> None:
    factory = session_factory(engine)
    with factory.begin() as session:
        cursors.save(session, "demo:mastodon", "100", at=NOW)

    def failed_batch() -> None:
        with factory.begin() as session:
            cursors.save(session, "demo:mastodon", "200", at=NOW)
            raise RuntimeError("the engine's apply failed")

    with pytest.raises(RuntimeError):
        failed_batch()
    with factory() as session:
        assert cursors.load(session, "demo:mastodon") == "100"
        assert cursors.load(session, "demo:x") is None


def test_outbox_status_command_shows_depth_and_eta(engine: Engine, db_url: str) -> None:
    from typer.testing import CliRunner

    from bot.cli import app

    now = datetime.now(UTC)
    with session_factory(engine).begin() as session:
        queue(
            session,
            [outcome("payment_needed", str(i), reservation_id=i, amount_due=100) for i in range(4)]
            + [outcome("confirmed", str(i), reservation_id=i) for i in range(10, 16)],
            brand=BRAND,
            now=now,
        )
        # Two replies went out in the last hour: the pace is 2 per hour.
        session.execute(
            outbox_messages.update()
            .where(outbox_messages.c.kind == "confirmed", outbox_messages.c.reservation_id < 12)
            .values(state="sent", platform_id="1", sent_at=now - timedelta(minutes=10))
        )
    result = CliRunner().invoke(app, ["outbox", "status", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "demo:mastodon: 8 queued" in result.output
    assert "action needed" in result.output and "4" in result.output
    assert "ETA at current pace 4h00m" in result.output  # 8 waiting at 2 per hour


def test_links_in_replies_open_the_buyers_own_pages(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.links import signer_for
    from config.settings import Settings, get_settings

    monkeypatch.delenv("FLASHTAG_LINK_SECRET", raising=False)
    get_settings.cache_clear()

    factory = session_factory(engine)
    settings = Settings(FLASHTAG_LINK_SECRET=None)  # the database's own key, as in development
    with factory.begin() as session:
        queue(session, [outcome("confirmed", reservation_id=1)], brand=BRAND, now=NOW)
    connector = RecordingConnector()
    Sender(
        factory, connector, composer=Composer([BRAND], public_url=URL), clock=FixedClock()
    ).drain()
    text = str(_rows(engine)[0]["text"])
    token = text.split(f"{URL}/me/")[1].split()[0]
    link = signer_for(settings, factory).verify(token, purpose="me", now=NOW)
    assert link.buyer == "mastodon:42" and link.campaign_id == "demo"
    get_settings.cache_clear()


def test_a_reply_is_queued_as_facts_and_written_when_claimed(engine: Engine) -> None:
    expires = NOW + timedelta(minutes=15)
    _queue(
        engine,
        [outcome("payment_needed", reservation_id=9, amount_due=29900, hold_expires_at=expires)],
    )
    with engine.connect() as conn:
        (queued,) = conn.execute(select(outbox_messages)).mappings()
    assert queued["text"] is None and queued["text_hash"] is None
    assert queued["visibility"] == "direct"  # decided when queued: the kind carries a link
    (sent,) = _send_all(engine)
    assert "USD 299.00" in sent.text and f"{URL}/topup/" in sent.text
    (row,) = _rows(engine)
    assert row["text"] == sent.text and row["state"] == "sent" and row["lang"] == "en"


def test_a_reply_whose_brand_is_not_loaded_fails_with_the_reason(engine: Engine) -> None:
    _queue(engine, [outcome("confirmed", reservation_id=1)])
    connector = RecordingConnector()
    other = Composer([], public_url=URL, signer=SIGNER)  # this sender knows no brand
    Sender(session_factory(engine), connector, composer=other, clock=FixedClock()).drain()
    assert connector.sent == []
    with engine.connect() as conn:
        (row,) = conn.execute(select(outbox_messages)).mappings()
    assert row["state"] == "failed" and "demo" in str(row["error"])


def test_a_reply_that_cannot_be_written_fails_alone(engine: Engine) -> None:
    # Twelve unwritable replies ahead of a good one: each fails with its reason, and the sender
    # goes on to the next instead of stopping (or crashing the worker on every restart).
    _queue(engine, [outcome("payment_needed", str(i), reservation_id=i) for i in range(13)])
    with engine.begin() as conn:
        conn.execute(
            outbox_messages.update()
            .where(outbox_messages.c.reservation_id < 12)
            .values(facts="not json")
        )
    sent = _send_all(engine)
    assert len(sent) == 1
    with engine.connect() as conn:
        rows = list(conn.execute(select(outbox_messages).order_by(outbox_messages.c.id)).mappings())
    assert [r["state"] for r in rows] == ["failed"] * 12 + ["sent"]
    assert all("cannot write the reply" in str(r["error"]) for r in rows[:12])
