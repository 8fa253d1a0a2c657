"""X API v2 payloads (a tweet, or a response page) as `Post` values. Pure: no I/O, no clock.

What a caller may rely on:
- `text` is the tweet text with HTML entities unescaped (X delivers `&amp;`, `&lt;`, `&gt;`).
- Entity offsets are code-point indices into the text *as delivered*, still escaped: the spans
  are cut first and only then unescaped. `body` is the text without its hashtag and mention
  spans (each replaced by a space), or None when the tweet has no `entities`.
- `hashtags` are `entities.hashtags[].tag` normalised as Mastodon does (X keeps the case and
  repeats), `mentions` are `entities.mentions[].username` lower-cased; both None when the tweet
  has no `entities` at all (not requested), and the parser then reads the text.
- The author's handle is joined from `includes.users` on `author_id`; a tweet without
  `author_id` (default fields) gets an empty author.
- An edited tweet (`edit_history_tweet_ids` longer than one) keeps the id and creation time of
  its first version, with `edited_at` = this version's time, so an edit never becomes a second
  order.
- Without `created_at`, the time is read from the snowflake id.
- A long post's whole text and entities are read from `note_tweet` when it is there.
- A retweet is a `repost`. v1.1 tweets (`id_str`, embedded `user`) are read as well.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from config.brand import normalize_hashtag
from connectors.mastodon_payload import PayloadError, parse_time
from connectors.post import Post

__all__ = ["PayloadError", "post_from_tweet", "posts_from_page", "snowflake_time", "tweets_of"]

_TWITTER_EPOCH = datetime(2010, 11, 4, 1, 42, 54, 657000, tzinfo=UTC)
_SPAN_STARTS = ("#", "＃", "@", "＠")

Users = Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]] | None


def snowflake_time(tweet_id: str) -> datetime:
    """When a tweet was created, from the timestamp its snowflake id carries."""
    if not tweet_id.isdigit() or len(tweet_id) > 20:  # ids are 64-bit
        raise PayloadError(f"not a tweet id: {tweet_id!r}")
    try:
        return _TWITTER_EPOCH + timedelta(milliseconds=int(tweet_id) >> 22)
    except OverflowError as exc:
        raise PayloadError(f"not a tweet id: {tweet_id!r}") from exc


def _users_by_id(users: Users) -> Mapping[str, Mapping[str, Any]]:
    if users is None:
        return {}
    if isinstance(users, Mapping):
        return users
    found: dict[str, Mapping[str, Any]] = {}
    for user in users:
        if isinstance(user, Mapping) and isinstance(user.get("id"), str):
            found[user["id"]] = user
    return found


def _entity_spans(entities: Mapping[str, Any], key: str, name: str) -> list[tuple[int, int, str]]:
    items = entities.get(key)
    if not isinstance(items, list):
        return []
    spans = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get(name), str):
            continue
        start, end = item.get("start"), item.get("end")
        if not isinstance(start, int) or not isinstance(end, int):
            start, end = -1, -1
        spans.append((start, end, item[name]))
    return spans


def _body(escaped: str, spans: Iterable[tuple[int, int, str]]) -> str | None:
    """The escaped text without the spans, then unescaped; None if an offset does not fit."""
    pieces: list[str] = []
    at = 0
    for start, end, _ in sorted(spans):
        if not 0 <= start < end <= len(escaped) or not escaped.startswith(_SPAN_STARTS, start):
            return None
        if start < at:  # overlapping spans: keep cutting from where we are
            start = at
        pieces.append(escaped[at:start])
        at = max(at, end)
    pieces.append(escaped[at:])
    return html.unescape(" ".join(pieces))


def _v11(tweet: Mapping[str, Any]) -> Post:
    user: Mapping[str, Any] = tweet["user"] if isinstance(tweet.get("user"), Mapping) else {}
    tweet_id = tweet.get("id_str")
    if not isinstance(tweet_id, str) or not tweet_id.isdigit():
        raise PayloadError(f"tweet id_str is missing or not numeric: {tweet_id!r}")
    entities = tweet.get("entities")
    text = tweet.get("full_text") or tweet.get("text") or ""
    if not isinstance(text, str):
        raise PayloadError("tweet text is not a string")
    try:
        created = datetime.strptime(str(tweet.get("created_at")), "%a %b %d %H:%M:%S %z %Y")
    except ValueError:
        created = snowflake_time(tweet_id)
    hashtags = mentions = None
    if isinstance(entities, Mapping):
        hashtags = tuple(
            normalize_hashtag(h["text"])
            for h in entities.get("hashtags") or []
            if isinstance(h, Mapping) and isinstance(h.get("text"), str)
        )
        mentions = tuple(
            m["screen_name"].lower()
            for m in entities.get("user_mentions") or []
            if isinstance(m, Mapping) and isinstance(m.get("screen_name"), str)
        )
    lang = tweet.get("lang")
    reply_to = tweet.get("in_reply_to_status_id_str")
    return Post(
        platform="x",
        post_id=tweet_id,
        author_id=str(user.get("id_str") or ""),
        author_handle=str(user.get("screen_name") or ""),
        created_at=created.astimezone(UTC),
        text=html.unescape(text),
        hashtags=hashtags,
        mentions=mentions,
        lang=lang if isinstance(lang, str) else None,
        reply_to=reply_to if isinstance(reply_to, str) else None,
        repost="retweeted_status" in tweet,
        raw=tweet,
    )


def post_from_tweet(tweet: Mapping[str, Any], users: Users = None) -> Post:
    """One tweet as a `Post`; `users` is `includes.users` (a list, or a mapping by id)."""
    if not isinstance(tweet, Mapping):
        raise PayloadError("a tweet must be a JSON object")
    if "id_str" in tweet or isinstance(tweet.get("user"), Mapping):
        return _v11(tweet)
    tweet_id = tweet.get("id")
    if not isinstance(tweet_id, str) or not tweet_id.isdigit():
        raise PayloadError(f"tweet id is missing or not a numeric string: {tweet_id!r}")
    escaped = tweet.get("text")
    if not isinstance(escaped, str):
        raise PayloadError("tweet has no text")
    entities = tweet.get("entities")
    note = tweet.get("note_tweet")
    if isinstance(note, Mapping) and isinstance(note.get("text"), str):
        # A long post: `text` is cut at 280 characters; the whole text and its entities
        # (offsets into that text) are in `note_tweet`.
        escaped, entities = note["text"], note.get("entities")

    hashtags = mentions = body = None
    if isinstance(entities, Mapping):
        tag_spans = _entity_spans(entities, "hashtags", "tag")
        mention_spans = _entity_spans(entities, "mentions", "username")
        hashtags = tuple(normalize_hashtag(tag) for _, _, tag in tag_spans)
        mentions = tuple(name.lower() for _, _, name in mention_spans)
        body = _body(escaped, tag_spans + mention_spans)

    created = tweet.get("created_at")
    created_at = parse_time(created) if created is not None else snowflake_time(tweet_id)
    post_id, edited_at = tweet_id, None
    history = tweet.get("edit_history_tweet_ids")
    first = history[0] if isinstance(history, list) and history else None
    if isinstance(first, str) and first != tweet_id and first.isdigit():
        post_id, edited_at = first, created_at
        created_at = snowflake_time(first)

    author_id = tweet.get("author_id")
    author_id = author_id if isinstance(author_id, str) else ""
    user = _users_by_id(users).get(author_id) or {}
    handle = user.get("username")
    referenced = tweet.get("referenced_tweets")
    kinds = {
        ref["type"]: ref.get("id")
        for ref in (referenced if isinstance(referenced, list) else [])
        if isinstance(ref, Mapping) and isinstance(ref.get("type"), str)
    }
    reply_to = kinds.get("replied_to")
    lang = tweet.get("lang")
    return Post(
        platform="x",
        post_id=post_id,
        author_id=author_id,
        author_handle=handle if isinstance(handle, str) else "",
        created_at=created_at,
        text=html.unescape(escaped),
        hashtags=hashtags,
        mentions=mentions,
        lang=lang if isinstance(lang, str) else None,
        edited_at=edited_at,
        reply_to=reply_to if isinstance(reply_to, str) else None,
        body=body,
        repost="retweeted" in kinds,
        raw=tweet,
    )


def tweets_of(page: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], Users]:
    """The tweets of a response page (`data` one object or a list) and its `includes.users`.

    A bare tweet object counts as a page of one.
    """
    if not isinstance(page, Mapping):
        raise PayloadError("a page must be a JSON object")
    if "data" not in page and ("text" in page or "id_str" in page):
        return [page], None
    data = page.get("data", page.get("statuses"))  # v2 page, or v1.1 search
    tweets = [data] if isinstance(data, Mapping) else data if isinstance(data, list) else []
    includes = page.get("includes")
    users = includes.get("users") if isinstance(includes, Mapping) else None
    return tweets, users if isinstance(users, list) else None


def posts_from_page(page: Mapping[str, Any]) -> list[Post]:
    """Every tweet of a v2 response page as a `Post`, authors joined from `includes.users`.

    A tweet that cannot be a `Post` raises `PayloadError`; a page with only `errors[]` gives [].
    """
    tweets, users = tweets_of(page)
    by_id = _users_by_id(users)
    return [post_from_tweet(tweet, by_id) for tweet in tweets]
