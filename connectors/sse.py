"""Server-sent events, parsed from raw bytes without a socket.

Mastodon's streaming API speaks SSE: `event: <name>` and `data: <payload>` lines, a blank line
ending each event, and comment lines (`:)`, `:thump`) as heartbeats. Payloads stay text here: a
`delete` carries a bare status id (`data: 117024236332527350`) that must stay a string, so JSON
decoding is the caller's choice per event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event; `name` is None for a heartbeat (comment line)."""

    name: str | None
    data: str = ""


HEARTBEAT = SSEEvent(None)


class SSEParser:
    """Incremental parser: `feed(chunk)` yields the events completed by that chunk."""

    def __init__(self) -> None:
        self._buffer = b""  # the unfinished last line
        self._lines: deque[bytes] = deque()  # complete lines not yet parsed
        self._name: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        # One split per chunk, not one copy of the buffer per line; lines wait in a queue, so a
        # consumer that stops mid-chunk loses none of them.
        if b"\n" in chunk:
            *lines, self._buffer = (self._buffer + chunk).split(b"\n")
            self._lines.extend(lines)
        else:
            self._buffer += chunk
        pending = self._lines
        while pending:
            line = pending.popleft().rstrip(b"\r").decode("utf-8", errors="replace")
            event = self._line(line)
            if event is not None:
                yield event

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if self._name is None and not self._data:
                return None
            event = SSEEvent(self._name or "message", "\n".join(self._data))
            self._name, self._data = None, []
            return event
        if line.startswith(":"):
            return HEARTBEAT
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        return None


def iter_events(chunks: Iterable[bytes]) -> Iterator[SSEEvent]:
    """Events from an iterable of byte chunks (e.g. `response.iter_content(None)`)."""
    parser = SSEParser()
    for chunk in chunks:
        if chunk:
            yield from parser.feed(chunk)
