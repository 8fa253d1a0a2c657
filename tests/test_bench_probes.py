"""What the storm benchmark measures besides the wall clock (`bot.probes`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from bot.cli import app
from bot.probes import (
    LOCAL_HOSTS,
    StatementTimer,
    postmaster_of,
    server_cpu_seconds,
    statement_kind,
)
from config.database import create_engine
from orders import bulk_copy

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(
    pid: int, name: str, parent: int, utime: int, stime: int, cutime: int, cstime: int
) -> str:
    # stat(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority ...
    return (
        f"{pid} ({name}) S {parent} 1 1 0 -1 4194560 10 20 0 0 {utime} {stime} {cutime} {cstime} 20"
    )


def _proc(tmp_path: Path, processes: dict[int, str]) -> Path:
    for pid, stat in processes.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat)
    (tmp_path / "self").mkdir()  # not a process id: skipped
    return tmp_path


def test_server_cpu_counts_the_postmaster_its_reaped_children_and_its_live_ones(
    tmp_path: Path,
) -> None:
    proc = _proc(
        tmp_path,
        {
            10: _stat(10, "postgres", 1, 100, 50, 2_000, 300),  # the postmaster
            11: _stat(11, "postgres", 10, 7, 3, 0, 0),  # a backend
            12: _stat(12, "postgres", 10, 1, 1, 0, 0),  # the checkpointer
            20: _stat(20, "postgres", 1, 900, 900, 900, 900),  # another cluster's postmaster
            21: _stat(21, "postgres", 20, 500, 500, 0, 0),  # and its backend
            30: _stat(30, "python3", 10, 5_000, 5_000, 0, 0),  # a child, whatever its name
            31: _stat(31, "post gres) S 10 (x", 1, 9, 9, 0, 0),  # only looks like a child
        },
    )
    assert server_cpu_seconds(10, proc=proc) == pytest.approx((2_450 + 10 + 2 + 10_000) / TICKS)


def test_server_cpu_is_unknown_without_the_server(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {10: _stat(10, "postgres", 1, 100, 0, 0, 0)})
    assert server_cpu_seconds(None, proc=proc) is None
    assert server_cpu_seconds(99, proc=proc) is None  # not running (any more)
    assert server_cpu_seconds(10, proc=tmp_path / "missing") is None


def test_postmaster_is_found_only_for_postgresql_on_this_host(tmp_path: Path) -> None:
    sqlite = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    remote = create_engine("postgresql://postgres@db.example.com/app")
    try:
        assert postmaster_of(sqlite) is None
        assert postmaster_of(remote) is None  # without connecting
    finally:
        sqlite.dispose()
        remote.dispose()


@pytest.mark.postgres
def test_postmaster_is_the_parent_of_the_engines_backend(pg_url: str, tmp_path: Path) -> None:
    engine = create_engine(pg_url)
    try:
        if (engine.url.host or "") not in LOCAL_HOSTS:
            pytest.skip("the server runs on another host")
        postmaster = postmaster_of(engine)
        if postmaster is None:
            pytest.skip("this host's /proc does not show the server (a container, say)")
        with engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        stat = Path(f"/proc/{backend}/stat").read_text()
        assert int(stat[stat.rfind(")") + 2 :].split()[1]) == postmaster
        before = server_cpu_seconds(postmaster)
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM generate_series(1, 3000000)")).scalar_one()
        after = server_cpu_seconds(postmaster)
        assert before is not None and after is not None
        assert after - before > 0.05  # the count is the server's work
        # Elsewhere on this host: no server found.
        assert postmaster_of(engine, proc=_proc(tmp_path, {})) is None
    finally:
        engine.dispose()


def test_statement_kinds_blank_literals_and_numbers() -> None:
    one = "INSERT INTO t (a, b)  VALUES (?, 'it''s 2012-10-30 04:00:00.050000', 12)"
    other = "INSERT INTO t (a, b) VALUES (?, 'another time',\n 7)"
    assert statement_kind(one) == statement_kind(other) == "INSERT INTO t (a, b) VALUES (?, '?', N)"
    assert statement_kind("SELECT x1 FROM t2") == "SELECT x1 FROM t2"
    assert statement_kind("VALUES (%(id__0)s), (%(id__11)s)") == "VALUES (%(id__N)s), (%(id__N)s)"


def test_statement_timer_counts_statements_and_commits_while_open(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'timed.db'}")
    original = DefaultDialect.do_commit
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (n INTEGER)"))
        with StatementTimer() as timer:
            for n in range(3):
                with engine.begin() as conn:
                    conn.execute(text(f"INSERT INTO t VALUES ({n})"))
            with pytest.raises(OperationalError), engine.begin() as conn:
                conn.execute(text("SELECT * FROM missing"))
            time.sleep(0.5)  # the failed statement's start must not pair with the next's end
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 3
        assert DefaultDialect.do_commit is original
        assert not StatementTimer._open
        with engine.begin() as conn:  # after closing: not counted
            conn.execute(text("INSERT INTO t VALUES (9)"))
    finally:
        engine.dispose()
    top = {row["statement"]: row for row in timer.top(10)}
    assert set(top) == {
        "BEGIN IMMEDIATE",
        "INSERT INTO t VALUES (N)",
        "COMMIT",
        "SELECT count(*) FROM t",
    }
    assert top["BEGIN IMMEDIATE"]["calls"] == 5  # flashtag's SQLite transactions, each timed
    assert top["INSERT INTO t VALUES (N)"]["calls"] == 3
    assert top["COMMIT"]["calls"] == 3  # the failed transaction rolled back
    assert top["SELECT count(*) FROM t"]["calls"] == 1
    assert sum(timer.seconds.values()) < 0.5  # the sleep between statements is in none
    for kind, row in top.items():
        assert row["total_s"] == round(timer.seconds[kind], 3)
        assert row["ms_each"] == round(timer.seconds[kind] / row["calls"] * 1000, 3)
        assert timer.seconds[kind] > 0


def test_a_statement_timer_is_closed_whatever_happens_inside_and_opens_once(
    tmp_path: Path,
) -> None:
    original = DefaultDialect.do_commit
    original_copy = bulk_copy.copy_rows
    timer = StatementTimer()
    patched = []

    def fail_inside() -> None:
        with timer:
            patched.append(DefaultDialect.do_commit is not original)
            patched.append(bulk_copy.copy_rows is not original_copy)
            with pytest.raises(RuntimeError, match="already open"), StatementTimer():
                pass
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail_inside()
    assert patched == [True, True]
    assert DefaultDialect.do_commit is original
    assert bulk_copy.copy_rows is original_copy
    engine = create_engine(f"sqlite:///{tmp_path / 'after.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert timer.top(5) == []
    with StatementTimer():  # and it can be opened again
        pass


def test_bench_storm_reports_the_first_runs_statements() -> None:
    args = ["bench", "storm", "--posts", "2600", "--stock", "100", "--seed", "4", "--batch", "1000"]
    result = CliRunner().invoke(app, [*args, "--statements", "3", "--runs", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    top = report["statements"]["top"]
    assert len(top) == 3
    assert [row["total_s"] for row in top] == sorted((row["total_s"] for row in top), reverse=True)
    inserts = [row for row in top if row["statement"].startswith("INSERT INTO order_reservations")]
    assert report["batches"] == 3
    assert inserts and inserts[0]["calls"] == report["batches"]
    assert "server_cpu_s" not in report  # SQLite runs inside the writer


def test_bench_storm_refuses_profile_and_statements_together() -> None:
    args = ["bench", "storm", "--posts", "100", "--profile", "5", "--statements", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "choose one" in " ".join(result.output.replace("│", " ").split())


@pytest.mark.postgres
def test_bench_storm_on_postgresql_reports_the_servers_cpu(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        if postmaster_of(engine) is None:
            pytest.skip("the server's CPU is read only for a server this host's /proc shows")
    finally:
        engine.dispose()
    args = ["bench", "storm", "--posts", "2600", "--stock", "100", "--db", pg_url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["audit"] == "ok"
    assert report["server_cpu_s"] > 0


@pytest.mark.postgres
def test_the_statements_on_postgresql_include_the_copies(pg_url: str) -> None:
    """The engine's inserts go by COPY there, which SQLAlchemy's cursor events do not see."""
    args = ["bench", "storm", "--posts", "2600", "--stock", "100", "--db", pg_url]
    result = CliRunner().invoke(app, [*args, "--statements", "30", "--batch", "1000"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    calls = {row["statement"].split(" (")[0]: row["calls"] for row in report["statements"]["top"]}
    assert report["batches"] == 3
    assert calls["COPY order_reservations"] == report["batches"]
    assert calls["COPY order_posts"] == report["batches"]
