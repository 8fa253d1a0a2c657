"""`flashtag parse`: run the order parser over JSON lines, one decision line per input line.

Input formats: `text` (`{"post_id", "author", "text", "lang", "created_at"}`, mentions and
hashtags read from the text), `mastodon` (a Status, or a Notification whose `status` is used)
and `twitter` (an X API v2 tweet, or a response page with one output line per tweet).
A line that is not valid JSON, or not a post of the chosen format, gives
`{"line": N, "decision": "reject", "reason": "malformed_input"}` and the run goes on.
A summary (counts per decision and per reason) goes to stderr as one JSON object.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson
import typer

from config.loader import BrandFileError, load_brand
from connectors.mastodon_payload import (
    POST_NOTIFICATION_TYPES,
    PayloadError,
    is_notification,
    parse_time,
    post_from_status,
)
from connectors.post import Post
from connectors.x_payload import post_from_tweet, tweets_of
from orders.parser import (
    MALFORMED_INPUT,
    NO_STATUS,
    NOT_ADDRESSED,
    Grammar,
    compile_grammar,
    detect_lang,
    parse,
)

_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)

Line = dict[str, Any]


class InputFormat(StrEnum):
    text = "text"
    mastodon = "mastodon"
    twitter = "twitter"


def _malformed(number: int) -> Line:
    return {"line": number, "decision": "reject", "reason": MALFORMED_INPUT}


def _ignored(post_id: object, reason: str, lang: str | None) -> Line:
    return {
        "post_id": post_id,
        "decision": "ignore",
        "sku": None,
        "quantity": None,
        "amount": None,
        "reason": reason,
        "lang": lang,
    }


def decide(post: Post, grammar: Grammar) -> Line:
    """The output line for one post."""
    decision = parse(post, grammar)
    return {
        "post_id": post.post_id,
        "decision": decision.decision,
        "sku": decision.sku,
        "quantity": decision.quantity,
        "amount": decision.amount,
        "reason": decision.reason,
        "lang": decision.lang,
    }


def post_from_text_record(record: Mapping[str, Any]) -> Post:
    """A `text`-format record as a Post; raises PayloadError when it has no usable text/id."""
    text = record.get("text")
    post_id = record.get("post_id")
    if not isinstance(text, str):
        raise PayloadError("a text record needs a string `text`")
    if isinstance(post_id, bool) or not isinstance(post_id, (str, int)):
        raise PayloadError("a text record needs a `post_id`")
    author = record.get("author")
    author = str(author) if isinstance(author, (str, int)) and not isinstance(author, bool) else ""
    handle = record.get("handle")
    created = record.get("created_at")
    lang = record.get("lang")
    return Post(
        platform="text",
        post_id=str(post_id),
        author_id=author,
        author_handle=handle if isinstance(handle, str) else author,
        created_at=parse_time(created) if isinstance(created, str) else _NO_TIME,
        text=text,
        lang=lang if isinstance(lang, str) else None,
        raw=record,
    )


def _text_lines(payload: Any, number: int, grammar: Grammar) -> list[Line]:
    if not isinstance(payload, Mapping):
        return [_malformed(number)]
    return [decide(post_from_text_record(payload), grammar)]


def _mastodon_lines(payload: Any, number: int, grammar: Grammar) -> list[Line]:
    if not isinstance(payload, Mapping):
        return [_malformed(number)]
    if is_notification(payload):
        status = payload.get("status")
        if status is None:
            return [_ignored(payload.get("id"), NO_STATUS, grammar.fallback_lang)]
        post = post_from_status(status)
        if payload.get("type") not in POST_NOTIFICATION_TYPES:
            return [_ignored(post.post_id, NOT_ADDRESSED, detect_lang(post.text))]
        return [decide(post, grammar)]
    return [decide(post_from_status(payload), grammar)]


def _twitter_lines(payload: Any, number: int, grammar: Grammar) -> list[Line]:
    if not isinstance(payload, Mapping):
        return [_malformed(number)]
    tweets, users = tweets_of(payload)
    if not tweets:
        return [_ignored(None, NO_STATUS, grammar.fallback_lang)]
    lines: list[Line] = []
    for tweet in tweets:
        try:
            lines.append(decide(post_from_tweet(tweet, users), grammar))
        except PayloadError:
            lines.append(_malformed(number))
    return lines


_READERS = {
    InputFormat.text: _text_lines,
    InputFormat.mastodon: _mastodon_lines,
    InputFormat.twitter: _twitter_lines,
}


def run(lines: Iterable[bytes], grammar: Grammar, fmt: InputFormat) -> Iterator[Line]:
    """Output lines for input lines, in order; never raises on bad input."""
    reader = _READERS[fmt]
    for number, raw in enumerate(lines, start=1):
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield _malformed(number)
            continue
        try:
            yield from reader(payload, number, grammar)
        except (PayloadError, TypeError, ValueError, KeyError, AttributeError):
            yield _malformed(number)


def summarize(out: Iterable[Line], sink: IO[bytes]) -> dict[str, Any]:
    """Write each line to `sink` as JSON and return the counts."""
    decisions: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for line in out:
        sink.write(orjson.dumps(line) + b"\n")
        decisions[line["decision"]] += 1
        if line.get("reason"):
            reasons[line["reason"]] += 1
    return {
        "lines": sum(decisions.values()),
        "decisions": dict(decisions.most_common()),
        "reasons": dict(reasons.most_common()),
    }


def parse_command(
    brand: Path = typer.Option(..., "--brand", help="Brand file (TOML)"),  # noqa: B008
    campaign: str | None = typer.Option(None, "--campaign", help="Campaign id (default: first)"),
    fmt: InputFormat = typer.Option(  # noqa: B008
        InputFormat.text, "--format", help="Input format of each JSON line"
    ),
) -> None:
    """Read JSON lines on stdin; write one decision per line (JSON) to stdout, in order."""
    try:
        loaded = load_brand(brand)
    except BrandFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    try:
        chosen = loaded.campaign(campaign)
    except KeyError as exc:
        typer.echo(f"{brand}: no campaign {campaign!r}", err=True)
        raise typer.Exit(2) from exc
    grammar = compile_grammar(loaded, chosen)
    summary = summarize(run(sys.stdin.buffer, grammar, fmt), sys.stdout.buffer)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(orjson.dumps(summary) + b"\n")


def register(app: typer.Typer) -> None:
    app.command("parse")(parse_command)
