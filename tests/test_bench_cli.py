"""`flashtag bench storm` and `bench stream` report what the issue asks for, on a small storm."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bot.cli import app

SKUS = ("MI2-16GB-BLACK", "MI2-16GB-WHITE", "MI2-32GB-BLACK", "MI2-32GB-WHITE")


def test_bench_storm_reports_one_json_object_with_the_figures() -> None:
    args = ["bench", "storm", "--posts", "2600", "--stock", "100", "--seed", "4", "--batch", "1000"]
    result = CliRunner().invoke(app, [*args, "--baseline", "--baseline-posts", "200"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["posts"] == 2600
    assert report["audit"] == "ok"
    # 26:1 oversubscription sells every SKU out exactly, however uneven the demand.
    assert report["units_allocated"] == dict.fromkeys(SKUS, 25)
    assert report["duplicates"] > 50
    for key in ("elapsed", "posts_per_s", "batch_p50_ms", "batch_p99_ms", "peak_rss_mb"):
        assert report[key] > 0, key
    assert report["baseline"]["posts"] == 200
    assert report["ratio"] == round(report["posts_per_s"] / report["baseline"]["posts_per_s"], 1)


def test_bench_stream_commits_every_streamed_notification() -> None:
    result = CliRunner().invoke(app, ["bench", "stream", "--posts", "600", "--seed", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["complete"] is True
    assert report["committed"] == report["notifications"] > 500
    assert report["audit"] == "ok"
    assert sum(report["units_allocated"].values()) == report["stock"]
