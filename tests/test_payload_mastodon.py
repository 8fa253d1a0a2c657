"""Real recorded Mastodon payloads become the Post the parser and the engine rely on."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.mastodon_payload import (
    PayloadError,
    html_to_text,
    post_from_notification,
    post_from_status,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / "mastodon" / name).read_text(encoding="utf-8"))


def stream_events() -> list[dict[str, Any]]:
    return fixture("stream_user_events_local.json")["events"]  # type: ignore[no-any-return]


def test_local_mention_html_becomes_plain_text_with_entities_unescaped() -> None:
    notification = stream_events()[1]["data"]
    post = post_from_notification(notification)
    assert post is not None
    # <p>, the h-card <span>/<a> markup and &#39; are gone; the words stay.
    assert post.text == "@mastodonpy_test beep beep I'm a jeep"
    assert post.mentions == ("mastodonpy_test",)
    assert post.post_id == "117024236408130890"


def test_paragraphs_and_line_breaks_become_spaces() -> None:
    html = "<p>@<span>xiaomi</span> #<span>MI2</span><br>32GB<br/>black</p><p>x2 &amp; thanks</p>"
    assert html_to_text(html) == "@xiaomi #MI2 32GB black x2 & thanks"


def test_hashtags_come_from_tags_name_not_the_html_spelling() -> None:
    post = post_from_status(fixture("status_remote_tags_mentions_html_edited_de.json")["body"])
    assert "#ThisIsAHashtag" in post.text
    assert post.hashtags == ("thisisahashtag",)
    assert post.mentions == ("halcy@icosahedron.website",)
    hungary = post_from_status(fixture("status_remote_hashtag_case_hungary_excerpt.json")["body"])
    assert hungary.hashtags == ("hungary",)


def test_tag_names_are_normalised_like_mastodon_even_if_a_server_did_not() -> None:
    status = stream_events()[0]["data"]
    names = [{"name": n} for n in ("mi2", "Über", "ＭＩ２", "MI2", "blåhaj", "mi_2")]
    post = post_from_status({**status, "tags": names})
    assert post.hashtags == ("mi2", "uber", "mi2", "mi2", "blahaj", "mi_2")


def test_bonfire_plain_link_mentions_come_from_the_mentions_field() -> None:
    status = fixture("status_remote_bonfire_plain_mentions_excerpt.json")["body"]
    assert 'class="u-url mention"' not in status["content"]
    post = post_from_status(status)
    assert post.mentions == ("yosh@toot.yosh.is", "halcy", "jamey@toot.cat")
    assert post.lang is None  # Bonfire declared no language


def test_declared_language_is_kept_as_declared() -> None:
    post = post_from_status(fixture("status_remote_tags_mentions_html_edited_de.json")["body"])
    assert post.lang == "de"  # English words, declared German: the parser decides what to do


def test_an_edit_keeps_id_and_creation_time_and_sets_edited_at() -> None:
    original, edited = stream_events()[0]["data"], stream_events()[4]["data"]
    assert stream_events()[4]["event"] == "status.update"
    before, after = post_from_status(original), post_from_status(edited)
    assert before.post_id == after.post_id == "117024236332527350"
    assert before.created_at == after.created_at
    assert before.edited_at is None
    assert after.edited_at == datetime(2026, 8, 2, 5, 22, 24, 192000, tzinfo=UTC)
    assert after.effective_at == after.edited_at
    assert after.text == "only real animals respond."


def test_remote_edited_status_has_edited_at() -> None:
    post = post_from_status(fixture("status_remote_tags_mentions_html_edited_de.json")["body"])
    assert post.created_at == datetime(2023, 5, 28, 12, 6, 50, tzinfo=UTC)
    assert post.edited_at == datetime(2023, 5, 28, 12, 9, 44, tzinfo=UTC)


def test_null_status_notifications_give_no_post() -> None:
    page = fixture("notifications_mastodon_social_status_null.json")["body"]
    posts = [post_from_notification(n) for n in page]
    assert [p is None for p in posts].count(True) == 39
    (kept,) = [p for p in posts if p is not None]
    assert kept.visibility == "direct"
    assert kept.author_handle == "latencyobs@icosahedron.website"


def test_notifications_about_the_bots_own_posts_give_no_post() -> None:
    mention = stream_events()[1]["data"]
    for kind in ("favourite", "reblog", "poll"):
        assert post_from_notification({**mention, "type": kind}) is None
    for kind in ("mention", "status", "update"):
        assert post_from_notification({**mention, "type": kind}) is not None


def test_a_boost_is_a_repost() -> None:
    status = stream_events()[0]["data"]
    boost = {**status, "id": "9", "content": "", "tags": [], "mentions": [], "reblog": status}
    assert post_from_status(boost).repost
    assert not post_from_status(status).repost


def test_ids_are_strings_times_are_aware_utc_and_visibility_is_kept() -> None:
    page = fixture("notifications_mentions_local.json")["body"]
    post = post_from_notification(page[0])
    assert post is not None
    assert post.platform == "mastodon"
    assert isinstance(post.post_id, str) and isinstance(post.author_id, str)
    assert post.created_at.tzinfo is not None and post.created_at.utcoffset().total_seconds() == 0
    assert post.buyer == f"mastodon:{post.author_id}"
    reply = post_from_status(fixture("status_post_reply_local.json")["body"])
    assert reply.reply_to is not None


def test_unknown_visibility_is_treated_as_direct() -> None:
    status = stream_events()[0]["data"]
    assert post_from_status({**status, "visibility": "limited"}).visibility == "direct"


@pytest.mark.parametrize(
    "broken",
    [
        None,
        [],
        "status",
        {},
        {"id": "1", "created_at": "2026-01-01T00:00:00Z", "content": "x"},  # no account
        {"id": "1", "account": {"id": "2"}, "content": "x"},  # no time
        {"id": "1", "account": {"id": "2"}, "created_at": "yesterday", "content": "x"},
        {"id": None, "account": {"id": "2"}, "created_at": "2026-01-01T00:00:00Z"},
        {"id": "1", "account": {"id": "2"}, "created_at": "2026-01-01T00:00:00Z", "tags": 3},
        {"id": "1", "account": {"id": "2"}, "created_at": "2026-01-01T00:00:00Z", "content": 5},
    ],
)
def test_unusable_payloads_raise_payload_error_only(broken: Any) -> None:
    with pytest.raises(PayloadError):
        post_from_status(broken)


def test_every_recorded_status_converts() -> None:
    count = 0
    for path in sorted((FIXTURES / "mastodon").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        body = data.get("body")
        items = body if isinstance(body, list) else [body]
        if isinstance(body, dict) and "statuses" in body:
            items = body["statuses"]
        for item in items:
            # (StatusEdit revisions in the history files have no id: they are not posts.)
            if isinstance(item, dict) and {"id", "content", "account"} <= item.keys():
                post = post_from_status(item)
                assert "<" not in post.text or "&lt;" in item["content"]
                count += 1
    assert count >= 10
