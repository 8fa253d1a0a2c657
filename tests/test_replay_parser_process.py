"""A replay that parses in a process of its own ends with the very database of a one-process
replay, and its parser process never outlives it, whatever goes wrong on either side."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.bench import reset_tables, run_audit, run_storm
from bot.feed import ParseJob, ReadTotals, ReplayResult, replay
from bot.parser_process import ParserProcess, ParserProcessError, pack, unpack
from bot.pipeline import BatchReport, Source
from bot.storm import StormSpec, scaled_brand, storm, write_jsonl
from bot.tables import outbox_messages
from config.brand import Brand
from config.database import create_engine, session_factory
from config.loader import load_brand
from orders.commands import Command, Decision
from orders.tables import reservations

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def brand() -> Brand:
    return scaled_brand(load_brand(ROOT / "config" / "brands" / "xiaomi.toml"), 60)


@pytest.fixture
def storm_file(tmp_path: Path, brand: Brand) -> Path:
    """A storm that sells out 26:1, with a broken line and a blank one among the posts."""
    path = tmp_path / "storm.jsonl"
    write_jsonl(storm(brand, StormSpec(posts=1_560, seed=21)), path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[700:700] = [b"{not json\n", b"\n", b'{"post_id": "x"}\n']
    path.write_bytes(b"".join(lines))
    return path


def _stored(url: str) -> dict[str, Any]:
    """Each post's reservations and the outbox's messages per kind, as stored."""
    engine = create_engine(url)
    try:
        with session_factory(engine)() as session:
            columns = ("post_id", "part", "sku", "state", "quantity", "reason", "hold_expires_at")
            by_post = sorted(
                tuple(str(value) for value in row)
                for row in session.execute(select(*(reservations.c[name] for name in columns)))
            )
            messages: dict[str, int] = dict(
                session.execute(
                    select(outbox_messages.c.kind, func.count()).group_by(outbox_messages.c.kind)
                ).all()
            )
    finally:
        engine.dispose()
    return {"reservations": by_post, "messages": messages}


def _replay(path: Path, brand: Brand, url: str, *, parser_process: bool) -> ReplayResult:
    reset_tables(url)
    return replay(
        path, brand, url=url, batch_size=100, platform="mastodon", parser_process=parser_process
    )


def test_a_parser_process_gives_the_database_of_one_process(
    db_url: str, storm_file: Path, brand: Brand
) -> None:
    alone = _replay(storm_file, brand, db_url, parser_process=False)
    alone_stored = _stored(db_url)
    assert run_audit(db_url) == []

    split = _replay(storm_file, brand, db_url, parser_process=True)
    split_stored = _stored(db_url)
    assert run_audit(db_url) == []

    assert split.parser_process and not alone.parser_process
    assert split.database == alone.database
    assert split.fed.outcomes == alone.fed.outcomes
    assert (split.fed.posts, split.fed.batches) == (alone.fed.posts, alone.fed.batches)
    assert split.read == alone.read
    assert split.read.malformed == 2 and split.read.posts == 1_560
    assert split_stored == alone_stored
    # The storm did what a storm does: sold out, waitlisted the rest, queued the replies.
    stock = {p.sku: p.stock for p in brand.campaign().products}
    assert split.database["units_allocated"] == stock
    assert split.fed.outcomes["waitlisted"] > 0 and split.fed.outcomes["duplicate"] > 0
    assert sum(split_stored["messages"].values()) > 0
    assert split.parser_cpu > 0


def test_progress_sees_the_reading_advance_batch_by_batch(
    tmp_path: Path, storm_file: Path, brand: Brand
) -> None:
    url = f"sqlite:///{tmp_path / 'progress.db'}"
    seen: dict[bool, list[tuple[int, int]]] = {}
    for parser_process in (False, True):
        seen[parser_process] = []

        def on_batch(read: ReadTotals, report: BatchReport, into: bool = parser_process) -> None:
            seen[into].append((read.posts, read.lines))

        reset_tables(url)
        replay(
            storm_file,
            brand,
            url=url,
            batch_size=500,
            on_batch=on_batch,
            parser_process=parser_process,
        )
    assert seen[True] == seen[False]
    assert [posts for posts, _ in seen[True]] == [500, 1_000, 1_500, 1_560]


def test_commands_cross_between_processes_unchanged() -> None:
    at = datetime(2012, 10, 30, 4, 0, 1, 123456, tzinfo=UTC)
    topup = Decision(decision="topup", amount=5_000, reason=None, lang="ja")
    order = Decision(decision="order", sku="MI2-16GB-BLACK", quantity=2, lang="en")
    commands = [
        Command("mastodon", "1", "mastodon:7", "fan7", at, order, "mi2"),
        Command("x", "2", "x:8", "fan8", at, topup, "mi2", event="edit", visibility="unlisted"),
        Command("mastodon", "3", "mastodon:9", "fan9", at, dataclasses.replace(order), "mi2"),
    ]
    interned: dict[Decision, Decision] = {}
    rows = pickle.loads(pickle.dumps(pack(commands, interned)))

    assert unpack(rows) == commands
    assert rows[0][5] is rows[2][5]  # equal decisions cross as one object


def _job(path: Path, brand: Brand, batch_size: int = 100) -> ParseJob:
    return ParseJob(path, "text", brand, Source(brand.brand.id, "text"), batch_size=batch_size)


def _parsers() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name == "flashtag-parser"]


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_the_parser_process_decides_what_this_process_would(storm_file: Path, brand: Brand) -> None:
    here, there = ReadTotals(), ReadTotals()
    expected = list(_job(storm_file, brand).batches(here))
    with ParserProcess(_job(storm_file, brand)) as parser:
        got = list(parser.batches(there))
    assert [b.commands for b in got] == [b.commands for b in expected]
    assert [(b.moment, b.read) for b in got] == [(b.moment, b.read) for b in expected]
    assert there == here
    assert parser.pid is not None and _gone(parser.pid)


def test_an_unreadable_file_fails_in_the_writer_with_the_parsers_traceback(
    tmp_path: Path, brand: Brand
) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(FileNotFoundError) as failed:
        replay(tmp_path / "missing.jsonl", brand, url=url)
    cause = failed.value.__cause__
    assert isinstance(cause, ParserProcessError)
    assert "Traceback" in str(cause) and "missing.jsonl" in str(cause)
    assert not _parsers()


@pytest.mark.parametrize("failure", [RuntimeError("the writer broke"), KeyboardInterrupt()])
def test_the_parser_process_ends_when_the_writer_fails(
    tmp_path: Path, storm_file: Path, brand: Brand, failure: BaseException
) -> None:
    url = f"sqlite:///{tmp_path / 'broken.db'}"
    children: list[int] = []

    def on_batch(read: ReadTotals, report: BatchReport) -> None:
        children.extend(p.pid for p in _parsers() if p.pid)
        raise failure

    with pytest.raises(type(failure)):
        # Small batches: the parser is still busy (the queue full) when the writer fails.
        replay(storm_file, brand, url=url, batch_size=10, on_batch=on_batch)
    assert len(children) == 1
    assert _gone(children[0])
    assert not _parsers()


def test_a_parser_process_that_dies_is_an_error_not_a_hang(storm_file: Path, brand: Brand) -> None:
    with ParserProcess(_job(storm_file, brand, batch_size=10)) as parser:
        batches = parser.batches(ReadTotals())
        next(batches)
        assert parser.pid is not None
        os.kill(parser.pid, signal.SIGKILL)
        with pytest.raises(ParserProcessError, match="ended without a word"):
            list(batches)


def test_the_storm_benchmark_reports_each_process_and_the_same_results(brand: Brand) -> None:
    split = run_storm(posts=2_600, stock=100, seed=4, brand=brand, runs=1)
    alone = run_storm(posts=2_600, stock=100, seed=4, brand=brand, runs=1, parser_process=False)

    assert split["parser_process"] is True and alone["parser_process"] is False
    assert split["parser_cpu_s"] > 0 and split["parser_peak_rss_mb"] > 0
    assert split["writer_wait_s"] >= 0 and split["cpu_s"] > 0
    assert "parser_cpu_s" not in alone and "parser_peak_rss_mb" not in alone
    for key in ("units_allocated", "reservations", "decisions", "duplicates", "audit"):
        assert split[key] == alone[key], key
    assert split["audit"] == "ok"
