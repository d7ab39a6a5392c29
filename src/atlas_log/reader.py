"""What to read of one scope this cycle, and in what order: the window from the watermark to the cycle's end.

Atlas pages newest first. A small window is read whole, page after page, de-duplicated by id (new events arriving
while we page shift later pages, so an event can be seen twice but never skipped). A large window (a first run or
a backfill) is cut into chunks read oldest first, so each chunk can be stored and committed before the next is
read and memory stays bounded: one probe request finds the second before which about ``chunk_events`` events lie,
and the window up to that second is read whole.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from atlas_log._time import atlas_epoch_s
from atlas_log.atlas_api import AtlasClient, Scope, ensure_no_missing_history
from atlas_log.errors import AtlasApiError
from atlas_log.high_watermark import EventKey, Watermark, is_new, query_start_s
from atlas_log.write_events import dump_line

log = logging.getLogger(__name__)

CHUNK_EVENTS = 8_000  # events held per scope mid-backfill: memory against one probe request per chunk
CHUNK_SLACK = 100  # aim a little under a whole number of pages, so a chunk ends on a nearly full one
MAX_PAGES = 100_000  # a window this long is a paging loop, not history


SPOOL_IN_MEMORY_BYTES = 1 << 20


@dataclass
class Chunk:
    """New events of one scope, for a window read whole up to ``read_until_s``.

    Memory per event is kept small, since many scopes are mid-chunk at once in a backfill: the lines to store wait
    in a spool (memory up to 1 MiB, then a temporary file), and the rest sits in flat arrays (the id, ``created``,
    the interned type, and where the line lies in the spool). ``order`` lists the events oldest first.
    """

    scope: Scope
    read_until_s: int
    pages: int = 0
    ids: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    created: array[int] = field(default_factory=lambda: array("q"))
    offsets: array[int] = field(default_factory=lambda: array("q"))
    order: array[int] = field(default_factory=lambda: array("q"))
    spool: IO[bytes] | None = None
    _written: int = 0  # bytes in the spool (counted here: tell() on a file is a system call per event)

    @property
    def count(self) -> int:
        return len(self.ids)

    def add(self, event_id: str, created: int, event_type: str, line: bytes) -> None:
        assert self.spool is not None
        self.offsets.append(self._written)
        self.spool.write(line)
        self._written += len(line)
        self.ids.append(event_id)
        self.types.append(sys.intern(event_type))
        self.created.append(created)

    def seal(self) -> None:
        """Fix the order, oldest first (ties by id), once every event is in."""
        self.offsets.append(self._written)
        ids, created = self.ids, self.created
        self.order = array("q", sorted(range(len(ids)), key=lambda i: (created[i], ids[i])))

    def keys(self) -> Iterator[EventKey]:
        return (EventKey(self.ids[i], self.created[i]) for i in self.order)

    def lines(self, wanted: Callable[[str], bool]) -> list[bytes]:
        """The stored lines of the events whose type is ``wanted``, oldest first; frees the spool."""
        if self.spool is None:
            return []
        self.spool.seek(0)
        data = memoryview(self.spool.read())
        self.spool.close()
        self.spool = None
        offsets, types = self.offsets, self.types
        return [bytes(data[offsets[i] : offsets[i + 1]]) for i in self.order if wanted(types[i])]


def created_s(event: dict[str, Any]) -> int:
    return atlas_epoch_s(event["created"])


def _dt(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _read_whole(
    client: AtlasClient, scope: Scope, wm: Watermark, lo_s: int, hi_s: int, lookback_s: int, first: Any = None
) -> tuple[Chunk, int]:
    """A chunk of the new events in ``[lo, hi]``, oldest first, each id once; also the number of ids read.

    Events already exported are dropped as their page arrives: only their ids are kept, to de-duplicate.
    """
    seen: set[str] = set()
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 (handed on)
    chunk = Chunk(scope=scope, read_until_s=hi_s, spool=spool)
    outside = 0
    page_num = 1
    total: int | None = None
    try:
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
                event_id = event["id"]
                if event_id in seen:
                    continue
                seen.add(event_id)
                fresh += 1
                key = EventKey(event_id, created_s(event))
                if key.created_s < lo_s or key.created_s > hi_s:
                    outside += 1
                elif is_new(wm, key, lookback_s=lookback_s):
                    chunk.add(event_id, key.created_s, event["eventTypeName"], dump_line(event))
            if not page.full:
                break
            if fresh == 0:
                raise AtlasApiError(f"paging loop for {scope.describe()}: page {page_num} repeats events already read")
            page_num += 1
            if page_num > MAX_PAGES:
                raise AtlasApiError(f"paging loop for {scope.describe()}: more than {MAX_PAGES} pages")
    except BaseException:
        spool.close()
        raise
    ensure_no_missing_history(scope, read=len(seen), total_count=total)
    if outside:
        log.warning("%s: Atlas sent %d events outside the requested window; ignored", scope.describe(), outside)
    chunk.seal()
    chunk.pages = page_num
    return chunk, len(seen)


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
        yield _read_whole(client, scope, wm, lo_s, until_s, lookback_s, first)[0]
        return
    log.info(
        "%s: about %d events to read; reading in chunks of about %d, oldest first",
        scope.describe(),
        remaining,
        chunk_events,
    )
    # Each chunk's window starts after the last one's, so the windows are disjoint: the watermark the cycle started
    # from judges every chunk alike (what one chunk exported can never turn up in the next).
    while True:
        if remaining <= chunk_events:
            yield _read_whole(client, scope, wm, lo_s, until_s, lookback_s)[0]
            return
        probe = client.get_events(
            scope,
            min_date=_dt(lo_s),
            max_date=_dt(until_s),
            page_num=remaining - max(1, chunk_events - CHUNK_SLACK) + 1,
            items_per_page=1,
        )
        if not probe.events:  # the estimate was too high: what is left is small enough
            remaining = 0
            continue
        cut_s = max(lo_s, min(until_s, created_s(probe.events[0])))
        chunk, read = _read_whole(client, scope, wm, lo_s, cut_s, lookback_s)
        chunk.pages += 1  # the probe
        yield chunk
        total_now = probe.total_count if probe.total_count is not None else remaining
        remaining = max(0, total_now - read)
        if cut_s >= until_s:
            return
        lo_s = cut_s + 1
