"""`flashtag replay FILE --brand BRAND`: a recorded (or generated) storm through the real path."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bot.feed import (
    FORMATS,
    Format,
    ReadTotals,
    read_posts,
    replay,
    resolve_brand,
    shifted,
)
from bot.pipeline import DEFAULT_MAX_POSTS, BatchReport, CampaignDirectory
from config.settings import get_settings


def _dry_run(path: Path, brand_value: str, fmt: Format, shift_to_open: bool) -> dict[str, object]:
    """Parse only: decisions per kind and reason, no database."""
    brand = resolve_brand(brand_value)
    directory = CampaignDirectory([brand])
    read = ReadTotals()
    decisions: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    shift = None
    started = time.perf_counter()
    for post in read_posts(path, fmt, totals=read):
        if shift_to_open and shift is None:
            shift = brand.campaigns[0].opens_at - post.effective_at
        post = shifted(post, shift)
        key = (post.platform, post.post_id)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        _, decision = directory.decide(post, brand.brand.id)
        decisions[decision.decision] += 1
        if decision.reason:
            reasons[decision.reason] += 1
    elapsed = time.perf_counter() - started
    return {
        "posts": read.posts,
        "lines": read.lines,
        "malformed_lines": read.malformed,
        "decisions": dict(sorted(decisions.items())),
        "reasons": dict(sorted(reasons.items())),
        "duplicates": duplicates,
        "elapsed": round(elapsed, 3),
        "posts_per_s": round(read.posts / elapsed, 1) if elapsed else 0.0,
        "dry_run": True,
    }


def replay_command(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines of posts"),  # noqa: B008
    brand: str = typer.Option(..., "--brand", help="Brand file, or a brand id"),
    fmt: str = typer.Option("text", "--format", help="text | mastodon | twitter"),
    db: str | None = typer.Option(None, "--db", help="Database URL (default: DATABASE_URL)"),
    shift_to_open: bool = typer.Option(
        False, "--shift-to-open", help="Move all post times so the first lands at the opening"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Parse only; touch no database"),
    batch: int = typer.Option(
        DEFAULT_MAX_POSTS, "--batch", min=1, help="Posts per transaction (the worker's default)"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar"),
    parser_process: bool = typer.Option(
        True,
        "--parser-process/--no-parser-process",
        help="Read and parse in a process of its own while this one commits",
    ),
    platform: str = typer.Option(
        "text",
        "--platform",
        help="For --format text: the platform the posts come from (text | mastodon | x); "
        "replies are queued only for a platform the brand can send on",
    ),
) -> None:
    """Run a file of posts through the parser and the engine in batches, then print a summary.

    Campaign windows are judged against the posts' own times. The JSON summary goes to stdout,
    the progress bar to stderr.
    """
    if fmt not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
    fmt_: Format = fmt
    try:
        brand_value = resolve_brand(brand)
    except (LookupError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--brand") from exc
    if platform not in ("text", "mastodon", "x"):
        raise typer.BadParameter("must be text, mastodon or x", param_hint="--platform")
    if dry_run:
        typer.echo(json.dumps(_dry_run(file, brand, fmt_, shift_to_open), ensure_ascii=False))
        return
    url = db or get_settings().database_url
    err = Console(stderr=True)
    size = file.stat().st_size
    bar = Progress(
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("bytes  {task.fields[posts]} posts"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not progress,
        transient=False,
    )
    with bar:
        task = bar.add_task("replay", total=size, posts=0)

        def on_batch(read: ReadTotals, report: BatchReport) -> None:
            bar.update(task, completed=read.bytes_read, posts=read.posts)

        result = replay(
            file,
            brand_value,
            url=url,
            fmt=fmt_,
            shift_to_open=shift_to_open,
            batch_size=batch,
            on_batch=on_batch,
            platform=platform,
            parser_process=parser_process,
        )
        bar.update(task, completed=size, posts=result.read.posts)
    typer.echo(json.dumps(result.summary(), ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command("replay")(replay_command)
