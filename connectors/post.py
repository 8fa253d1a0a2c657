"""The one value every platform payload becomes.

A `Post` is what the pipeline, the parser and the engine see; they never learn which platform or
transport (stream or poll) delivered it. Platform specifics ride in `raw`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

PlatformName = Literal["mastodon", "x", "text"]
Visibility = Literal["public", "unlisted", "private", "direct"]


@dataclass(frozen=True, slots=True)
class Post:
    """A post addressed (or maybe addressed) to a brand account.

    - `text` is plain text: HTML stripped (Mastodon) or entities unescaped (X).
    - `body`, when the platform located hashtags and mentions by offsets (X), is the text with
      those spans removed and then unescaped; otherwise None and the parser strips them itself.
    - `hashtags` are normalised as Mastodon's HashtagNormalizer does
      (`config.brand.normalize_hashtag`).
    - `mentions` come from the platform's structured fields, lower-cased (`user` or `user@host`
      on Mastodon, `username` on X), never scraped from HTML. None means the payload had no
      structured field, so the parser reads them from the text.
    - `edited_at` is set on an edit signal: the same post id, new content.
    - `repost` is true for a boost or retweet: someone else's words, never an order.
    """

    platform: PlatformName
    post_id: str
    author_id: str
    author_handle: str
    created_at: datetime
    text: str
    hashtags: tuple[str, ...] | None = None
    mentions: tuple[str, ...] | None = None
    lang: str | None = None
    edited_at: datetime | None = None
    reply_to: str | None = None
    visibility: Visibility = "public"
    body: str | None = None
    repost: bool = False
    raw: Mapping[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def buyer(self) -> str:
        """The buyer key used by orders and the wallet: `platform:account_id`."""
        return f"{self.platform}:{self.author_id}"

    @property
    def effective_at(self) -> datetime:
        """When this version of the post was made: its edit time, else its creation time."""
        return self.edited_at or self.created_at


@dataclass(frozen=True, slots=True)
class Deletion:
    """The author deleted a post. Ids stay strings (Mastodon sends them bare on the wire)."""

    platform: PlatformName
    post_id: str
    deleted_at: datetime | None = None


Signal = Post | Deletion
