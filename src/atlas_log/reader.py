"""What to read of one scope this cycle, and in what order: the window from the watermark to the cycle's end.

Atlas pages newest first. A small window is read whole, page after page, de-duplicated by id (new events arriving
while we page shift later pages, so an event can be seen twice but never skipped). A large window (a first run or
a backfill) is cut into chunks read oldest first, so each chunk can be stored and committed before the next is
read and memory stays bounded: one probe request finds the second before which about ``chunk_events`` events lie,
and the window up to that second is read whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from atlas_log._time import parse_atlas_time
from atlas_log.atlas_api import AtlasClient, Scope, ensure_no_missing_history
from atlas_log.errors import AtlasApiError
from atlas_log.high_watermark import EventKey, Watermark, advance, is_new, query_start_s

log = logging.getLogger(__name__)

CHUNK_EVENTS = 10_000
MAX_PAGES = 100_000  # a window this long is a paging loop, not history


@dataclass
class Chunk:
    """New events of one scope, oldest first, for a window read whole up to ``read_until_s``."""

    scope: Scope
    events: list[tuple[EventKey, dict[str, Any]]]
    read_until_s: int
    pages: int = 0
    ignored_outside_window: int = 0


def created_s(event: dict[str, Any]) -> int:
    return int(parse_atlas_time(event["created"]).timestamp())


def _dt(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _read_whole(
    client: AtlasClient, scope: Scope, lo_s: int, hi_s: int, first: Any = None
) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Every event in ``[lo, hi]`` by id; also the number of pages and of events Atlas sent outside the window."""
    seen: dict[str, dict[str, Any]] = {}
    outside = 0
    page_num = 1
    total: int | None = None
    while True:
        page = (
            first
            if (page_num == 1 and first is not None)
            else client.get_events(scope, min_date=_dt(lo_s), max_date=_dt(hi_s), page_num=page_num)
        )
        if page_num == 1:
            total = page.total_count
        fresh = 0
        for event in page.events:
            if event["id"] in seen:
                continue
            when = created_s(event)
            if when < lo_s or when > hi_s:
                outside += 1
                continue
            seen[event["id"]] = event
            fresh += 1
        if not page.full:
            break
        if fresh == 0 and page.events and all(e["id"] in seen for e in page.events):
            raise AtlasApiError(f"paging loop for {scope.describe()}: page {page_num} repeats events already read")
        page_num += 1
        if page_num > MAX_PAGES:
            raise AtlasApiError(f"paging loop for {scope.describe()}: more than {MAX_PAGES} pages")
    ensure_no_missing_history(scope, read=len(seen) + outside, total_count=total)
    return seen, page_num, outside


def _chunk(
    scope: Scope,
    wm: Watermark,
    found: dict[str, dict[str, Any]],
    hi_s: int,
    pages: int,
    outside: int,
    lookback_s: int,
) -> Chunk:
    keyed = [(EventKey(event_id, created_s(event)), event) for event_id, event in found.items()]
    fresh = [(k, e) for k, e in keyed if is_new(wm, k, lookback_s=lookback_s)]
    fresh.sort(key=lambda pair: (pair[0].created_s, pair[0].id))
    if outside:
        log.warning("%s: Atlas sent %d events outside the requested window; ignored", scope.describe(), outside)
    return Chunk(scope=scope, events=fresh, read_until_s=hi_s, pages=pages, ignored_outside_window=outside)


def read_scope(
    client: AtlasClient,
    scope: Scope,
    wm: Watermark,
    *,
    until_s: int,
    lookback_s: int,
    since_s: int,
    chunk_events: int = CHUNK_EVENTS,
    on_total: Callable[[int], None] | None = None,
) -> Iterator[Chunk]:
    """Yield the scope's new events in chunks, oldest first; the last chunk's ``read_until_s`` is ``until_s``."""
    lo_s = query_start_s(wm, lookback_s=lookback_s, since_s=since_s)
    if until_s < lo_s:
        return
    first = client.get_events(scope, min_date=_dt(lo_s), max_date=_dt(until_s), page_num=1)
    if on_total is not None and first.total_count is not None:
        on_total(first.total_count)
    remaining = first.total_count
    if not first.full or remaining is None or remaining <= chunk_events:
        found, pages, outside = _read_whole(client, scope, lo_s, until_s, first)
        yield _chunk(scope, wm, found, until_s, pages, outside, lookback_s)
        return
    log.info(
        "%s: about %d events to read; reading in chunks of about %d, oldest first",
        scope.describe(),
        remaining,
        chunk_events,
    )
    local_wm = wm
    while True:
        if remaining <= chunk_events:
            found, pages, outside = _read_whole(client, scope, lo_s, until_s)
            yield _chunk(scope, local_wm, found, until_s, pages, outside, lookback_s)
            return
        probe = client.get_events(
            scope,
            min_date=_dt(lo_s),
            max_date=_dt(until_s),
            page_num=remaining - chunk_events + 1,
            items_per_page=1,
        )
        if not probe.events:  # the estimate was too high: what is left is small enough
            remaining = 0
            continue
        cut_s = max(lo_s, min(until_s, created_s(probe.events[0])))
        found, pages, outside = _read_whole(client, scope, lo_s, cut_s)
        chunk = _chunk(scope, local_wm, found, cut_s, pages + 1, outside, lookback_s)
        yield chunk
        local_wm = advance(local_wm, (k for k, _ in chunk.events), lookback_s=lookback_s, read_until_s=cut_s)
        total_now = probe.total_count if probe.total_count is not None else remaining
        remaining = max(0, total_now - len(found))
        if cut_s >= until_s:
            return
        lo_s = cut_s + 1
