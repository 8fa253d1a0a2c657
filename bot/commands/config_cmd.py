"""`flashtag check-config`: validate brand files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from config.loader import check_brands


def _plain_console(*, stderr: bool = False) -> Console:
    # Errors quote user text (`[a-z0-9]` patterns, paths, `:name:`): print it as written, with no
    # rich markup, emoji codes or highlighting applied to it.
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False)


def check_config(
    files: list[Path] = typer.Argument(..., help="Brand files (TOML) to validate"),  # noqa: B008
) -> None:
    """Validate brand files; exit 1 listing every error with its file, field and line.

    Several files are also checked against each other: campaign ids must be unique across them.
    """
    out = _plain_console()
    err = _plain_console(stderr=True)
    loaded, errors = check_brands(files)
    for error in errors:
        err.print(Text.assemble(("error", "red"), " ", str(error)), soft_wrap=True)
    for item in loaded:
        brand = item.brand
        for campaign in brand.campaigns:
            skus = ", ".join(f"{p.sku}={p.stock}" for p in campaign.products)
            out.print(
                f"{item.path}: ok: brand {brand.brand.id}, campaign {campaign.id} "
                f"#{campaign.hashtag}, {campaign.total_stock} units ({skus})",
                soft_wrap=True,
            )
    if errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("check-config")(check_config)
