"""Brand files: the examples load, and every broken file names its field and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from config.brand import normalize_hashtag
from config.loader import BrandFileError, load_brand, locate, parse_brand
from config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
XIAOMI = ROOT / "config" / "brands" / "xiaomi.toml"
DEMO = ROOT / "config" / "brands" / "demo.toml"
runner = CliRunner()


def test_xiaomi_is_the_seed_sale() -> None:
    brand = load_brand(XIAOMI)
    campaign = brand.campaign("mi2")
    assert brand.brand.name == "Xiaomi"
    assert campaign.hashtag == "MI2" and campaign.require_mention
    assert [p.sku for p in campaign.products] == [
        "MI2-16GB-BLACK",
        "MI2-16GB-WHITE",
        "MI2-32GB-BLACK",
        "MI2-32GB-WHITE",
    ]
    assert all(p.stock == 12_500 for p in campaign.products)
    assert campaign.total_stock == 50_000
    assert campaign.per_buyer_limit == 2 and campaign.hold_minutes == 30
    assert campaign.currency == "CNY" and campaign.minor_digits == 2
    assert brand.accounts.mastodon and brand.accounts.mastodon.username == "xiaomi"
    assert brand.accounts.x and brand.accounts.x.username == "xiaomi"
    black = campaign.product("MI2-32GB-BLACK").variant
    assert set(black["colour"]) == {"black", "黒", "黑", "黑色", "ブラック"}
    assert set(black["storage"]) == {"32gb", "32g"}


def test_check_config_accepts_the_examples() -> None:
    result = runner.invoke(app, ["check-config", str(XIAOMI), str(DEMO)])
    assert result.exit_code == 0, result.output
    assert "50000 units" in result.output


GOOD = XIAOMI.read_text(encoding="utf-8")


def _line_of(source: str, needle: str, occurrence: int = 1) -> int:
    count = 0
    for number, line in enumerate(source.splitlines(), start=1):
        if needle in line:
            count += 1
            if count == occurrence:
                return number
    raise AssertionError(needle)


@pytest.mark.parametrize(
    ("case", "edit", "field", "needle", "occurrence"),
    [
        (
            "negative stock",
            lambda s: s.replace("stock = 12500", "stock = -5", 3).replace(
                "stock = -5", "stock = 12500", 2
            ),
            "campaigns[0].products[2].stock",
            "stock = -5",
            1,
        ),
        (
            "unknown key",
            lambda s: s.replace("per_buyer_limit = 2", "per_buyer_limit = 2\nper_buyer_limt = 3"),
            "campaigns[0].per_buyer_limt",
            "per_buyer_limt",
            1,
        ),
        (
            "missing hashtag",
            lambda s: s.replace('hashtag = "MI2"\n', ""),
            "campaigns[0].hashtag",
            "[[campaigns]]",
            1,
        ),
        (
            "duplicate SKU",
            lambda s: s.replace('sku = "MI2-32GB-WHITE"', 'sku = "MI2-16GB-BLACK"'),
            "campaigns[0].products[3].sku",
            'sku = "MI2-16GB-BLACK"',
            2,
        ),
    ],
)
def test_broken_brand_files_name_field_and_line(
    tmp_path: Path, case: str, edit: object, field: str, needle: str, occurrence: int
) -> None:
    source = edit(GOOD)  # type: ignore[operator]
    path = tmp_path / "broken.toml"
    path.write_text(source, encoding="utf-8")
    line = _line_of(source, needle, occurrence)

    with pytest.raises(BrandFileError) as caught:
        load_brand(path)
    [error] = caught.value.errors
    assert error.field == field, case
    assert error.line == line, case

    result = runner.invoke(app, ["check-config", str(path)])
    assert result.exit_code == 1
    assert f"{path}:{line}" in result.output and field in result.output


def test_products_a_post_cannot_tell_apart_are_refused() -> None:
    same = GOOD.replace(
        'variant.colour = ["white", "白", "白色", "ホワイト"]',
        'variant.colour = ["black", "黒", "黑", "黑色", "ブラック"]',
        1,
    )
    with pytest.raises(BrandFileError) as caught:
        parse_brand(same, "same.toml")
    [error] = caught.value.errors
    assert error.field == "campaigns[0].products[1].variant"
    assert "MI2-16GB-BLACK" in error.message
    assert error.line == _line_of(same, 'variant.storage = ["16gb", "16g"]', 2)


def test_errors_from_several_files_are_all_listed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[brand\nid = 1\n", encoding="utf-8")
    missing = tmp_path / "missing.toml"
    result = runner.invoke(app, ["check-config", str(bad), str(missing), str(XIAOMI)])
    assert result.exit_code == 1
    assert f"{bad}:1" in result.output and "invalid TOML" in result.output
    assert str(missing) in result.output and "cannot read" in result.output


def test_secrets_are_refused_in_brand_files() -> None:
    source = GOOD.replace(
        'token_env = "XIAOMI_MASTODON_TOKEN"', 'token_env = "abc123-secret-token"'
    )
    with pytest.raises(BrandFileError) as caught:
        parse_brand(source, "x.toml")
    assert caught.value.errors[0].field == "accounts.mastodon.token_env"
    assert "environment variable" in caught.value.errors[0].message


def test_times_need_an_offset_and_an_order() -> None:
    naive = GOOD.replace("opens_at = 2012-10-30T12:00:00+08:00", "opens_at = 2012-10-30T12:00:00")
    with pytest.raises(BrandFileError) as caught:
        parse_brand(naive)
    assert caught.value.errors[0].field == "campaigns[0].opens_at"
    backwards = GOOD.replace(
        "closes_at = 2012-10-30T14:00:00+08:00", "closes_at = 2012-10-30T11:00:00+08:00"
    )
    with pytest.raises(BrandFileError, match="closes_at must be after opens_at"):
        parse_brand(backwards)


def test_locate_handles_dotted_keys_and_arrays_of_tables() -> None:
    source = "[[a]]\nx = 1\n[[a]]\ny.z = 2\n[[a.b]]\nw = 3\n"
    assert locate(source, ("a", 1, "y", "z")) == 4
    assert locate(source, ("a", 1, "b", 0, "w")) == 6
    assert locate(source, ("a", 0, "missing")) == 1


@pytest.mark.parametrize(
    ("typed", "normal"),
    [("MI2", "mi2"), ("ＭＩ２", "mi2"), ("Mi2", "mi2"), ("Über", "uber"), ("BLÅHAJ", "blahaj")],
)
def test_hashtags_normalise_like_mastodon(typed: str, normal: str) -> None:
    assert normalize_hashtag(typed) == normal


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("FLASHTAG_BRANDS", f"{XIAOMI},{ROOT / 'config/brands/*.toml'}")
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_123")
    settings = Settings()
    assert settings.database_url == "postgresql://u@h/db"
    assert (
        settings.stripe_secret_key
        and settings.stripe_secret_key.get_secret_value() == "sk_test_123"
    )
    assert "sk_test_123" not in repr(settings)
    assert settings.brand_paths()[0] == XIAOMI
    assert DEMO in settings.brand_paths()


def test_an_unmatched_brand_glob_names_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "/nonexistent/brands/missing.toml"
    monkeypatch.setenv("FLASHTAG_BRANDS", f"/nonexistent/brands/*.toml,{missing}")
    assert Settings().brand_paths() == [Path(missing)]


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "FLASHTAG_BRANDS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "sqlite:///flashtag.db"
    assert settings.brands == "config/brands/*.toml"
