"""Feed a stream of posts through the worker's pipeline in batches, on the posts' own clock.

`flashtag replay` and the storm benchmark use this: the posts go through the very code a
streaming worker runs (the two halves of `bot.pipeline.Pipeline.process`: the parser in
`bot.pipeline.decide`, then `Pipeline.commit`: `orders.engine.apply`, `bot.outbox.queue`, one
commit per batch), in batches of the size a connector delivers. The only
difference is the clock: a replayed batch is judged at the time of its latest post, so campaign
windows and hold expiries follow the recorded times, not the wall clock.

Posts are consumed lazily; nothing here holds more than one batch.

A replay has two stages: deciding (read, decode and parse a batch: `ParseJob.batches`) and
committing (`commit_batches`: the engine, the outbox and the commit, on the writer's database
connection). By default the first runs in a process of its own (`bot.parser_process`), so the
two use both cores of a small machine instead of taking turns on one interpreter lock; both
stages are the same code either way, and so are the results.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from bot.pipeline import (
    DEFAULT_MAX_POSTS,
    BatchReport,
    CampaignDirectory,
    Envelope,
    Pipeline,
    Source,
    decide,
)
from bot.probes import postmaster_of, server_cpu_seconds
from bot.schema import prepare
from config.brand import Brand
from config.database import WalCheckpointer, create_engine, session_factory
from config.loader import load_brand
from config.settings import get_settings
from connectors.post import Post
from orders import tables
from orders.campaigns import load_campaigns
from orders.commands import Command

Format = Literal["text", "mastodon", "twitter"]
FORMATS: tuple[Format, ...] = ("text", "mastodon", "twitter")


class PostTimeClock:
    """A clock that reads whatever time the feeder last set: the latest post of the batch."""

    def __init__(self, moment: datetime | None = None) -> None:
        self.moment = moment or datetime.now(UTC)

    def now(self) -> datetime:
        return self.moment

    def sleep(self, seconds: float) -> None:
        return None


def parse_time(value: str) -> datetime:
    """An ISO 8601 time (`...Z` or with an offset) as an aware UTC datetime."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"time without a UTC offset: {value!r}")
    return moment.astimezone(UTC)


def post_from_record(
    record: Mapping[str, Any], *, platform: str = "text", shift: timedelta | None = None
) -> Post:
    """A text-format record (`post_id`, `author`, `text`, `lang`, `created_at`) as a `Post`.

    Mentions and hashtags stay in the text for the parser to find. `shift` moves the post time.
    """
    created = parse_time(str(record["created_at"]))
    if shift:
        created += shift
    author = str(record["author"])
    return Post(
        platform=platform,  # type: ignore[arg-type]
        post_id=str(record["post_id"]),
        author_id=author,
        author_handle=str(record.get("handle") or author),
        created_at=created,
        text=str(record.get("text") or ""),
        lang=record.get("lang"),
    )


def shifted(post: Post, shift: timedelta | None) -> Post:
    """`post` with its creation (and edit) time moved by `shift`."""
    if not shift:
        return post
    edited = post.edited_at + shift if post.edited_at is not None else None
    return dataclasses.replace(post, created_at=post.created_at + shift, edited_at=edited)


def posts_from_json(
    value: Any, fmt: Format, *, shift: timedelta | None = None, platform: str = "text"
) -> list[Post]:
    """The posts one decoded line of a replay file holds (none for a null Mastodon status).

    `platform` is what text-format posts are taken to come from (`text`: nowhere a reply can
    be sent). Raises KeyError, TypeError or ValueError when the line is not a post of that
    format.
    """
    if not isinstance(value, dict):
        raise TypeError("a line must hold a JSON object")
    if fmt == "text":
        return [post_from_record(value, shift=shift, platform=platform)]
    if fmt == "mastodon":
        from connectors.mastodon_payload import (
            is_notification,
            post_from_notification,
            post_from_status,
        )

        post = post_from_notification(value) if is_notification(value) else post_from_status(value)
        return [] if post is None else [shifted(post, shift)]
    from connectors.x_payload import post_from_tweet, posts_from_page

    if "data" in value:
        return [shifted(post, shift) for post in posts_from_page(value)]
    return [shifted(post_from_tweet(value), shift)]


