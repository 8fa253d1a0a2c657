"""A replay's reading, decoding and parsing in a process of its own, feeding the writer.

One interpreter runs one thread of Python at a time, so a replay that reads, parses and commits
in one process leaves the second core of a small machine idle. Here a child process runs the
deciding stage (`bot.feed.ParseJob.batches`) and sends each decided batch over a bounded queue
to the parent, which only commits (`bot.feed.commit_batches`): the two stages overlap.

- The child starts from the forkserver (spawn where there is none), never as a fork of the
  writer: it shares none of the writer's database connections, threads or locks. As with any
  such start, the program's main module must be importable without running it (the usual
  `if __name__ == "__main__"` guard; the `flashtag` script has it).
- The queue holds `DEPTH` batches. A parser that runs ahead waits (bounded memory), and a
  writer that runs ahead waits for the next batch.
- A batch crosses as plain tuples of the commands' fields, each distinct `Decision` once per
  batch; the writer rebuilds the `Command` values, equal to those the parser made.
- The child's error (an unreadable file, say; malformed lines are only counted) is raised again
  in the writer, with the child's traceback as its cause. The child never outlives the
  `ParserProcess`: leaving the `with` block early (an error in the writer, Ctrl-C) terminates it,
  and a child whose parent is gone stops on its own.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import operator
import pickle
import queue
import resource
import signal
import time
import traceback
from collections.abc import Iterator
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

from bot.collector import tune_collector
from bot.feed import DecidedBatch, ParseJob, ReadTotals
from orders.commands import Command, Decision

DEPTH = 4  # decided batches in flight between the parser and the writer
POLL_S = 0.5  # how often a waiting side checks that the other is still there
STOP_WAIT_S = 5.0

_FIELDS = tuple(field.name for field in dataclasses.fields(Command))
_values = operator.attrgetter(*_FIELDS)
_DECISION_AT = _FIELDS.index("decision")
_READ_FIELDS = tuple(field.name for field in dataclasses.fields(ReadTotals))
_INTERNED_LIMIT = 10_000  # distinct decisions remembered (bounded memory)


class ParserProcessError(RuntimeError):
    """The parser process failed (its traceback is the message) or ended without a word."""


# -- the wire format -------------------------------------------------------------------------------


def pack(commands: list[Command], interned: dict[Decision, Decision]) -> list[tuple[Any, ...]]:
    """Commands as tuples of their fields, in `Command`'s field order.

    Equal decisions become one object (remembered in `interned`), which pickle sends once per
    batch: a storm has a few dozen distinct decisions among a thousand posts.
    """
    if len(interned) > _INTERNED_LIMIT:
        interned.clear()
    rows = []
    for command in commands:
        row = _values(command)
        decision = interned.setdefault(command.decision, command.decision)
        rows.append((*row[:_DECISION_AT], decision, *row[_DECISION_AT + 1 :]))
    return rows


def unpack(rows: list[tuple[Any, ...]]) -> list[Command]:
    """The commands `pack` made the rows of."""
    return [Command(*row) for row in rows]


def _totals(read: ReadTotals) -> tuple[int, ...]:
    return tuple(getattr(read, name) for name in _READ_FIELDS)


# -- the child -------------------------------------------------------------------------------------


def _send(channel: Any, message: tuple[Any, ...]) -> None:
    """Put `message` on the channel, waiting while it is full, unless the writer is gone.

    Pickled here, not by the queue's feeder thread, which would contend with the parsing for
    this process's interpreter lock.
    """
    parent = multiprocessing.parent_process()
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    while True:
        try:
            channel.put(data, timeout=POLL_S)
            return
        except queue.Full:
            if parent is not None and not parent.is_alive():
                channel.cancel_join_thread()
                raise SystemExit(1) from None


def _parse(job: ParseJob, channel: Any) -> None:
    """The child's body: decide the file batch by batch and send each batch, then the totals."""
    # Ctrl-C reaches the whole process group; the writer decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_collector()
    try:
        read = ReadTotals()
        interned: dict[Decision, Decision] = {}
        for batch in job.batches(read):
            rows = pack(batch.commands, interned)
            _send(channel, ("batch", batch.moment, batch.seconds, _totals(batch.read), rows))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        _send(channel, ("done", _totals(read), cpu, usage.ru_maxrss / 1024))
    except SystemExit:
        raise
    except BaseException as exc:
        text = traceback.format_exc()
        error: BaseException | None = exc
        try:  # sent as itself when it survives the trip, else as its traceback alone
            pickle.loads(pickle.dumps(exc))  # noqa: S301
        except Exception:
            error = None
        _send(channel, ("error", error, text))


