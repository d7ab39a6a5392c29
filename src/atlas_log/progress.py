"""Progress of long work (a first run, a backfill): a bar on a terminal, a log line every few seconds elsewhere.

The exporter tells a ``Progress`` how much there is to read (``add_estimate``: Atlas's ``totalCount`` for a scope's
window, an estimate) and how much is done (``advance``: pages and events). Short work shows nothing: the bar
appears only once the work has lasted ``show_after_s``, and log lines come every ``log_interval_s``. Thread-safe:
readers and the writer may call it at once.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from atlas_log._time import format_duration

log = logging.getLogger("atlas_log.progress")


class Progress:
    def __init__(
        self,
        *,
        description: str = "exporting",
        stream: TextIO | None = None,
        terminal: bool | None = None,
        show_after_s: float = 2.0,
        log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.description = description
        self._stream = stream if stream is not None else sys.stderr
        self._terminal = self._stream.isatty() if terminal is None else terminal
        self._show_after_s = show_after_s
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._log = logger or log
        self._lock = threading.Lock()
        self._estimates: dict[str, int] = {}
        self.pages = 0
        self.events = 0
        self._started = clock()
        self._last_log = self._started
        self._bar: Any = None  # rich.progress.Progress while shown
        self._task: Any = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._closed = False

    # ---------------------------------------------------------------------------------------------- reporting
    def add_estimate(self, scope: str, total: int | None) -> None:
        """How many events ``scope`` has to read (Atlas's ``totalCount``); a later call for a scope replaces it."""
        if total is None or total < 0:
            return
        with self._lock:
            self._estimates[scope] = total
            self._update()

    def advance(self, pages: int = 0, events: int = 0) -> None:
        """``pages`` more pages and ``events`` more events are done."""
        with self._lock:
            self.pages += pages
            self.events += events
            self._update()

    def close(self) -> None:
        """Stop the bar (leaving its last state on screen) and log a last line if lines were being logged."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._refresh_bar()
                self._bar.stop()
                self._bar = None
                for handler, stream in self._handlers:
                    handler.setStream(stream)
                self._handlers = []
            elif not self._terminal and self._last_log != self._started:
                self._log.info("progress: %s (done)", self.describe())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------- the figures
    @property
    def total(self) -> int | None:
        """The estimated events to read, never less than what is already done; None before any estimate."""
        if not self._estimates:
            return None
        return max(sum(self._estimates.values()), self.events)

    @property
    def elapsed_s(self) -> float:
        return max(0.0, self._clock() - self._started)

    @property
    def rate(self) -> float:
        """Events per second since the start."""
        elapsed = self.elapsed_s
        return self.events / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        total = self.total
        if total is None or self.rate <= 0:
            return None
        return max(0.0, (total - self.events) / self.rate)

    def describe(self) -> str:
        total = self.total
        done = (
            f"{self.events}/{total} events ({100 * self.events // max(total, 1)}%)"
            if total
            else f"{self.events} events"
        )
        eta = self.eta_s
        elapsed = format_duration(round(self.elapsed_s))
        return (
            f"{done} pages={self.pages} rate={self.rate:.0f}/s "
            f"eta={'-' if eta is None else format_duration(round(eta))} elapsed={elapsed}"
        )

    # ------------------------------------------------------------------------------------------------- output
    def _update(self) -> None:
        if self._closed:
            return
        now = self._clock()
        if self._terminal:
            if self._bar is None and now - self._started >= self._show_after_s:
                self._start_bar()
            if self._bar is not None:
                self._refresh_bar()
        elif now - self._last_log >= self._log_interval_s:
            self._last_log = now
            self._log.info("progress: %s", self.describe())

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as RichProgress

        original = sys.stderr
        console = Console(file=self._stream, force_terminal=True)
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[done]}"),
            TextColumn("{task.fields[pages]} pages"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            redirect_stderr=self._stream is original,
            redirect_stdout=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=None, done="", pages=0, rate="", eta="-")
        if sys.stderr is not original:  # rich now proxies stderr: send log lines through it, above the bar
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                    self._handlers.append((handler, handler.setStream(sys.stderr)))

    def _refresh_bar(self) -> None:
        total = self.total
        eta = self.eta_s
        self._bar.update(
            self._task,
            total=total,
            completed=self.events,
            done=f"{self.events}/{total if total is not None else '?'} events",
            pages=self.pages,
            rate=f"{self.rate:.0f} events/s",
            eta="-" if eta is None else format_duration(round(eta)),
        )