@dataclass
class ReadTotals:
    """What reading a replay file met: lines, posts made, malformed lines, bytes read."""

    lines: int = 0
    posts: int = 0
    malformed: int = 0
    bytes_read: int = 0


def read_posts(
    path: Path,
    fmt: Format,
    *,
    shift: timedelta | None = None,
    totals: ReadTotals | None = None,
    platform: str = "text",
) -> Iterator[Post]:
    """Stream the posts of a JSON-lines file; a line that is not a post is counted and skipped."""
    totals = totals if totals is not None else ReadTotals()
    with path.open("rb") as lines:
        for line in lines:
            totals.lines += 1
            totals.bytes_read += len(line)
            if not line.strip():
                continue
            try:
                posts = posts_from_json(orjson.loads(line), fmt, shift=shift, platform=platform)
            except (KeyError, TypeError, ValueError):
                totals.malformed += 1
                continue
            totals.posts += len(posts)
            yield from posts


def first_post_time(path: Path, fmt: Format) -> datetime | None:
    """The post time of the first post in the file (what `--shift-to-open` aligns)."""
    for post in read_posts(path, fmt):
        return post.effective_at
    return None


def batched(items: Iterable[Post], size: int) -> Iterator[list[Post]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@dataclass
class FeedTotals:
    """What a feed did: posts, batches, per-batch latencies (seconds) and outcomes per kind."""

    posts: int = 0
    batches: int = 0
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, report: BatchReport) -> None:
        self.posts += report.signals
        self.batches += 1
        self.latencies.append(report.seconds)
        self.outcomes.update(outcome.kind for outcome in report.outcomes)


