"""Mastodon payloads (Status, Notification) as `Post` values. Pure: no I/O, no clock.

What a caller may rely on:
- `text` is the status HTML as plain text: `<p>` and `<br>` become spaces, other tags go, and
  entities are unescaped (`&#39;` -> `'`).
- `hashtags` come from `tags[].name` (already Mastodon-normalised; normalised again to be sure)
  and `mentions` from `mentions[].acct`, lower-cased; the HTML is never scraped for them,
  because their markup differs by server software (Bonfire sends plain links).
- An edit keeps the status id and `created_at` and sets `edited_at`.
- A boost (`reblog` set) is a `repost`: the booster's post carries someone else's words.
- `post_from_notification` gives None when the notification carries no fan's post: a null
  `status` (deleted since), or a type whose status is the bot's own (favourite, reblog, poll).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from config.brand import normalize_hashtag
from connectors.post import Post, Visibility

__all__ = [
    "POST_NOTIFICATION_TYPES",
    "PayloadError",
    "html_to_text",
    "post_from_notification",
    "post_from_status",
]

# Notification types whose `status` is somebody else's post addressed to (or edited for) us.
POST_NOTIFICATION_TYPES = frozenset({"mention", "status", "update"})

_VISIBILITY: Mapping[str, Visibility] = {
    "public": "public",
    "unlisted": "unlisted",
    "private": "private",
    "direct": "direct",
}
_BREAKS_RE = re.compile(r"<\s*(?:br|/?p)(?:\s[^>]*)?/?\s*>", re.IGNORECASE)
_TAG_RE = re.compile(r"<[^>]*>")


class PayloadError(ValueError):
    """A payload that cannot become a `Post` (not an object, or no id/author/time)."""


def html_to_text(content: str) -> str:
    """Mastodon status HTML as plain text, one line, whitespace collapsed."""
    if "<" in content:
        content = _TAG_RE.sub("", _BREAKS_RE.sub(" ", content))
    if "&" in content:
        content = html.unescape(content)
    return " ".join(content.split())


def parse_time(value: object) -> datetime:
    """An ISO 8601 timestamp as an aware UTC datetime (naive ones are taken as UTC)."""
    if not isinstance(value, str):
        raise PayloadError(f"not a timestamp: {value!r}")
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None or moment.utcoffset() is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise PayloadError(f"not a timestamp: {value!r}") from exc


def _ident(value: object, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise PayloadError(f"{what} is missing or not an id: {value!r}")
    return str(value)


def _names(items: object, key: str) -> tuple[str, ...] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        raise PayloadError(f"expected a list of objects with {key!r}")
    names: list[str] = []
    for item in items:
        if isinstance(item, Mapping) and isinstance(item.get(key), str):
            names.append(item[key])
    return tuple(names)


def _tag(name: str) -> str:
    # tags[].name is already normalised by the server; only check the common case cheaply.
    if name.isascii() and name.isalnum() and not any(c.isupper() for c in name):
        return name
    return normalize_hashtag(name)


def post_from_status(status: Mapping[str, Any]) -> Post:
    """One Mastodon Status entity as a `Post`; raises `PayloadError` when it cannot be one."""
    if not isinstance(status, Mapping):
        raise PayloadError("a status must be a JSON object")
    account = status.get("account")
    if not isinstance(account, Mapping):
        raise PayloadError("status has no account")
    content = status.get("content")
    if content is not None and not isinstance(content, str):
        raise PayloadError("status content is not a string")
    tags = _names(status.get("tags"), "name")
    mentions = _names(status.get("mentions"), "acct")
    edited = status.get("edited_at")
    language = status.get("language")
    reply_to = status.get("in_reply_to_id")
    acct = account.get("acct")
    return Post(
        platform="mastodon",
        post_id=_ident(status.get("id"), "status id"),
        author_id=_ident(account.get("id"), "account id"),
        author_handle=acct if isinstance(acct, str) else "",
        created_at=parse_time(status.get("created_at")),
        text=html_to_text(content or ""),
        hashtags=None if tags is None else tuple(_tag(t) for t in tags),
        mentions=None if mentions is None else tuple(m.lower() for m in mentions),
        lang=language if isinstance(language, str) else None,
        edited_at=parse_time(edited) if edited is not None else None,
        reply_to=None if reply_to is None else str(reply_to),
        visibility=_VISIBILITY.get(str(status.get("visibility")), "direct"),
        repost=status.get("reblog") is not None,
        raw=status,
    )


def post_from_notification(notification: Mapping[str, Any]) -> Post | None:
    """The fan's post a notification carries, or None (null status, or not a fan's post)."""
    if not isinstance(notification, Mapping):
        raise PayloadError("a notification must be a JSON object")
    status = notification.get("status")
    if status is None:
        return None
    kind = notification.get("type", "mention")
    if not isinstance(kind, str) or kind not in POST_NOTIFICATION_TYPES:
        return None
    return post_from_status(status)


def is_notification(payload: Mapping[str, Any]) -> bool:
    """True for a Notification entity, False for a Status."""
    return "type" in payload and "content" not in payload
