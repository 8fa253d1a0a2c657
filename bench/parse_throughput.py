"""Parser throughput on text input: posts per second on one core.

    .venv/bin/python bench/parse_throughput.py [--posts 200000] [--rounds 5] [--brand FILE]

The posts are the seed's storm (`bot.storm`, text format as `flashtag parse --format text`
reads it: English, Chinese and Japanese, full-width text, Weibo-style tags, 10% bad posts).
They are turned into `Post` values first; only `parse()` is timed. Every round compiles a
fresh grammar, so the per-token memo starts empty and its learning is part of the time.
Times are CPU time of this process (`time.process_time`), so other processes on a shared
machine do not count against it; wall-clock figures are printed too.

For scale, the same run times a bare pass over the same texts (NFKC, case-fold and one
regex `findall`), the floor any parser in Python pays, and `parse_by_text`, the parser
without its per-token memo. It also checks each decision against what the storm generator
meant the post to be. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bot.commands.parse_cmd import post_from_text_record
from bot.storm import StormPost, StormSpec, storm
from config.brand import Brand
from config.loader import load_brand
from connectors.post import Post
from orders.parser import Grammar, compile_grammar, parse, parse_by_text

ROOT = Path(__file__).resolve().parent.parent
_BARE_RE = re.compile(r"#\w+|@\w+|\d+|[a-z]+|\S")


def _bare(text: str) -> list[str]:
    return _BARE_RE.findall(unicodedata.normalize("NFKC", text).casefold())


def _time(work: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def _rounds(count: int, rounds: int, make: Callable[[], Callable[[], object]]) -> dict[str, float]:
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(rounds):
        work = make()
        c, w = _time(work)
        cpu.append(count / c)
        wall.append(count / w)
    return {
        "cpu_median_per_s": round(statistics.median(cpu)),
        "cpu_best_per_s": round(max(cpu)),
        "wall_median_per_s": round(statistics.median(wall)),
    }


def _agreement(samples: Sequence[StormPost], posts: Sequence[Post], grammar: Grammar) -> float:
    agree = 0
    for sample, post in zip(samples, posts, strict=True):
        decision = parse(post, grammar)
        if sample.kind == "order":
            ok = (decision.decision, decision.sku, decision.quantity) == (
                "order",
                sample.sku,
                sample.quantity,
            )
        elif sample.kind in ("status", "balance", "help"):
            ok = decision.decision == sample.kind
        else:
            ok = decision.reason == sample.kind
        agree += ok
    return agree / len(samples)


def run(brand: Brand, posts_wanted: int, rounds: int, seed: int) -> dict[str, Any]:
    campaign = brand.campaign()
    samples = list(storm(brand, StormSpec(posts=posts_wanted, seed=seed)))
    posts = [post_from_text_record(sample.record()) for sample in samples]
    texts = [post.text for post in posts]
    count = len(posts)

    def parsing() -> Callable[[], object]:
        grammar = compile_grammar(brand, campaign)
        return lambda: [parse(post, grammar) for post in posts]

    def parsing_by_text() -> Callable[[], object]:
        grammar = compile_grammar(brand, campaign)
        return lambda: [parse_by_text(post, grammar) for post in posts]

    return {
        "benchmark": "parse",
        "posts": count,
        "rounds": rounds,
        "seed": seed,
        "parse": _rounds(count, rounds, parsing),
        "bare_nfkc_regex_pass": _rounds(count, rounds, lambda: lambda: [_bare(t) for t in texts]),
        "parse_by_text": _rounds(count, max(1, rounds // 2), parsing_by_text),
        "agrees_with_storm": round(_agreement(samples, posts, compile_grammar(brand, campaign)), 6),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--brand", type=Path, default=ROOT / "config" / "brands" / "xiaomi.toml")
    args = parser.parse_args(argv)
    report = run(load_brand(args.brand), args.posts, args.rounds, args.seed)
    print(json.dumps(report))  # noqa: T201


if __name__ == "__main__":
    main()
