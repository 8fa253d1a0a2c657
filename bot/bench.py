"""The storm benchmark: the seed's flash sale, generated, fed through the real pipeline, audited.

`run_storm` writes the seeded storm to a JSON-lines file first (its generation is timed apart
and is not part of the result), then times the replay of that file exactly as
`flashtag replay` runs it: read and decode each line, parse, `orders.engine.apply`, queue the
replies in the outbox, one commit per batch of the size a streaming connector delivers. It
then runs the audit. With a baseline, the naive one-transaction-per-post implementation
(`bot.bench_baseline`) runs a fixed prefix of the same storm against the same database, and the
ratio compares posts per second with posts per second.

By default the replay reads and parses in a process of its own while this one commits
(`bot.parser_process`); `parser_process=False` runs both stages here, for comparison. CPU time
is reported per process: the writer's (`cpu_s`), the parser's (`parser_cpu_s`), and posts per
CPU second over both.

Without a database URL every run gets a fresh SQLite file in a temporary directory. With one
(PostgreSQL), flashtag's tables are dropped and created before each run and dropped after.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot import bench_baseline
from bot.feed import ReplayResult, read_posts, replay
from bot.parser_process import warm_up as parser_warm_up
from bot.pipeline import DEFAULT_MAX_POSTS, CampaignDirectory, Envelope, Source, to_command
from bot.probes import StatementTimer
from bot.schema import all_metadata
from bot.storm import StormSpec, scaled_brand, storm, write_jsonl
from config.brand import Brand
from config.database import create_engine, session_factory
from orders.audit import audit
from orders.commands import Command

DEFAULT_BASELINE_POSTS = 5_000
# The storm is replayed as Mastodon posts, so the outbox queues a reply for each, as it would
# for posts a Mastodon connector delivered.
PLATFORM = "mastodon"


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def reset_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        for metadata in reversed(all_metadata()):
            metadata.drop_all(engine)
        for metadata in all_metadata():
            metadata.create_all(engine)
    finally:
        engine.dispose()


def drop_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        for metadata in reversed(all_metadata()):
            metadata.drop_all(engine)
    finally:
        engine.dispose()


def run_audit(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with session_factory(engine)() as session:
            return list(audit(session))
    finally:
        engine.dispose()


@dataclass
class BaselineFigures:
    posts: int
    elapsed: float
    posts_per_s: float
    allocated: dict[str, int]
    projected_full_storm_s: float
    by_post: dict[str, int]


def decided(path: Path, brand: Brand, limit: int) -> Iterator[Command]:
    """The first `limit` posts of a storm file, decided by the same parser the pipeline uses."""
    directory = CampaignDirectory([brand])
    source = Source(brand.brand.id, PLATFORM)
    for count, post in enumerate(read_posts(path, "text", platform=PLATFORM)):
        if count >= limit:
            return
        yield to_command(Envelope(post, source), directory, now=post.effective_at)


def run_baseline(
    url: str, path: Path, brand: Brand, posts: int, total: int, *, by_post: bool = False
) -> BaselineFigures:
    """The naive implementation on the first `posts` posts, on its own tables at `url`."""
    engine = create_engine(url)
    try:
        campaign = brand.campaigns[0]
        bench_baseline.create_tables(engine, campaign)
        result = bench_baseline.run(
            session_factory(engine), decided(path, brand, posts), campaign, by_post=by_post
        )
        bench_baseline.drop_tables(engine)
    finally:
        engine.dispose()
    rate = result.posts_per_s
    return BaselineFigures(
        posts=result.posts,
        elapsed=round(result.elapsed, 3),
        posts_per_s=round(rate, 1),
        allocated=result.allocated,
        projected_full_storm_s=round(total / rate, 1) if rate else 0.0,
        by_post=result.by_post,
    )


def _run_once(
    url: str,
    path: Path,
    brand: Brand,
    batch: int,
    profile: int = 0,
    *,
    parser_process: bool = True,
    timer: StatementTimer | None = None,
) -> tuple[ReplayResult, list[str], list[dict[str, Any]]]:
    reset_tables(url)
    options: dict[str, Any] = {
        "url": url,
        "batch_size": batch,
        "platform": PLATFORM,
        "parser_process": parser_process,
    }
    if not profile:
        cpu = time.process_time()
        with timer if timer is not None else contextlib.nullcontext():
            result = replay(path, brand, **options)
        result.cpu = time.process_time() - cpu
        return result, run_audit(url), []
    profiler = cProfile.Profile()
    result = profiler.runcall(replay, path, brand, **options)
    return (
        result,
        run_audit(url),
        [{"stages": stage_seconds(profiler)}, *top_functions(profiler, profile)],
    )


# The stages of one batch, by the function that does each (file suffix, function name).
STAGES = {
    "read_and_decode": ("bot/feed.py", "read_posts"),
    "parse": ("orders/parser.py", "parse"),
    "engine_apply": ("orders/engine.py", "apply"),
    "outbox_queue": ("bot/outbox.py", "queue"),
    "commit": ("sqlalchemy/orm/session.py", "commit"),
}


def stage_seconds(profiler: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds spent in each stage of the pipeline (under the profiler)."""
    stats = pstats.Stats(profiler)
    found = dict.fromkeys(STAGES, 0.0)
    for (file, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        for stage, (suffix, function) in STAGES.items():
            if name == function and file.endswith(suffix):
                found[stage] += row[3]
    return {stage: round(seconds, 3) for stage, seconds in found.items()}


def top_functions(profiler: cProfile.Profile, count: int) -> list[dict[str, Any]]:
    """The `count` functions with the most time of their own, and what they include."""
    stats = pstats.Stats(profiler)
    entries = []
    for (file, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = file.split("site-packages/")[-1].split("/work/main/")[-1]
        entries.append(
            {
                "function": f"{where}:{line}({name})",
                "calls": calls,
                "own_s": round(own, 3),
                "cumulative_s": round(cumulative, 3),
            }
        )
    entries.sort(key=lambda e: e["own_s"], reverse=True)
    return entries[:count]


def run_storm(
    *,
    posts: int,
    stock: int,
    seed: int = 0,
    brand: Brand,
    db: str | None = None,
    batch: int = DEFAULT_MAX_POSTS,
    runs: int = 1,
    baseline: bool = False,
    baseline_posts: int = DEFAULT_BASELINE_POSTS,
    keep: bool = False,
    profile: int = 0,
    parser_process: bool = True,
    statements: int = 0,
) -> dict[str, Any]:
    """Generate the storm, replay it `runs` times on fresh tables, and report as one object.

    With `statements`, the first run's statements are timed from the writer
    (`bot.probes.StatementTimer`) and the longest kinds reported.
    """
    if profile and statements:
        raise ValueError("profile and statements each time the first run: choose one")
    bench_brand = scaled_brand(brand, stock)
    if parser_process:
        parser_warm_up()  # once per process, not in the first run's time
    with tempfile.TemporaryDirectory(prefix="flashtag-bench-") as tmp:
        path = Path(tmp) / "storm.jsonl"
        started = time.perf_counter()
        lines = write_jsonl(storm(bench_brand, StormSpec(posts=posts, seed=seed)), path)
        generate_s = time.perf_counter() - started
        url = db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        figures: list[dict[str, Any]] = []
        top: list[dict[str, Any]] = []
        timer = StatementTimer() if statements else None
        for run in range(runs):
            result, problems, found = _run_once(
                url,
                path,
                bench_brand,
                batch,
                profile if run == 0 else 0,
                parser_process=parser_process,
                timer=timer if run == 0 else None,
            )
            figures.append(_figures(result, problems))
            top = top or found
        base: BaselineFigures | None = None
        if baseline:
            base = run_baseline(url, path, bench_brand, min(baseline_posts, lines), lines)
        if db is not None and not keep:
            drop_tables(url)
    report: dict[str, Any] = {
        "database": "postgresql" if db and db.startswith("postgres") else "sqlite",
        "posts": lines,
        "stock": stock,
        "seed": seed,
        "batch": batch,
        "parser_process": parser_process,
        "generate_s": round(generate_s, 2),
        # The run with the median time speaks for all (its latencies, counts and audit).
        **sorted(figures, key=lambda f: float(f["elapsed"]))[len(figures) // 2],
    }
    if runs > 1:
        report["runs"] = figures
        report["elapsed"] = round(statistics.median(f["elapsed"] for f in figures), 3)
        report["posts_per_s"] = round(statistics.median(f["posts_per_s"] for f in figures), 1)
        if all(f["posts_per_cpu_s"] for f in figures):
            report["posts_per_cpu_s"] = round(
                statistics.median(f["posts_per_cpu_s"] for f in figures), 1
            )
        report["audit"] = next((f["audit"] for f in figures if f["audit"] != "ok"), "ok")
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if parser_process:
        report["parser_peak_rss_mb"] = max(f["parser_peak_rss_mb"] for f in figures)
    if top:
        note = "first run under cProfile (slower); compare shares, not seconds"
        if parser_process:
            note += "; this process only: reading and parsing ran in the parser process"
        report["profile"] = {
            "note": note,
            "stages_s": top[0]["stages"],
            "top_own_time": top[1:],
        }
    if timer is not None:
        report["statements"] = {
            "note": "the first run's statements, timed from the writer (sent, run, answered)",
            "top": timer.top(statements),
        }
    if base is not None:
        report["baseline"] = {
            "posts": base.posts,
            "elapsed": base.elapsed,
            "posts_per_s": base.posts_per_s,
            "units_allocated": base.allocated,
            "projected_full_storm_s": base.projected_full_storm_s,
        }
        report["ratio"] = (
            round(report["posts_per_s"] / base.posts_per_s, 1) if base.posts_per_s else None
        )
    return report


def _figures(result: ReplayResult, problems: list[str]) -> dict[str, Any]:
    latencies = result.fed.latencies
    cpu = result.cpu + result.parser_cpu
    figures: dict[str, Any] = {
        "elapsed": round(result.elapsed, 3),
        "posts_per_s": round(result.posts_per_s, 1),
        # CPU seconds of this process (the writer: engine and outbox in Python, SQLite itself;
        # not the PostgreSQL server's; with the parser in this process, reading and parsing
        # too), and of the parser process when there is one. Posts per CPU second count both:
        # on a shared machine the wall clock also counts the others.
        "cpu_s": round(result.cpu, 3),
    }
    if result.server_cpu is not None:
        # A PostgreSQL server on this host: its CPU seconds over the same time as `elapsed`.
        figures["server_cpu_s"] = round(result.server_cpu, 3)
    if result.parser_process:
        figures["parser_cpu_s"] = round(result.parser_cpu, 3)
        figures["parser_peak_rss_mb"] = round(result.parser_peak_rss_mb, 1)
        # Seconds the writer sat waiting for the parser's next batch (parser-bound when large).
        figures["writer_wait_s"] = round(result.parser_wait, 3)
    return figures | {
        "posts_per_cpu_s": round(result.fed.posts / cpu, 1) if result.cpu else None,
        "batches": result.fed.batches,
        "batch_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "batch_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "units_allocated": result.database["units_allocated"],
        "reservations": result.database["reservations"],
        "decisions": result.database["decisions"],
        "duplicates": result.fed.outcomes.get("duplicate", 0),
        "audit": "ok" if not problems else problems[:20],
    }
