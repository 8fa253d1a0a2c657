"""What a replay and the storm benchmark measure besides the wall clock: the database server's
CPU, and the time the writer waits on each kind of statement.

- `server_cpu_seconds(url)`: the CPU seconds a PostgreSQL server on this host has used so far,
  read from `/proc`: every process named `postgres` (the postmaster, its background workers,
  the live backends), plus what the postmaster's reaped children used. The difference over a
  run is the server's share of it (and of anything else it did meanwhile). None when the
  database is not PostgreSQL on this host, or `/proc` does not tell.
- `StatementTimer`: while it is open, every statement any engine of this process runs is timed
  from the writer's side (sent, executed, answered; through SQLAlchemy's cursor events), and
  each commit (the dialect's `do_commit`). Statements are grouped by their text with literals
  and numbers blanked, so a batch's statement counts as one kind whatever its constants.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.default import DefaultDialect

from config.database import normalize_url

LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})
COMMIT = "COMMIT"


def server_cpu_seconds(url: str, *, proc: Path = Path("/proc")) -> float | None:
    """CPU seconds used so far by the PostgreSQL server at `url`, if it runs on this host."""
    parsed = make_url(normalize_url(url))
    if not parsed.get_backend_name().startswith("postgresql"):
        return None
    if (parsed.host or "") not in LOCAL_HOSTS:
        return None
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        entries = list(proc.iterdir())
    except (OSError, ValueError, AttributeError):
        return None
    total = 0
    found = False
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        # "pid (comm) state ppid ...": the name may hold spaces; the fields after it do not.
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        if name != "postgres":
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # utime, stime, cutime, cstime: fields 14-17 of stat(5), 12-15 counted from the state.
        total += sum(int(value) for value in fields[11:15])
        found = True
    return total / ticks if found else None


def statement_kind(statement: str) -> str:
    """A statement's text with string literals and numbers blanked, whitespace collapsed."""
    text = re.sub(r"'(?:[^']|'')*'", "'?'", statement)
    text = re.sub(r"\b\d+\b", "N", text)
    return " ".join(text.split())


class StatementTimer:
    """Seconds and calls per kind of statement, and for commits, while open (not reentrant)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._started: list[float] = []
        self._commit: Any = None

    def __enter__(self) -> StatementTimer:
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)
        event.listen(Engine, "handle_error", self._failed)
        self._commit = DefaultDialect.do_commit
        timer = self
        commit = self._commit

        def do_commit(dialect: DefaultDialect, dbapi_connection: Any) -> None:
            started = time.perf_counter()
            commit(dialect, dbapi_connection)
            timer._add(COMMIT, time.perf_counter() - started)

        DefaultDialect.do_commit = do_commit  # type: ignore[method-assign]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        event.remove(Engine, "before_cursor_execute", self._before)
        event.remove(Engine, "after_cursor_execute", self._after)
        event.remove(Engine, "handle_error", self._failed)
        DefaultDialect.do_commit = self._commit  # type: ignore[method-assign]

    def _before(self, *_: Any) -> None:
        self._started.append(time.perf_counter())

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self._started:
            self._add(statement_kind(statement), time.perf_counter() - self._started.pop())

    def _failed(self, _context: Any) -> None:
        if self._started:  # a statement that failed is not timed
            self._started.pop()

    def _add(self, kind: str, seconds: float) -> None:
        self.seconds[kind] += seconds
        self.calls[kind] += 1

    def top(self, count: int, *, width: int = 120) -> list[dict[str, Any]]:
        """The `count` kinds that took longest in all, each with its calls and mean."""
        return [
            {
                "statement": kind[:width],
                "calls": self.calls[kind],
                "total_s": round(seconds, 3),
                "ms_each": round(seconds / self.calls[kind] * 1000, 3),
            }
            for kind, seconds in sorted(self.seconds.items(), key=_by_seconds, reverse=True)[:count]
        ]


def _by_seconds(item: tuple[str, float]) -> float:
    return item[1]