# -- the writer's side -----------------------------------------------------------------------------


def _context() -> BaseContext:
    """The forkserver (its children start clean and fast), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # Only effective before the forkserver starts: it imports these once for all children.
        # Each child still runs the main module again (Python 3.11 never preloads `__main__`);
        # for the `flashtag` script that imports bot.cli, so with bot.cli preloaded a child
        # starts in milliseconds instead of importing every command's modules (half a second).
        context.set_forkserver_preload(["__main__", "bot.cli", __name__])
        return context
    return multiprocessing.get_context("spawn")


def warm_up() -> None:
    """Start the forkserver now, in the background, if it is not running yet.

    It imports the program once (about a second of CPU); started early, that overlaps whatever
    the caller does next, and the parser process itself then starts in milliseconds.
    """
    if _context().get_start_method() == "forkserver":
        forkserver.ensure_running()


class ParserProcess:
    """The deciding stage of `job` in a child process; `batches()` yields what it decided.

    Use as a context manager: leaving it stops the child, whatever happened.
    """

    def __init__(self, job: ParseJob, *, depth: int = DEPTH) -> None:
        context = _context()
        self._channel: Any = context.Queue(maxsize=depth)
        self._process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_parse, args=(job, self._channel), name="flashtag-parser", daemon=True
        )
        self._started = False
        self._finished = False
        self.cpu = 0.0  # the child's CPU seconds, known once it finished
        self.peak_rss_mb = 0.0  # the child's peak resident set size, likewise
        self.waited = 0.0  # seconds the writer waited for a decided batch
        self.pid: int | None = None  # the child's process id, once started

    def __enter__(self) -> ParserProcess:
        self._process.start()
        self._started = True
        self.pid = self._process.pid
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def batches(self, read: ReadTotals) -> Iterator[DecidedBatch]:
        """The decided batches, in file order; `read` gets the reading's totals at the end."""
        while True:
            message = self._receive()
            if message[0] == "batch":
                _, moment, seconds, totals, rows = message
                yield DecidedBatch(unpack(rows), moment, seconds, ReadTotals(*totals))
            elif message[0] == "done":
                _, totals, self.cpu, self.peak_rss_mb = message
                for name, value in zip(_READ_FIELDS, totals, strict=True):
                    setattr(read, name, value)
                self._finished = True
                return
            else:
                _, error, text = message
                self._finished = True
                failure = ParserProcessError(f"the parser process failed:\n{text}")
                if error is None:
                    raise failure
                raise error from failure

    def _receive(self) -> tuple[Any, ...]:
        started = time.perf_counter()
        data = self._next_message()
        self.waited += time.perf_counter() - started
        # Bytes this process's own child pickled: trusted like the code that made them.
        message: tuple[Any, ...] = pickle.loads(data)  # noqa: S301
        return message

    def _next_message(self) -> bytes:
        while True:
            try:
                data: bytes = self._channel.get(timeout=POLL_S)
                return data
            except queue.Empty:
                if self._process.is_alive():
                    continue
            # Gone: whatever it sent before it exited is in the pipe already.
            try:
                data = self._channel.get(timeout=POLL_S)
                return data
            except queue.Empty:
                raise ParserProcessError(
                    f"the parser process ended without a word (exit code {self._process.exitcode})"
                ) from None

    def close(self) -> None:
        """Stop the child (at once, unless it finished) and release the channel."""
        if not self._started:
            return
        self._started = False
        process = self._process
        if self._finished:
            process.join(STOP_WAIT_S)
        if process.is_alive():
            process.terminate()
            process.join(STOP_WAIT_S)
        if process.is_alive():
            process.kill()
            process.join()
        process.close()
        self._channel.close()
        self._channel.join_thread()
