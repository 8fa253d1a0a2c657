"""What the storm benchmark measures besides the wall clock (`bot.probes`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from bot.cli import app
from bot.probes import LOCAL_HOSTS, StatementTimer, server_cpu_seconds, statement_kind
from config.database import create_engine

PG = "postgresql://postgres@127.0.0.1:5432/test"
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int, name: str, utime: int, stime: int, cutime: int, cstime: int) -> str:
    # stat(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority ...
    return f"{pid} ({name}) S 1 1 1 0 -1 4194560 10 20 0 0 {utime} {stime} {cutime} {cstime} 20"


def _proc(tmp_path: Path, processes: dict[int, str]) -> Path:
    for pid, stat in processes.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat)
    (tmp_path / "self").mkdir()  # not a process id: skipped
    return tmp_path


def test_server_cpu_counts_every_postgres_process_and_its_reaped_children(tmp_path: Path) -> None:
    proc = _proc(
        tmp_path,
        {
            10: _stat(10, "postgres", 100, 50, 2_000, 300),  # the postmaster, children reaped
            11: _stat(11, "postgres", 7, 3, 0, 0),  # a backend
            12: _stat(12, "python3", 5_000, 5_000, 0, 0),  # not the server
            13: _stat(13, "post gres) x (y", 9, 9, 0, 0),  # a name that only looks like one
        },
    )
    assert server_cpu_seconds(PG, proc=proc) == pytest.approx((150 + 2_300 + 10) / TICKS)


def test_server_cpu_is_unknown_off_this_host_off_postgres_or_without_a_server(
    tmp_path: Path,
) -> None:
    proc = _proc(tmp_path, {10: _stat(10, "postgres", 100, 0, 0, 0)})
    assert server_cpu_seconds("postgresql://postgres@db.example.com/app", proc=proc) is None
    assert server_cpu_seconds(f"sqlite:///{tmp_path / 'x.db'}", proc=proc) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert server_cpu_seconds(PG, proc=empty) is None
    assert server_cpu_seconds(PG, proc=tmp_path / "missing") is None


def test_statement_kinds_blank_literals_and_numbers() -> None:
    one = "INSERT INTO t (a, b)  VALUES (?, 'it''s 2012-10-30 04:00:00.050000', 12)"
    other = "INSERT INTO t (a, b) VALUES (?, 'another time',\n 7)"
    assert statement_kind(one) == statement_kind(other) == "INSERT INTO t (a, b) VALUES (?, '?', N)"
    assert statement_kind("SELECT x1 FROM t2") == "SELECT x1 FROM t2"


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
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 3
        assert DefaultDialect.do_commit is original
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
    for kind, row in top.items():
        assert row["total_s"] == round(timer.seconds[kind], 3)
        assert row["ms_each"] == round(timer.seconds[kind] / row["calls"] * 1000, 3)
        assert timer.seconds[kind] > 0


def test_bench_storm_reports_the_first_runs_statements() -> None:
    args = ["bench", "storm", "--posts", "2600", "--stock", "100", "--seed", "4"]
    result = CliRunner().invoke(app, [*args, "--statements", "3", "--runs", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    top = report["statements"]["top"]
    assert len(top) == 3
    assert [row["total_s"] for row in top] == sorted((row["total_s"] for row in top), reverse=True)
    inserts = [row for row in top if row["statement"].startswith("INSERT INTO order_reservations")]
    assert inserts and inserts[0]["calls"] == report["batches"]
    assert "server_cpu_s" not in report  # SQLite runs inside the writer


@pytest.mark.postgres
def test_bench_storm_on_postgresql_reports_the_servers_cpu(pg_url: str) -> None:
    if (make_url(pg_url).host or "") not in LOCAL_HOSTS:
        pytest.skip("the server's CPU is read only for a server on this host")
    args = ["bench", "storm", "--posts", "2600", "--stock", "100", "--db", pg_url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["audit"] == "ok"
    assert report["server_cpu_s"] > 0
