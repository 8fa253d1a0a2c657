"""`flashtag bench ...`: benchmarks that print one JSON object each (docs/benchmarks.md)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer

from bot.pipeline import DEFAULT_MAX_POSTS

bench_app = typer.Typer(help="Benchmarks; each prints one JSON object.", no_args_is_help=True)


@bench_app.command("storm")
def bench_storm(
    posts: int = typer.Option(1_300_000, "--posts", min=1, help="Posts in the storm"),
    stock: int = typer.Option(50_000, "--stock", min=0, help="Units, spread over the SKUs"),
    seed: int = typer.Option(0, "--seed", help="Storm seed (same seed, same storm)"),
    db: str | None = typer.Option(
        None, "--db", help="Database URL; its tables are dropped and created (default: temp SQLite)"
    ),
    brand: str = typer.Option("xiaomi", "--brand", help="Brand file or id"),
    batch: int = typer.Option(
        DEFAULT_MAX_POSTS, "--batch", min=1, help="Posts per transaction (the worker's default)"
    ),
    runs: int = typer.Option(1, "--runs", min=1, help="Replays on fresh tables; medians reported"),
    baseline: bool = typer.Option(False, "--baseline", help="Also run the naive implementation"),
    baseline_posts: int = typer.Option(
        5_000, "--baseline-posts", min=1, help="Posts of the storm's prefix the baseline runs"
    ),
    keep: bool = typer.Option(False, "--keep", help="Keep the tables at --db afterwards"),
    profile: int = typer.Option(
        0, "--profile", min=0, help="Profile the first run; report this many top functions"
    ),
    parser_process: bool = typer.Option(
        True,
        "--parser-process/--no-parser-process",
        help="Read and parse in a process of its own while this one commits",
    ),
    statements: int = typer.Option(
        0,
        "--statements",
        min=0,
        help="Time the first run's statements from the writer; report this many kinds",
    ),
    write: Path | None = typer.Option(  # noqa: B008
        None, "--write", help="Only write the storm as JSON lines to this file, and stop"
    ),
    opens_at: datetime | None = typer.Option(  # noqa: B008
        None,
        "--opens-at",
        formats=["%Y-%m-%dT%H:%M:%S%z"],
        help="With --write: post times start at this opening instead of the brand's "
        "(a storm recorded on another day, for replay --shift-to-open)",
    ),
) -> None:
    """The seed's flash sale: generated, replayed through the real pipeline, audited."""
    from bot.feed import resolve_brand
    from bot.storm import StormSpec, scaled_brand, storm, write_jsonl

    brand_value = resolve_brand(brand)
    if write is not None:
        recorded = scaled_brand(brand_value, stock)
        if opens_at is not None:
            campaign = recorded.campaigns[0]
            moved = campaign.model_copy(
                update={
                    "opens_at": opens_at,
                    "closes_at": opens_at + (campaign.closes_at - campaign.opens_at),
                }
            )
            recorded = recorded.model_copy(update={"campaigns": [moved, *recorded.campaigns[1:]]})
        count = write_jsonl(storm(recorded, StormSpec(posts=posts, seed=seed)), write)
        typer.echo(json.dumps({"written": str(write), "posts": count, "seed": seed}))
        return
    if profile and statements:
        raise typer.BadParameter("--profile and --statements both time the first run: choose one")
    from bot.bench import run_storm

    report = run_storm(
        posts=posts,
        stock=stock,
        seed=seed,
        brand=brand_value,
        db=db,
        batch=batch,
        runs=runs,
        baseline=baseline,
        baseline_posts=baseline_posts,
        keep=keep,
        profile=profile,
        parser_process=parser_process,
        statements=statements,
    )
    typer.echo(json.dumps(report, ensure_ascii=False))
    if report.get("audit") != "ok":
        raise typer.Exit(1)


@bench_app.command("stream")
def bench_stream(
    posts: int = typer.Option(100_000, "--posts", min=1, help="Posts in the streamed storm"),
    stock: int | None = typer.Option(None, "--stock", min=0, help="Units (default posts/26)"),
    seed: int = typer.Option(0, "--seed", help="Storm seed"),
    db: str | None = typer.Option(
        None, "--db", help="Database URL; its tables are dropped and created (default: temp SQLite)"
    ),
    brand: str = typer.Option("xiaomi", "--brand", help="Brand file or id"),
    batch: int = typer.Option(
        DEFAULT_MAX_POSTS, "--batch", min=1, help="Pipeline batch size (the worker's default)"
    ),
    wait_ms: float = typer.Option(50.0, "--wait-ms", min=1, help="Pipeline batch wait (ms)"),
) -> None:
    """The storm as Mastodon notifications over SSE, through the connector and the pipeline."""
    from bot.bench_stream import run_stream
    from bot.feed import resolve_brand

    report = run_stream(
        posts=posts,
        brand=resolve_brand(brand),
        stock=stock,
        seed=seed,
        db=db,
        max_posts=batch,
        max_wait_ms=wait_ms,
    )
    typer.echo(json.dumps(report, ensure_ascii=False))
    if report.get("audit") != "ok" or not report.get("complete"):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
