"""Buyer links: signed, expiring, bound to one buyer and campaign, and not forgeable."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from bot.links import (
    PURPOSES,
    ExpiredLinkError,
    InvalidLinkError,
    LinkSigner,
    Purpose,
    link_id,
    signer_for,
    status_url,
    topup_url,
)
from config.database import create_engine, session_factory
from config.settings import Settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SIGNER = LinkSigner(b"k" * 32)


def test_a_link_names_its_buyer_and_campaign_until_it_expires() -> None:
    token = SIGNER.issue("mastodon:109348", "demo", purpose="me", now=NOW, ttl=timedelta(hours=1))
    link = SIGNER.verify(token, purpose="me", now=NOW + timedelta(minutes=59))
    assert (link.buyer, link.campaign_id) == ("mastodon:109348", "demo")
    with pytest.raises(ExpiredLinkError):
        SIGNER.verify(token, purpose="me", now=NOW + timedelta(hours=1))


def test_unicode_and_separators_in_keys_survive() -> None:
    token = SIGNER.issue("x:用户.1|2", "sale-1", purpose="me", now=NOW)
    assert SIGNER.verify(token, purpose="me", now=NOW).buyer == "x:用户.1|2"
    assert "/" not in token and "+" not in token and "=" not in token


def test_another_key_or_any_changed_character_is_rejected() -> None:
    token = SIGNER.issue("mastodon:109348", "demo", purpose="me", now=NOW)
    with pytest.raises(InvalidLinkError):
        LinkSigner(b"j" * 32).verify(token, purpose="me", now=NOW)
    for i in range(len(token)):
        changed = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        with pytest.raises(InvalidLinkError):
            SIGNER.verify(changed, purpose="me", now=NOW)


def test_a_buyer_cannot_swap_in_someone_elses_payload() -> None:
    mine = SIGNER.issue("mastodon:1", "demo", purpose="me", now=NOW)
    theirs = SIGNER.issue("mastodon:2", "demo", purpose="me", now=NOW)
    spliced = theirs.split(".")[0] + "." + mine.split(".")[1]
    with pytest.raises(InvalidLinkError):
        SIGNER.verify(spliced, purpose="me", now=NOW)


@pytest.mark.parametrize("junk", ["", ".", "abc", "a.b", "é.é", "a" * 5000 + ".b", "..."])
@pytest.mark.parametrize("purpose", PURPOSES)
def test_junk_is_invalid_not_an_error(junk: str, purpose: Purpose) -> None:
    with pytest.raises(InvalidLinkError):
        SIGNER.verify(junk, purpose=purpose, now=NOW)


def test_a_status_link_never_pays_and_a_payment_link_never_shows_the_status_page() -> None:
    me = SIGNER.issue("mastodon:1", "demo", purpose="me", now=NOW)
    pay = SIGNER.issue("mastodon:1", "demo", purpose="pay", now=NOW)
    assert me != pay
    assert SIGNER.verify(me, purpose="me", now=NOW).buyer == "mastodon:1"
    assert SIGNER.verify(pay, purpose="pay", now=NOW).buyer == "mastodon:1"
    with pytest.raises(InvalidLinkError):
        SIGNER.verify(me, purpose="pay", now=NOW)
    with pytest.raises(InvalidLinkError):
        SIGNER.verify(pay, purpose="me", now=NOW)


def test_urls_and_link_ids() -> None:
    token = SIGNER.issue("mastodon:1", "demo", purpose="me", now=NOW)
    assert topup_url("https://shop.example/", token, 500) == (
        f"https://shop.example/topup/{token}?amount=500"
    )
    assert status_url("https://shop.example", token) == f"https://shop.example/me/{token}"
    assert token not in link_id(token) and len(link_id(token)) == 64


def test_configured_secret_is_used(db_url: str) -> None:
    engine = create_engine(db_url)
    settings = Settings(FLASHTAG_LINK_SECRET=SecretStr("s" * 40))
    signer = signer_for(settings, session_factory(engine))
    token = LinkSigner(b"s" * 40).issue("mastodon:1", "demo", purpose="me", now=NOW)
    assert signer.verify(token, purpose="me", now=NOW).buyer == "mastodon:1"
    engine.dispose()


def test_without_a_secret_each_database_keeps_its_own(
    db_url: str, tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(FLASHTAG_LINK_SECRET=None)
    engine = create_engine(db_url)
    with caplog.at_level(logging.WARNING, logger="bot.links"):
        first = signer_for(settings, session_factory(engine))
    assert "FLASHTAG_LINK_SECRET is not set" in caplog.text
    again = signer_for(settings, session_factory(engine))  # after a restart: same key
    token = first.issue("mastodon:1", "demo", purpose="me", now=NOW)
    assert again.verify(token, purpose="me", now=NOW).buyer == "mastodon:1"
    other = create_engine(f"sqlite:///{tmp_path}/other.db")
    from bot.schema import all_metadata

    for metadata in all_metadata():
        metadata.create_all(other)
    with pytest.raises(InvalidLinkError):
        signer_for(settings, session_factory(other)).verify(token, purpose="me", now=NOW)
    other.dispose()
    engine.dispose()