def feed(
    pipeline: Pipeline,
    posts: Iterable[Post],
    *,
    source: Source,
    clock: PostTimeClock,
    batch_size: int = DEFAULT_MAX_POSTS,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> FeedTotals:
    """Commit `posts` through `pipeline` in batches of `batch_size`, each at its latest post time,
    deciding and committing in this process.

    `pipeline` must have been built with `clock` as its clock.
    """
    read = ReadTotals()
    batches = decide_batches(posts, pipeline.directory, source, batch_size=batch_size, read=read)

    def observe(_: ReadTotals, report: BatchReport) -> None:
        if on_batch is not None:
            on_batch(report)

    return commit_batches(pipeline, batches, clock=clock, read=read, on_batch=observe)


@dataclass(frozen=True, slots=True)
class DecidedBatch:
    """A batch the parser decided, ready for the writer.

    `moment` is the time the batch is judged at (its latest post's), `seconds` how long deciding
    it took, `read` what reading the file had met when the batch was cut (for a progress bar).
    """

    commands: list[Command]
    moment: datetime
    seconds: float
    read: ReadTotals


def decide_batches(
    posts: Iterable[Post],
    directory: CampaignDirectory,
    source: Source,
    *,
    batch_size: int,
    read: ReadTotals,
) -> Iterator[DecidedBatch]:
    """Cut `posts` into batches of `batch_size` and decide each at its latest post time.

    `read` is the totals object `posts` is counted into; each batch carries a copy of it.
    """
    for batch in batched(posts, batch_size):
        started = time.perf_counter()
        moment = max(post.effective_at for post in batch)
        commands, _ = decide([Envelope(post, source) for post in batch], directory, now=moment)
        yield DecidedBatch(
            commands=commands,
            moment=moment,
            seconds=time.perf_counter() - started,
            read=dataclasses.replace(read),
        )


@dataclass(frozen=True)
class ParseJob:
    """Everything the deciding stage of a replay needs; small and picklable, so it can be handed
    to another process, which compiles the grammars itself."""

    path: Path
    fmt: Format
    brand: Brand
    source: Source
    batch_size: int = DEFAULT_MAX_POSTS
    shift: timedelta | None = None
    platform: str = "text"

    def batches(self, read: ReadTotals) -> Iterator[DecidedBatch]:
        """The file's posts, read lazily, decided batch by batch; `read` counts the reading."""
        posts = read_posts(
            self.path, self.fmt, shift=self.shift, totals=read, platform=self.platform
        )
        directory = CampaignDirectory([self.brand])
        return decide_batches(posts, directory, self.source, batch_size=self.batch_size, read=read)


def commit_batches(
    pipeline: Pipeline,
    batches: Iterable[DecidedBatch],
    *,
    clock: PostTimeClock,
    read: ReadTotals,
    on_batch: Callable[[ReadTotals, BatchReport], None] | None = None,
) -> FeedTotals:
    """Commit decided batches through `pipeline`, one transaction each, at each batch's moment.

    `read` is kept up to date with what the reader had met at each batch. A report's `seconds`
    is the batch's deciding plus committing time, wherever the deciding ran.
    """
    totals = FeedTotals()
    for batch in batches:
        clock.moment = batch.moment
        report = pipeline.commit(batch.commands, now=batch.moment)
        report = dataclasses.replace(report, seconds=report.seconds + batch.seconds)
        _copy_totals(batch.read, read)
        totals.add(report)
        if on_batch is not None:
            on_batch(read, report)
    return totals


def _copy_totals(source: ReadTotals, target: ReadTotals) -> None:
    if source is not target:
        for name in (f.name for f in dataclasses.fields(ReadTotals)):
            setattr(target, name, getattr(source, name))


def database_summary(session: Session, campaign_ids: Sequence[str]) -> dict[str, Any]:
    """Decisions per kind, reservations per state and units allocated per SKU, as stored.

    Counted in the database (one grouped query each), so they describe every post of these
    campaigns the database has seen, redeliveries counted once.
    """
    decisions = session.execute(
        select(tables.posts.c.decision, func.count())
        .where(tables.posts.c.campaign_id.in_(campaign_ids))
        .group_by(tables.posts.c.decision)
    )
    states = session.execute(
        select(
            tables.reservations.c.state,
            func.count(),
            func.coalesce(func.sum(tables.reservations.c.quantity), 0),
        )
        .where(tables.reservations.c.campaign_id.in_(campaign_ids))
        .group_by(tables.reservations.c.state)
    )
    stock = session.execute(
        select(tables.products.c.sku, tables.products.c.stock, tables.products.c.allocated)
        .where(tables.products.c.campaign_id.in_(campaign_ids))
        .order_by(tables.products.c.campaign_id, tables.products.c.sku)
    )
    state_rows = list(states)
    stock_rows = list(stock)
    return {
        "decisions": dict(sorted((str(k), int(n)) for k, n in decisions)),
        "reservations": {str(state): int(n) for state, n, _ in sorted(state_rows)},
        "units_by_state": {str(state): int(units) for state, _, units in sorted(state_rows)},
        "units_allocated": {str(sku): int(allocated) for sku, _, allocated in stock_rows},
        "stock": {str(sku): int(units) for sku, units, _ in stock_rows},
    }


def resolve_brand(value: str) -> Brand:
    """A brand file path, or the id of a brand among the configured brand files."""
    path = Path(value)
    if path.suffix == ".toml" or path.exists():
        return load_brand(path)
    for candidate in get_settings().brand_paths():
        brand = load_brand(candidate)
        if brand.brand.id == value:
            return brand
    bundled = Path(__file__).resolve().parent.parent / "config" / "brands" / f"{value}.toml"
    if bundled.exists():
        return load_brand(bundled)
    raise LookupError(f"no brand file for {value!r} (a path, or a brand id in FLASHTAG_BRANDS)")


def ensure_tables(engine: Engine) -> None:
    """Make the replay's database ready: migrated when new, so `flashtag db upgrade` works on it
    later (see `bot.schema.prepare`)."""
    prepare(engine.url.render_as_string(hide_password=False))


@dataclass
class ReplayResult:
    """A replay's figures; `summary()` is the JSON object `flashtag replay` prints."""

    read: ReadTotals
    fed: FeedTotals
    elapsed: float
    database: dict[str, Any]
    shift: timedelta | None
    cpu: float = 0.0  # CPU seconds of the replay, when the caller measured them
    parser_process: bool = False  # whether reading and parsing ran in a process of their own
    parser_cpu: float = 0.0  # that process's CPU seconds
    parser_peak_rss_mb: float = 0.0  # that process's peak resident set size
    parser_wait: float = 0.0  # seconds the writer waited for that process's next batch
    # CPU seconds of a PostgreSQL server on this host over the same time as `elapsed`
    # (`bot.probes.server_cpu_seconds`); None where that cannot be read.
    server_cpu: float | None = None

    @property
    def posts_per_s(self) -> float:
        return self.fed.posts / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "posts": self.fed.posts,
            "lines": self.read.lines,
            "malformed_lines": self.read.malformed,
            "batches": self.fed.batches,
            "decisions": self.database["decisions"],
            "outcomes": dict(sorted(self.fed.outcomes.items())),
            "reservations": self.database["reservations"],
            "units_by_state": self.database["units_by_state"],
            "units_allocated": self.database["units_allocated"],
            "stock": self.database["stock"],
            "duplicates": self.fed.outcomes.get("duplicate", 0),
            "shift_seconds": self.shift.total_seconds() if self.shift is not None else None,
            "elapsed": round(self.elapsed, 3),
            "posts_per_s": round(self.posts_per_s, 1),
        }


