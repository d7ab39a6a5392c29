"""Progress: silent for short work, a bar with ETA on a terminal, a log line every interval elsewhere."""

from __future__ import annotations

import io
import logging
import threading

import pytest

from atlas_log.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_line_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="atlas_log.progress")
    progress = Progress(terminal=False, log_interval_s=10, clock=clock)
    progress.add_estimate("project:a", 10_000)
    progress.add_estimate("org:b", 2_000)
    progress.advance(pages=1, events=500)
    clock.now += 5
    progress.advance(pages=1, events=500)
    assert caplog.records == []  # short work says nothing
    clock.now += 5
    progress.advance(pages=2, events=1_000)
    assert [r.getMessage() for r in caplog.records] == [
        "progress: 2000/12000 events (16%) pages=4 rate=200/s eta=50s elapsed=10s"
    ]
    clock.now += 3
    progress.advance(events=100)
    assert len(caplog.records) == 1  # not before another 10 s
    progress.close()
    assert caplog.records[-1].getMessage().endswith("(done)")


def test_short_work_off_a_terminal_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="atlas_log.progress")
    with Progress(terminal=False, clock=Clock()) as progress:
        progress.add_estimate("project:a", 10)
        progress.advance(pages=1, events=10)
    assert caplog.records == []


def test_on_a_terminal_a_bar_with_counts_rate_and_eta() -> None:
    clock = Clock()
    screen = io.StringIO()
    progress = Progress(stream=screen, terminal=True, show_after_s=2, clock=clock)
    progress.add_estimate("project:a", 4_000)
    progress.advance(pages=1, events=500)
    assert screen.getvalue() == ""  # not for work that ends within show_after_s
    clock.now += 4
    progress.advance(pages=3, events=1_500)
    progress.close()
    text = screen.getvalue()
    assert "2000/4000 events" in text and "4 pages" in text and "500 events/s" in text and "ETA 4s" in text


def test_estimates_replace_per_scope_and_never_fall_below_done() -> None:
    progress = Progress(terminal=False, clock=Clock())
    assert progress.total is None and progress.eta_s is None
    progress.add_estimate("project:a", 100)
    progress.add_estimate("project:a", 300)  # a later estimate for the same scope replaces the first
    progress.add_estimate("org:b", None)  # Atlas sent no totalCount: ignored
    assert progress.total == 300
    progress.advance(events=450)
    assert progress.total == 450


def test_concurrent_callers_lose_nothing() -> None:
    progress = Progress(terminal=False)

    def work() -> None:
        for _ in range(1_000):
            progress.advance(pages=1, events=3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (progress.pages, progress.events) == (8_000, 24_000)
