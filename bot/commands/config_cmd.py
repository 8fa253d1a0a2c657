"""`flashtag check-config`: validate brand files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from config.loader import BrandFileError, load_brand


def check_config(
    files: list[Path] = typer.Argument(..., help="Brand files (TOML) to validate"),  # noqa: B008
) -> None:
    """Validate brand files; exit 1 listing every error with its file, field and line."""
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    failed = False
    for path in files:
        try:
            brand = load_brand(path)
        except BrandFileError as exc:
            failed = True
            for error in exc.errors:
                err.print(f"[red]error[/red] {error}", markup=True, soft_wrap=True)
            continue
        for campaign in brand.campaigns:
            skus = ", ".join(f"{p.sku}={p.stock}" for p in campaign.products)
            out.print(
                f"{path}: ok: brand {brand.brand.id}, campaign {campaign.id} "
                f"#{campaign.hashtag}, {campaign.total_stock} units ({skus})",
                soft_wrap=True,
            )
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("check-config")(check_config)
