"""Real recorded X payloads become Posts: offsets into the escaped text, authors from includes."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.x_payload import (
    PayloadError,
    post_from_tweet,
    posts_from_page,
    snowflake_time,
    tweets_of,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real"


def body(name: str) -> Any:
    return json.loads((FIXTURES / "twitter" / name).read_text(encoding="utf-8"))["body"]


def test_reply_with_escaped_ampersand_offsets_cut_before_unescaping() -> None:
    (post,) = posts_from_page(body("v2_tweet_reply_hashtags_html_escaped_excerpt_twarc.json"))
    assert post.text.startswith("@ThatTimWalker @BorisJohnson Remainers & pro EU media")
    assert post.hashtags == ("brexit", "eu")
    assert post.mentions == ("thattimwalker", "borisjohnson")
    assert post.body is not None
    # Every hashtag and mention span is gone, and only those: the words between them stay.
    assert "#" not in post.body and "@" not in post.body
    assert "Remainers & pro EU media make up their own reasons why" in post.body
    assert "voters chose to leave the" in post.body
    assert post.author_handle == "GaryRumbell"
    assert post.reply_to is not None and post.reply_to.isdigit()
    assert post.lang == "en"


def test_offsets_are_code_points_into_escaped_text() -> None:
    # "&amp;" before the tag shifts it by 4 in the escaped text; an emoji outside the BMP
    # counts as one code point (two UTF-16 units).
    escaped = "🔥 a &amp; b #MI2 @xiaomi 32gb"
    start = escaped.index("#MI2")
    mention = escaped.index("@xiaomi")
    tweet = {
        "id": "1576994789110992896",
        "text": escaped,
        "entities": {
            "hashtags": [{"start": start, "end": start + 4, "tag": "MI2"}],
            "mentions": [{"start": mention, "end": mention + 7, "username": "xiaomi"}],
        },
    }
    post = post_from_tweet(tweet)
    assert post.text == "🔥 a & b #MI2 @xiaomi 32gb"
    assert post.body is not None and post.body.split() == ["🔥", "a", "&", "b", "32gb"]
    assert post.hashtags == ("mi2",) and post.mentions == ("xiaomi",)


def test_a_long_posts_whole_text_comes_from_note_tweet() -> None:
    whole = "@xiaomi " + "please " * 40 + "#MI2 32gb black x2"
    start = whole.index("#MI2")
    tweet = {
        "id": "1576994789110992896",
        "text": whole[:277] + "…",
        "note_tweet": {
            "text": whole,
            "entities": {
                "hashtags": [{"start": start, "end": start + 4, "tag": "MI2"}],
                "mentions": [{"start": 0, "end": 7, "username": "xiaomi"}],
            },
        },
    }
    post = post_from_tweet(tweet)
    assert post.text == whole
    assert post.hashtags == ("mi2",)
    assert post.body is not None and post.body.endswith("32gb black x2")


def test_offsets_that_do_not_fit_leave_body_empty_for_the_parser() -> None:
    tweet = {
        "id": "1576994789110992896",
        "text": "a &amp; b #MI2",
        "entities": {"hashtags": [{"start": 6, "end": 10, "tag": "MI2"}]},  # unescaped offsets
    }
    post = post_from_tweet(tweet)
    assert post.body is None
    assert post.hashtags == ("mi2",)


def test_every_recorded_entity_span_is_removed_from_body() -> None:
    checked = 0
    for path in sorted((FIXTURES / "twitter").glob("v2_*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))["body"]
        tweets, users = tweets_of(data)
        for tweet in tweets:
            if "entities" not in tweet or "text" not in tweet:
                continue
            post = post_from_tweet(tweet, users)
            assert post.body is not None, path.name
            for tag in tweet["entities"].get("hashtags", []):
                escaped = tweet["text"][tag["start"] : tag["end"]]
                assert html.unescape(escaped)[1:] == tag["tag"]
                checked += 1
    assert checked >= 8


def test_hangul_hashtags_keep_their_script_and_lose_their_case() -> None:
    (post,) = posts_from_page(body("v2_tweet_korean_hashtags_excerpt_twarc.json"))
    assert post.hashtags is not None
    assert "원호" in post.hashtags and "잇츠라이브" in post.hashtags
    assert "notextnocall" in post.hashtags  # X keeps "NoTextNoCall"; we fold it
    assert post.text.startswith("RT @itsLIVEofficial: <COMING UP NEXT>")
    assert post.repost


def test_author_is_joined_from_includes_users() -> None:
    posts = posts_from_page(body("v2_search_all_hashtag_mention_includes_twarc.json"))
    (post,) = posts
    assert post.author_id == "1379899464345923590"
    assert post.author_handle == "LachiVeronica"
    assert post.buyer == "x:1379899464345923590"
    assert post.created_at == datetime(2021, 5, 18, 19, 24, 56, tzinfo=UTC)
    assert post.lang == "und"


def test_users_may_be_given_as_a_mapping_by_id() -> None:
    page = body("v2_search_all_hashtag_mention_includes_twarc.json")
    users = {u["id"]: u for u in page["includes"]["users"]}
    assert post_from_tweet(page["data"][0], users).author_handle == "LachiVeronica"


def test_an_edited_tweet_keeps_the_first_versions_id() -> None:
    page = body("v2_edited_tweet_twarc.json")
    (post,) = posts_from_page(page)
    (tweet,) = page["data"]
    first, latest = tweet["edit_history_tweet_ids"]
    assert tweet["id"] == latest
    assert post.post_id == first
    assert post.edited_at == datetime(2022, 10, 3, 17, 57, 11, tzinfo=UTC)
    original = next(t for t in page["includes"]["tweets"] if t["id"] == first)
    recorded = datetime.fromisoformat(original["created_at"])
    assert abs(post.created_at - recorded) < timedelta(seconds=1)


def test_a_retweet_is_a_repost() -> None:
    posts = posts_from_page(body("v2_tweet_lookup_mentions_with_ids_twarc.json"))
    assert posts and all(p.repost for p in posts if p.text.startswith("RT @"))


def test_default_fields_tweets_get_time_from_the_snowflake_and_no_author() -> None:
    posts = posts_from_page(body("v2_search_recent_tweepy.json"))
    assert len(posts) == 10
    for post in posts:
        # These tweets' text is the time they were sent, e.g. "2022-10-07 22:42:12.637103 tweepy".
        sent = datetime.fromisoformat(post.text.split(" tweepy")[0]).replace(tzinfo=UTC)
        assert abs(post.created_at - sent) < timedelta(seconds=1)
        assert post.author_id == "" and post.hashtags is None and post.body is None


def test_snowflake_time_matches_a_recorded_created_at() -> None:
    page = body("v2_tweet_reply_hashtags_html_escaped_excerpt_twarc.json")
    tweet = page["data"][0] if isinstance(page["data"], list) else page["data"]
    recorded = datetime.fromisoformat(tweet["created_at"])
    assert abs(snowflake_time(tweet["id"]) - recorded) < timedelta(seconds=1)


def test_partial_errors_page_without_data_gives_no_posts() -> None:
    page = body("v2_partial_errors_excerpt_twarc.json")
    assert page["errors"]
    assert posts_from_page(page) == []


def test_v11_tweets_are_read_too() -> None:
    posts = posts_from_page(body("v11_search_tweets_tweepy.json"))
    assert len(posts) == 15
    tagged = next(p for p in posts if p.hashtags)
    assert tagged.hashtags == ("data", "tweets", "python", "twitter")
    assert tagged.author_handle == "curated_data"
    assert tagged.created_at == datetime(2019, 7, 12, 15, 15, 1, tzinfo=UTC)
    assert sum(p.repost for p in posts) == 6


@pytest.mark.parametrize(
    "broken",
    [
        None,
        [],
        {},
        {"text": "hi"},
        {"id": 123, "text": "hi"},
        {"id": "abc", "text": "hi"},
        {"id": "1", "text": None},
        {"id_str": "x", "text": "hi", "user": {}},
        {"id": "1", "text": "hi", "created_at": "today"},
    ],
)
def test_unusable_tweets_raise_payload_error_only(broken: Any) -> None:
    with pytest.raises(PayloadError):
        post_from_tweet(broken)