def replay(
    path: Path,
    brand: Brand,
    *,
    url: str,
    fmt: Format = "text",
    shift_to_open: bool = False,
    batch_size: int = DEFAULT_MAX_POSTS,
    on_batch: Callable[[ReadTotals, BatchReport], None] | None = None,
    platform: str = "text",
    parser_process: bool = True,
) -> ReplayResult:
    """Run a JSON-lines file of posts through the pipeline into the database at `url`.

    The campaigns of `brand` are loaded first; missing tables are created. With
    `shift_to_open`, every post time moves by the one offset that puts the first post at the
    opening of the brand's first campaign. Text-format posts are taken to come from
    `platform`; on a platform the brand has an account on, the outbox queues their replies.

    With `parser_process` (the default) the file is read and parsed in a process of its own
    (`bot.parser_process`) while this one commits; without, both stages take turns here. The
    database ends up the same either way. An error of the parser process is raised here.
    """
    if parser_process:
        # Imported here: bot.parser_process builds on this module.
        from bot.parser_process import ParserProcess, warm_up

        warm_up()  # the forkserver gets ready while the database does
    shift: timedelta | None = None
    if shift_to_open:
        first = first_post_time(path, fmt)
        if first is not None:
            shift = brand.campaigns[0].opens_at - first
    job = ParseJob(
        path=path,
        fmt=fmt,
        brand=brand,
        source=Source(brand.brand.id, platform if fmt == "text" else fmt),
        batch_size=batch_size,
        shift=shift,
        platform=platform,
    )
    engine = create_engine(url)
    try:
        ensure_tables(engine)
        sessions = session_factory(engine)
        with sessions() as session, session.begin():
            load_campaigns(session, [brand])
        clock = PostTimeClock()
        pipeline = Pipeline(sessions, [brand], max_posts=batch_size, clock=clock)
        read = ReadTotals()
        server = postmaster_of(engine)
        server_before = server_cpu_seconds(server)
        started = time.perf_counter()
        # SQLite's checkpoints run beside the commits, as in the worker.
        with WalCheckpointer(url):
            if parser_process:
                with ParserProcess(job) as parser:
                    fed = commit_batches(
                        pipeline, parser.batches(read), clock=clock, read=read, on_batch=on_batch
                    )
                figures = (parser.cpu, parser.peak_rss_mb, parser.waited)
            else:
                fed = commit_batches(
                    pipeline, job.batches(read), clock=clock, read=read, on_batch=on_batch
                )
                figures = (0.0, 0.0, 0.0)
        elapsed = time.perf_counter() - started
        server_after = server_cpu_seconds(server)
        with sessions() as session:
            database = database_summary(session, [c.id for c in brand.campaigns])
    finally:
        engine.dispose()
    return ReplayResult(
        read=read,
        fed=fed,
        elapsed=elapsed,
        database=database,
        shift=shift,
        parser_process=parser_process,
        parser_cpu=figures[0],
        parser_peak_rss_mb=figures[1],
        parser_wait=figures[2],
        server_cpu=None
        if server_before is None or server_after is None
        else server_after - server_before,
    )
