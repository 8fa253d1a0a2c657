"""What a replay and the storm benchmark measure besides the wall clock: the database server's
CPU, and the time the writer waits on each kind of statement.

- `postmaster_of(engine)` finds the PostgreSQL server an engine talks to among this host's
  processes (the parent of its backend), and `server_cpu_seconds(postmaster)` the CPU seconds
  that server has used so far, read from `/proc`: the postmaster's own and what its reaped
  children used, plus its live children's (backends, background workers). The difference over
  a run is the server's share of it, and of whatever else the server did meanwhile. None where
  the server is not on this host, or `/proc` does not tell (another machine, a container).
- `StatementTimer`: while it is open, every statement any engine of this process runs is timed
  from the writer's side (sent, run and answered: the server's work, the round trip and the
  driver's own), and each commit (the dialect's `do_commit`). Statements are grouped by their
  text with literals and numbers blanked, so a batch's statement counts as one kind whatever
  its constants.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from sqlalchemy import Table, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.orm import Session

from orders import bulk_copy

LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})
COMMIT = "COMMIT"
PROC = Path("/proc")


# -- the server's CPU ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stat:
    name: str
    parent: int
    ticks: int  # utime + stime + cutime + cstime


def _stat(proc: Path, pid: int | str) -> _Stat | None:
    try:
        line = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None  # gone meanwhile, or not ours to read
    # "pid (comm) state ppid ...": the name may hold spaces and parentheses; the fields after
    # its last ")" do not. utime, stime, cutime, cstime are stat(5)'s fields 14-17.
    fields = line[line.rfind(")") + 2 :].split()
    try:
        return _Stat(
            name=line[line.find("(") + 1 : line.rfind(")")],
            parent=int(fields[1]),
            ticks=sum(int(value) for value in fields[11:15]),
        )
    except (IndexError, ValueError):
        return None


def postmaster_of(engine: Engine, *, proc: Path = PROC) -> int | None:
    """The process id of the PostgreSQL server `engine` talks to, if it runs on this host."""
    if engine.dialect.name != "postgresql" or (engine.url.host or "") not in LOCAL_HOSTS:
        return None
    with engine.connect() as conn:
        backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    found = _stat(proc, backend)
    if found is None or found.name != "postgres":
        return None
    parent = _stat(proc, found.parent)
    if parent is None or parent.name != "postgres":
        return None
    return found.parent


def server_cpu_seconds(postmaster: int | None, *, proc: Path = PROC) -> float | None:
    """CPU seconds used so far by the server whose postmaster is `postmaster`, and its children.

    A child that exits between reading it and reading the postmaster moves its time into the
    postmaster's reaped children's: the postmaster is read before and after its children, and
    the reading is taken again (up to three times) when it changed meanwhile.
    """
    if postmaster is None:
        return None
    try:
        ticks_per_second = os.sysconf("SC_CLK_TCK")
        pids = [entry.name for entry in proc.iterdir() if entry.name.isdigit()]
    except (OSError, ValueError):
        return None
    total = 0
    for _ in range(3):
        first = _stat(proc, postmaster)
        if first is None:
            return None
        children = 0
        for pid in pids:
            child = _stat(proc, pid)
            if child is not None and child.parent == postmaster:
                children += child.ticks
        last = _stat(proc, postmaster)
        if last is None:
            return None
        total = last.ticks + children
        if last.ticks == first.ticks:
            break
    return total / ticks_per_second


# -- statements, timed from the writer ---------------------------------------------------------


def statement_kind(statement: str) -> str:
    """A statement's text with string literals and numbers blanked, whitespace collapsed."""
    blanked = re.sub(r"'(?:[^']|'')*'", "'?'", statement)
    blanked = re.sub(r"(?<![A-Za-z])\d+", "N", blanked)  # `%(id__0)s` too; not `t2`
    return " ".join(blanked.split())


class StatementTimer:
    """Seconds and calls per kind of statement, and for commits, while open.

    One timer is open at a time in a process: it patches `DefaultDialect.do_commit`, and
    `orders.bulk_copy.copy_rows`, whose COPY SQLAlchemy's cursor events do not see.
    Start times are kept per connection (SQLAlchemy's own recipe), so statements of other
    threads' connections, or one that failed, do not pair with another's end.
    """

    _open: ClassVar[bool] = False

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._commit: Any = None
        self._copy_rows: Any = None

    def __enter__(self) -> StatementTimer:
        if StatementTimer._open:
            raise RuntimeError("a StatementTimer is already open in this process")
        StatementTimer._open = True
        commit: Callable[[DefaultDialect, Any], None] = DefaultDialect.do_commit
        self._commit = commit
        timer = self

        def do_commit(dialect: DefaultDialect, dbapi_connection: Any) -> None:
            started = time.perf_counter()
            commit(dialect, dbapi_connection)
            timer._add(COMMIT, time.perf_counter() - started)

        DefaultDialect.do_commit = do_commit  # type: ignore[method-assign]
        copy_rows = bulk_copy.copy_rows
        self._copy_rows = copy_rows

        def timed_copy_rows(
            session: Session,
            table: Table,
            names: tuple[str, ...],
            rows: Sequence[Sequence[Any]],
            extra: tuple[Any, ...] = (),
        ) -> int:
            started = time.perf_counter()
            try:
                return copy_rows(session, table, names, rows, extra)
            finally:
                kind = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
                timer._add(kind, time.perf_counter() - started)

        bulk_copy.copy_rows = timed_copy_rows
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            DefaultDialect.do_commit = self._commit  # type: ignore[method-assign]
            bulk_copy.copy_rows = self._copy_rows
        finally:
            StatementTimer._open = False
            event.remove(Engine, "before_cursor_execute", self._before)
            event.remove(Engine, "after_cursor_execute", self._after)

    @staticmethod
    def _before(conn: Any, *_: Any) -> None:
        conn.info.setdefault("statement_timer", []).append(time.perf_counter())

    def _after(self, conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        started = conn.info.get("statement_timer")
        if started:  # a statement that failed left its start below this one's: harmless
            self._add(statement_kind(statement), time.perf_counter() - started.pop())

    def _add(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.seconds[kind] += seconds
            self.calls[kind] += 1

    def top(self, count: int, *, width: int = 160) -> list[dict[str, Any]]:
        """The `count` kinds that took longest in all, each with its calls and mean."""
        ranked = sorted(self.seconds.items(), key=itemgetter(1), reverse=True)[:count]
        return [
            {
                "statement": kind[:width],
                "calls": self.calls[kind],
                "total_s": round(seconds, 3),
                "ms_each": round(seconds / self.calls[kind] * 1000, 3),
            }
            for kind, seconds in ranked
        ]
