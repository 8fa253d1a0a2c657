"""What any `flashtag` command says when the brand file or the database is wrong: one line a
user can act on, exit 1, no traceback, and nothing changed."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import make_url, select, text
from sqlalchemy.exc import ArgumentError, OperationalError

from bot.cli import explain, main
from config.database import create_engine
from orders.tables import campaigns, products

XIAOMI = Path(__file__).resolve().parent.parent / "config" / "brands" / "xiaomi.toml"
POSTS = (
    '{"id": "1", "author": "fan1", "text": "#MI2 @xiaomi 1", '
    '"created_at": "2012-08-16T12:00:01+08:00"}\n'
)


def run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    failing: bool = True,
) -> str:
    """`flashtag ARGS` as the console script runs it; its standard error, once it exits 1 (or
    0, when not `failing`)."""
    monkeypatch.setattr("sys.argv", ["flashtag", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert (exited.value.code or 0) == (1 if failing else 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture
def posts(tmp_path: Path) -> Path:
    """One order post, as `flashtag replay` reads a text line."""
    path = tmp_path / "posts.jsonl"
    path.write_text(POSTS, encoding="utf-8")
    return path


def brand_file(tmp_path: Path, name: str, edit: tuple[str, str] = ("", "")) -> Path:
    text = XIAOMI.read_text(encoding="utf-8")
    old, new = edit
    if old:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_database_without_tables_says_to_run_db_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run(monkeypatch, capsys, "audit", "--db", f"sqlite:///{tmp_path / 'new.db'}")
    assert "no such table" in err
    assert "run `flashtag db upgrade`" in err


@pytest.mark.postgres
def test_a_postgresql_database_without_tables_says_the_same(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    name = f"flashtag_t_empty_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        err = run(monkeypatch, capsys, "export", "--campaign", "mi2", "--db", url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    assert "does not exist" in err
    assert "run `flashtag db upgrade`" in err


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("notaurl", "error database URL: Could not parse"),
        ("mysql://fan@localhost/shop", "no driver 'MySQLdb'"),
        ("sqlite:////no/such/folder/a.db", "error database: unable to open database file"),
    ],
)
def test_a_database_url_that_cannot_work_is_named(
    url: str, said: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert said in run(monkeypatch, capsys, "db", "upgrade", "--db", url)


def test_replay_with_a_broken_brand_file_names_the_field_and_line(
    tmp_path: Path, posts: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = brand_file(tmp_path, "broken.toml", ("stock = 12500", "stock = -3"))
    db = tmp_path / "replay.db"
    err = run(
        monkeypatch, capsys, "replay", str(posts), "--brand", str(broken), "--db", f"sqlite:///{db}"
    )
    assert err.startswith(f"error {broken}:")
    assert "stock" in err
    assert not db.exists()


def test_a_second_brand_reusing_a_campaign_id_is_refused_and_changes_nothing(
    tmp_path: Path, posts: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rival = brand_file(tmp_path, "rival.toml", ('id = "xiaomi"', 'id = "rival"'))
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = ("replay", str(posts), "--brand", str(XIAOMI), "--db", url, "--shift-to-open")
    run(monkeypatch, capsys, *first, failing=False)

    err = run(monkeypatch, capsys, "replay", str(posts), "--brand", str(rival), "--db", url)
    assert "campaign 'mi2' belongs to brand 'xiaomi'" in err
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(campaigns.c.brand_id)).scalars().all() == ["xiaomi"]
        assert set(conn.execute(select(products.c.stock)).scalars()) == {12500}
    engine.dispose()


def test_only_what_a_user_can_act_on_loses_its_traceback() -> None:
    """A bug (a statement SQLite cannot parse, a misuse of SQLAlchemy) keeps its traceback."""
    assert explain(OperationalError("SELEC 1", {}, Exception('near "SELEC": syntax error'))) is None
    assert explain(ArgumentError("Column expression expected, got object")) is None
    assert explain(ValueError("anything else")) is None
    empty = explain(OperationalError("SELECT 1", {}, Exception("")))
    assert empty is None  # nothing to go on: the traceback says more
    stale = explain(OperationalError("SELECT b", {}, Exception("no such column: b")))
    assert stale is not None and "run `flashtag db upgrade`" in stale
    locked = explain(OperationalError("BEGIN", {}, Exception("database is locked")))
    assert locked == "database: database is locked"
