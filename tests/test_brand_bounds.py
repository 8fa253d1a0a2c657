"""Brand files that would crash the worker or the clock are refused at load, by field and line.

Each case is the seed's xiaomi.toml with one edit a user made; `flashtag check-config` must name
the file, the field and the line, and exit 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from typer.testing import CliRunner

from bot.cli import app
from bot.clock import crontab_weekdays as clock_crontab_weekdays
from config.brand import MAX_AMOUNT, MAX_UNITS, crontab_line
from config.loader import BrandFileError, load_brand, load_brands, parse_brand

ROOT = Path(__file__).resolve().parent.parent
XIAOMI = ROOT / "config" / "brands" / "xiaomi.toml"
GOOD = XIAOMI.read_text(encoding="utf-8")
runner = CliRunner()

Edit = Callable[[str], str]


def _first(old: str, new: str) -> Edit:
    return lambda source: source.replace(old, new, 1)


def _with_job(cron: str) -> Edit:
    job = f'\n[[campaigns.jobs]]\nid = "nightly"\ncron = "{cron}"\naction = "expire_holds"\n'
    return lambda source: source + job


def _line_of(source: str, needle: str) -> int:
    for number, line in enumerate(source.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


@pytest.mark.parametrize(
    ("edit", "field", "needle", "words"),
    [
        pytest.param(
            _first("stock = 12500", "stock = 99999999999999999999999"),
            "campaigns[0].products[0].stock",
            "stock = 9999",
            str(MAX_UNITS),
            id="stock beyond the Integer column",
        ),
        pytest.param(
            _first("stock = 12500", f"stock = {MAX_UNITS + 1}"),
            "campaigns[0].products[0].stock",
            "stock = 2147483648",
            str(MAX_UNITS),
            id="stock one past the Integer column",
        ),
        pytest.param(
            _first("price = 199900", f"price = {2**63}"),
            "campaigns[0].products[0].price",
            f"price = {2**63}",
            str(MAX_AMOUNT),
            id="price beyond BigInteger",
        ),
        pytest.param(
            _first("price = 249900", "price = 5000000000000000000"),
            "campaigns[0].products[2].price",
            "price = 5000000000000000000",
            "per_buyer_limit 2",
            id="price times the per-buyer limit beyond BigInteger",
        ),
        pytest.param(
            _first("per_buyer_limit = 2", f"per_buyer_limit = {MAX_UNITS + 1}"),
            "campaigns[0].per_buyer_limit",
            "per_buyer_limit =",
            str(MAX_UNITS),
            id="per-buyer limit beyond the Integer column",
        ),
        pytest.param(
            _first("topup_max = 1000000 ", f"topup_max = {2**63} "),
            "campaigns[0].topup_max",
            "topup_max =",
            str(MAX_AMOUNT),
            id="top-up beyond BigInteger",
        ),
        pytest.param(
            _first("hold_minutes = 30", "hold_minutes = 1e300"),
            "campaigns[0].hold_minutes",
            "hold_minutes =",
            "10080",
            id="hold beyond what a date can add",
        ),
        pytest.param(
            _first('"Asia/Shanghai"', '"Mars/Olympus"'),
            "campaigns[0].timezone",
            "timezone =",
            "Mars/Olympus",
            id="unknown time zone",
        ),
        pytest.param(
            _first('"Asia/Shanghai"', '"Asia"'),
            "campaigns[0].timezone",
            "timezone =",
            "unknown time zone",
            id="time zone folder",
        ),
        pytest.param(
            _with_job("99 99 * * *"),
            "campaigns[0].jobs[0].cron",
            'cron = "99 99',
            "99",
            id="cron values out of range",
        ),
        pytest.param(
            _with_job("a b c d e"),
            "campaigns[0].jobs[0].cron",
            'cron = "a b',
            "crontab",
            id="cron words",
        ),
        pytest.param(
            _with_job("*/0 * * * *"),
            "campaigns[0].jobs[0].cron",
            'cron = "*/0',
            "Increment",
            id="cron step of zero",
        ),
        pytest.param(
            _first("price = 199900", "price = 499.00"),
            "campaigns[0].products[0].price",
            "price = 499.00",
            "TOML integer",
            id="price with a decimal point",
        ),
        pytest.param(
            _first("stock = 12500", 'stock = "100"'),
            "campaigns[0].products[0].stock",
            'stock = "100"',
            "TOML integer",
            id="stock in quotes",
        ),
        pytest.param(
            _first("stock = 12500", "stock = 1e3"),
            "campaigns[0].products[0].stock",
            "stock = 1e3",
            "TOML integer",
            id="stock as a float",
        ),
        pytest.param(
            _first("per_buyer_limit = 2", "per_buyer_limit = true"),
            "campaigns[0].per_buyer_limit",
            "per_buyer_limit = true",
            "TOML integer",
            id="per-buyer limit as a boolean",
        ),
        pytest.param(
            _first("hold_minutes = 30", "hold_minutes = inf"),
            "campaigns[0].hold_minutes",
            "hold_minutes = inf",
            "finite",
            id="infinite hold",
        ),
        pytest.param(
            _first("hold_minutes = 30", "hold_minutes = true"),
            "campaigns[0].hold_minutes",
            "hold_minutes = true",
            "TOML number",
            id="hold as a boolean",
        ),
        pytest.param(
            _first("reminder_minutes = 5", "reminder_minutes = nan"),
            "campaigns[0].reminder_minutes",
            "reminder_minutes = nan",
            "finite",
            id="reminder not a number",
        ),
        pytest.param(
            _first("progress_every_minutes = 1", "progress_every_minutes = 1.5"),
            "campaigns[0].announcements.progress_every_minutes",
            "progress_every_minutes = 1.5",
            "TOML integer",
            id="progress interval as a float",
        ),
        pytest.param(
            _first("[accounts.mastodon]", "[accounts.mastodon]\nstream = 1"),
            "accounts.mastodon.stream",
            "stream = 1",
            "true or false",
            id="switch as a number",
        ),
    ],
)
def test_values_the_processes_cannot_use_are_refused(
    tmp_path: Path, edit: Edit, field: str, needle: str, words: str
) -> None:
    source = edit(GOOD)
    assert source != GOOD
    path = tmp_path / "brand.toml"
    path.write_text(source, encoding="utf-8")

    with pytest.raises(BrandFileError) as caught:
        load_brand(path)
    error = caught.value.errors[0]
    assert (error.field, error.line) == (field, _line_of(source, needle))
    assert words in error.message

    result = runner.invoke(app, ["check-config", str(path)])
    assert result.exit_code == 1
    assert f"{path}:{error.line}: {field}: " in result.output


def test_fractional_minutes_and_the_largest_values_still_load() -> None:
    source = (
        GOOD.replace("hold_minutes = 30", "hold_minutes = 0.5")
        .replace("reminder_minutes = 5", "reminder_minutes = 0")
        .replace("stock = 12500", f"stock = {MAX_UNITS}", 1)
        .replace("per_buyer_limit = 2", "per_buyer_limit = 1")
        .replace("price = 199900", f"price = {MAX_AMOUNT}", 1)
    )
    campaign = parse_brand(source).campaigns[0]
    assert campaign.hold_minutes == 0.5 and campaign.reminder_minutes == 0
    assert campaign.products[0].stock == MAX_UNITS
    assert campaign.products[0].price == MAX_AMOUNT


@pytest.mark.parametrize(
    ("cron", "accepted"),
    [
        ("0 9 * * 1-5", True),
        ("0 0 * * 7", True),
        ("0 0 * * 0-7", True),
        ("0 9 * * 0-6", True),
        ("0 9 * * */2", True),
        ("*/15 8-20 * * *", True),
        ("0 0 last * *", True),
        ("0 9 * * mon,fri", True),
        ("99 99 * * *", False),
        ("a b c d e", False),
        ("*/0 * * * *", False),
        ("0 0 * * 8", False),
        ("0 0 L * *", False),
        ("0 0 ? * *", False),
        ("1-0 * * * *", False),
        ("0 9 * * 1-0", False),
        ("0 0 * * ²", False),
    ],
)
def test_cron_lines_are_accepted_exactly_when_the_clock_can_build_them(
    cron: str, accepted: bool
) -> None:
    """The loader's verdict, and the clock's: its trigger, built as `bot.clock` builds it."""
    try:
        crontab_line(cron)
    except ValueError:
        loader_accepts = False
    else:
        loader_accepts = True
    try:
        CronTrigger.from_crontab(clock_crontab_weekdays(cron), timezone="UTC")
    except ValueError:
        clock_accepts = False
    else:
        clock_accepts = True
    assert (loader_accepts, clock_accepts) == (accepted, accepted)


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode("utf-8"))
    assert load_brand(path).brand.id == "xiaomi"

    broken = GOOD.replace("stock = 12500", "stock = -1", 1)
    path.write_bytes(b"\xef\xbb\xbf" + broken.encode("utf-8"))
    with pytest.raises(BrandFileError) as caught:
        load_brand(path)
    assert caught.value.errors[0].line == _line_of(broken, "stock = -1")


def test_the_brand_id_pattern_is_printed_as_written(tmp_path: Path) -> None:
    path = tmp_path / "acme.toml"
    source = GOOD.replace('id = "xiaomi"', 'id = "Acme Inc"', 1)
    path.write_text(source, encoding="utf-8")
    result = runner.invoke(app, ["check-config", str(path)])
    assert result.exit_code == 1
    line = _line_of(source, 'id = "Acme Inc"')
    assert f"{path}:{line}: brand.id: " in result.output
    assert "'^[a-z0-9][a-z0-9_-]*$'" in result.output


def test_a_file_path_with_brackets_is_printed_as_written(tmp_path: Path) -> None:
    folder = tmp_path / "[bold]brands"
    folder.mkdir()
    path = folder / "xiaomi.toml"
    path.write_text(GOOD, encoding="utf-8")
    result = runner.invoke(app, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: ok" in result.output


def test_hashtags_may_be_written_with_their_hash() -> None:
    brand = parse_brand(GOOD.replace('hashtag = "MI2"', 'hashtag = "#MI2"'))
    assert brand.campaigns[0].hashtag == "MI2" and brand.campaigns[0].tag == "mi2"

    source = GOOD.replace('hashtag = "MI2"', 'hashtag = "#MI-2"')
    with pytest.raises(BrandFileError) as caught:
        parse_brand(source, "b.toml")
    [error] = caught.value.errors
    assert (error.field, error.line) == ("campaigns[0].hashtag", _line_of(source, "hashtag ="))
    assert "without '#'" not in error.message and "leading '#'" in error.message


def _write(path: Path, source: str) -> Path:
    path.write_text(source, encoding="utf-8")
    return path


def test_two_files_may_not_share_a_campaign_id(tmp_path: Path) -> None:
    other = _write(tmp_path / "other.toml", GOOD.replace('id = "xiaomi"', 'id = "other"', 1))
    line = _line_of(GOOD, 'id = "mi2"')

    result = runner.invoke(app, ["check-config", str(XIAOMI), str(other)])
    assert result.exit_code == 1
    assert f"{other}:{line}: campaigns[0].id: campaign id 'mi2'" in result.output
    assert f"{XIAOMI}:{line}" in result.output

    with pytest.raises(BrandFileError, match="campaign id 'mi2' is also defined"):
        load_brands([XIAOMI, other])


def test_a_file_named_twice_is_one_brand() -> None:
    assert len(load_brands([XIAOMI, XIAOMI.parent / ".." / "brands" / "xiaomi.toml"])) == 1
    result = runner.invoke(app, ["check-config", str(XIAOMI), str(XIAOMI)])
    assert result.exit_code == 0, result.output
