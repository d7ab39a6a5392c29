"""The polling loop: fetch -> write -> commit. The one place where that order lives.

One cycle:

1. Load the checkpoint (and finish an object a crashed or concurrent run left pending: adopt it).
2. Discover every organization and project the key can see; apply filters and the shard.
3. Read each scope's window (from its watermark to the cycle's end) concurrently, chunks oldest first.
4. Stream new events into one gzip JSON Lines object; when it is full, or at the end, *commit* it:
   a. fix the object's key by compare-and-swap on the checkpoint (``pending``),
   b. create the object (create-only; if it already exists, adopt what is there instead),
   c. save the checkpoint with the object's watermarks (compare-and-swap).

The watermark never moves past an event that is not in a stored object. ``docs/guarantees.md`` explains why.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any

from atlas_log._time import format_atlas_time, parse_atlas_time, utcnow
from atlas_log.atlas_api import AtlasClient, Scope
from atlas_log.config import Config
from atlas_log.errors import (
    AtlasApiError,
    AtlasLogError,
    CheckpointConflict,
    CheckpointError,
    DestinationError,
)
from atlas_log.health import record_success
from atlas_log.high_watermark import (
    Checkpoint,
    EventKey,
    Pending,
    ScopeState,
    Watermark,
    advance,
)
from atlas_log.metrics import Metrics
from atlas_log.progress import Progress
from atlas_log.reader import CHUNK_EVENTS, Chunk, read_scope
from atlas_log.write_events import (
    STATE_DIR,
    ObjectWriter,
    Sink,
    append_heartbeat,
    object_key,
    open_sink,
    read_heartbeats,
    write_group_events,
    write_org_events,
)

log = logging.getLogger("atlas_log")

DEFAULT_METRICS_PORT = 8000  # the original tool's


def checkpoint_key(config: Config) -> str:
    if config.shard_count > 1:
        return f"{STATE_DIR}checkpoint-shard-{config.shard_index}-of-{config.shard_count}.json"
    return f"{STATE_DIR}checkpoint.json"


def shard_tag(config: Config) -> str:
    return f"s{config.shard_index}of{config.shard_count}-" if config.shard_count > 1 else ""


def in_shard(scope: Scope, index: int, count: int) -> bool:
    """A stable share: the scope id's hash, so every replica agrees without talking to the others."""
    if count <= 1:
        return True
    return int(uuid.uuid5(uuid.NAMESPACE_OID, scope.key).hex, 16) % count == index


# ----------------------------------------------------------------------------------------- checkpoint I/O
def load_checkpoint(sink: Sink, key: str, *, now: datetime | None = None) -> tuple[Checkpoint, str | None]:
    loaded = sink.load_versioned(key)
    if loaded is None:
        return Checkpoint(), None
    body, version = loaded
    now_s = int((now or utcnow()).timestamp())
    try:
        cp = Checkpoint.from_json(json.loads(body), now_s=now_s)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"the checkpoint {sink.describe().rstrip('/')}/{key} is damaged ({exc}); refusing to guess what was "
            "exported. Restore it from a backup or an earlier object version (see docs/operations.md)"
        ) from None
    return cp, version


def save_checkpoint(sink: Sink, key: str, cp: Checkpoint, version: str | None) -> str:
    cp.updated = format_atlas_time(utcnow())
    body = json.dumps(cp.to_json(), indent=1, sort_keys=False).encode()
    return sink.save_versioned(key, body, version)


def apply_heartbeats(cp: Checkpoint, heartbeats: Iterable[dict[str, Any]], *, seq: int, key: str) -> Checkpoint:
    """The checkpoint after the object ``seq`` at ``key`` with these heartbeat lines is stored."""
    scopes = {k: dataclasses.replace(v) for k, v in cp.scopes.items()}
    committed_at = None
    for hb in heartbeats:
        scope = hb.get("scope")
        if not isinstance(scope, dict):
            raise CheckpointError(f"object {key} holds a heartbeat without a scope")
        try:
            wm = Watermark.from_json(hb.get("watermark"))
        except ValueError as exc:
            raise CheckpointError(f"object {key} holds an unreadable watermark: {exc}") from None
        scope_key = f"{scope.get('kind')}:{scope.get('id')}"
        state = scopes.get(scope_key) or ScopeState(
            kind=str(scope.get("kind")), id=str(scope.get("id")), name="", org_id=""
        )
        state.name = str(scope.get("name") or state.name)
        state.org_id = str(scope.get("org_id") or state.org_id)
        state.watermark = wm
        state.events_total += int(hb.get("count") or 0)
        state.last_seq = seq
        state.last_heartbeat = str(hb.get("created"))
        scopes[scope_key] = state
        committed_at = str(hb.get("created"))
    return Checkpoint(
        seq=seq,
        scopes=scopes,
        pending=None,
        last_object=key,
        last_object_at=committed_at or format_atlas_time(utcnow()),
    )


def adopt_pending(
    sink: Sink, key: str, cp: Checkpoint, version: str | None, *, body: bytes | None = None
) -> tuple[Checkpoint, str | None, int]:
    """If the pending object exists (a crash or a concurrent run wrote it), commit it as it is.

    ``body``: the pending object's bytes when the caller has already read them. Returns the new checkpoint, its
    version, and the size of the adopted object (0 when there was nothing to adopt).
    """
    if cp.pending is None:
        return cp, version, 0
    if body is None:
        body = sink.get(cp.pending.key)
    if body is None:
        return cp, version, 0
    try:
        heartbeats = read_heartbeats(body)
    except (DestinationError, ValueError) as exc:
        raise CheckpointError(
            f"the pending object {cp.pending.key} is unreadable ({exc}); it must be inspected "
            "by hand before the exporter can continue"
        ) from None
    log.info(
        "adopting object %s written before the checkpoint was saved (%d scopes)",
        cp.pending.key,
        len(heartbeats),
    )
    new_cp = apply_heartbeats(cp, heartbeats, seq=cp.pending.seq, key=cp.pending.key)
    return new_cp, save_checkpoint(sink, key, new_cp, version), len(body)


# -------------------------------------------------------------------------------------------------- a cycle
@dataclass
class CycleResult:
    scopes: int = 0
    scopes_failed: int = 0
    events: int = 0
    objects: int = 0
    bytes: int = 0
    requests: int = 0
    duration_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    conflict: bool = False

    def summary(self) -> str:
        return (
            f"cycle done scopes={self.scopes} failed={self.scopes_failed} events={self.events} "
            f"objects={self.objects} bytes={self.bytes} requests={self.requests} "
            f"duration_ms={int(self.duration_s * 1000)}"
        )


class _Done:
    def __init__(self, scope: Scope, error: Exception | None) -> None:
        self.scope = scope
        self.error = error


class Exporter:
    """Runs cycles against one destination, reporting to ``metrics`` when given."""

    def __init__(
        self,
        config: Config,
        *,
        sink: Sink | None = None,
        client: AtlasClient | None = None,
        stop: threading.Event | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.sink = sink or open_sink(config)
        self.client = client or AtlasClient(config, on_request=metrics.on_request if metrics else None)
        self.stop = stop or threading.Event()
        self.exporter_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.cp_key = checkpoint_key(config)
        self.chunk_events = CHUNK_EVENTS

    def close(self) -> None:
        self.client.close()

    # -- discovery -----------------------------------------------------------------------------------------
    def scopes(self) -> list[Scope]:
        f = self.config.filters
        found = self.client.discover()
        org_names = {s.id: s.name for s in found if s.kind == "org"}
        chosen = []
        for scope in found:
            if scope.kind == "org":
                wanted = f.org_events and f.wants_org(scope.id, scope.name)
            else:
                wanted = f.project_events and f.wants_project(
                    scope.id, scope.name, scope.org_id, org_names.get(scope.org_id)
                )
            if wanted and in_shard(scope, self.config.shard_index, self.config.shard_count):
                chosen.append(scope)
        return chosen

    # -- the cycle -------------------------------------------------------------------------------------------
    def run_cycle(self) -> CycleResult:
        started = time.monotonic()
        requests_before, retries_before = self.client.requests, self.client.retries
        result = CycleResult()
        try:
            cp, version = load_checkpoint(self.sink, self.cp_key)
            if cp.seq == 0 and version is None:
                self._refuse_missing_checkpoint()
            if self.metrics and cp.seq:
                self.metrics.checkpoint = cp
            cp, version = self._adopt(cp, version)
            scopes = self.scopes()
            # Read up to now as Atlas's clock has it, if that is behind ours (a fast local clock must not move the
            # watermark past seconds Atlas has not lived yet), minus --settle.
            until_s = int(time.time() + self.client.server_clock_offset_s) - self.config.settle_s
            result.scopes = len(scopes)
            self._export(scopes, cp, version, until_s, result)
        except CheckpointConflict as exc:
            result.conflict = True
            log.warning("another exporter committed to this destination first (%s); re-reading the checkpoint", exc)
        result.requests = self.client.requests - requests_before
        result.duration_s = time.monotonic() - started
        if not result.conflict and not result.failures:
            _touch_health(utcnow())
        if self.metrics:
            self.metrics.on_cycle(result, retries=self.client.retries - retries_before)
        return result

    def _adopt(
        self, cp: Checkpoint, version: str | None, *, body: bytes | None = None
    ) -> tuple[Checkpoint, str | None]:
        """Commit the pending object if a crashed or concurrent run already wrote it."""
        new_cp, new_version, size = adopt_pending(self.sink, self.cp_key, cp, version, body=body)
        if size and self.metrics:
            self.metrics.on_commit(new_cp, {}, size, adopted=True)
        return new_cp, new_version

    def _refuse_missing_checkpoint(self) -> None:
        """No checkpoint but exported objects: someone lost the checkpoint. Never silently start again."""
        for existing in self.sink.list_keys("dt="):
            if shard_tag(self.config) in existing.rsplit("/", 1)[-1]:
                if self.sink.load_versioned(self.cp_key) is not None:
                    # A concurrent first run saved its checkpoint (and wrote an object) after we looked: a race,
                    # not a loss. Start the cycle again from its checkpoint.
                    raise CheckpointConflict("another run created the checkpoint while this one started")
                raise CheckpointError(
                    f"{self.sink.describe()} holds exported objects ({existing}, ...) but no checkpoint at "
                    f"{self.cp_key}: exporting again would duplicate them. Restore the checkpoint, or point "
                    "--output at a new prefix"
                )

    def _export(
        self,
        scopes: list[Scope],
        cp: Checkpoint,
        version: str | None,
        until_s: int,
        result: CycleResult,
    ) -> None:
        cfg = self.config
        since_s = int(cfg.since.timestamp())
        chunks = _Handoff(budget_events=2 * self.chunk_events)

        def work(scope: Scope) -> None:
            error: Exception | None = None
            if self.stop.is_set():  # stopping (SIGTERM, a Lambda deadline): start no new scope
                chunks.put(_Done(scope, None))
                return
            state = cp.scopes.get(scope.key)
            wm = state.watermark if state else Watermark()
            try:
                for chunk in read_scope(
                    self.client,
                    scope,
                    wm,
                    until_s=until_s,
                    lookback_s=cfg.lookback_s,
                    since_s=since_s,
                    chunk_events=self.chunk_events,
                    on_total=lambda total: progress.add_estimate(scope.key, total),
                ):
                    if not chunks.put(chunk) or self.stop.is_set():
                        break
            except AtlasLogError as exc:
                error = exc
            except Exception as exc:  # a bug must not hang the writer: report it as this scope's failure
                log.exception("unexpected error reading %s", scope.describe())
                error = exc
            chunks.put(_Done(scope, error))

        batch = _Batch(cp, version)
        progress = Progress(description=f"exporting {len(scopes)} scopes")
        pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="atlas-read")
        try:
            for scope in scopes:
                pool.submit(work, scope)
            remaining = len(scopes)
            while remaining:
                item = chunks.get()
                if isinstance(item, _Done):
                    remaining -= 1
                    if isinstance(item.error, AtlasApiError) and item.error.status == 404:
                        # Deleted between discovery and reading: it has vanished, which is not a failure.
                        log.warning(
                            "%s vanished during the cycle (%s); it is no longer polled",
                            item.scope.describe(),
                            item.error.error_code or "404",
                        )
                    elif item.error is not None:
                        result.scopes_failed += 1
                        message = f"{item.scope.describe()}: {item.error}"
                        result.failures.append(message)
                        log.warning("scope failed, its watermark stays: %s", message)
                    continue
                batch.add(item, cfg)
                progress.advance(pages=item.pages, events=item.count)
                if batch.writer.events >= cfg.max_events_per_object:
                    self._commit(batch, result, heartbeat_all=False)
                    batch = _Batch(batch.cp, batch.version)
            self._commit(batch, result, heartbeat_all=True)
        finally:
            chunks.abort()
            pool.shutdown(wait=True, cancel_futures=True)
            progress.close()

    def _commit(self, batch: _Batch, result: CycleResult, *, heartbeat_all: bool) -> None:
        """Store the batch as one object and move the watermarks: pending -> create-only write -> CAS."""
        cfg = self.config
        now = utcnow()
        due_before = now.timestamp() - cfg.heartbeat_interval_s
        lines = []
        for key, entry in batch.touched.items():
            state = batch.cp.scopes.get(key)
            stale = (
                state is None
                or state.last_heartbeat is None
                or parse_atlas_time(state.last_heartbeat).timestamp() <= due_before
            )
            if entry.count or (heartbeat_all and stale):
                lines.append(entry)
        if not lines:
            return
        cp, version = batch.cp, batch.version
        if cp.pending is None:
            pending = Pending(seq=cp.seq + 1, key=object_key(cp.seq + 1, now, shard_tag(cfg)))
            cp = dataclasses.replace(cp, pending=pending)
            version = save_checkpoint(self.sink, self.cp_key, cp, version)
            if self.metrics:
                self.metrics.checkpoint_saves.labels("pending").inc()
        assert cp.pending is not None
        seq, key = cp.pending.seq, cp.pending.key
        heartbeats = [
            append_heartbeat(
                batch.writer,
                now=now,
                scope=entry.scope_json,
                watermark=entry.watermark.to_json(),
                count=entry.count,
                seq=seq,
                exporter=self.exporter_id,
            )
            for entry in lines
        ]
        body = batch.writer.finish()
        existing = body if self.sink.put_new(key, body) else self.sink.get(key)
        if existing != body:
            # Someone else's object (a crashed or concurrent run). Identical bytes would mean our own write
            # went through and only its answer was lost (a retried PUT then sees 412): that is plain success.
            log.warning("object %s already exists (written by a crashed or concurrent run); adopting it", key)
            cp, version = self._adopt(cp, version, body=existing)
            batch.cp, batch.version = cp, version
            raise CheckpointConflict(f"object {key} was written by another run")
        new_cp = apply_heartbeats(cp, heartbeats, seq=seq, key=key)
        batch.version = save_checkpoint(self.sink, self.cp_key, new_cp, version)
        _touch_health(utcnow())  # progress counts as alive: a long first backfill must not fail a liveness probe
        batch.cp = new_cp
        events = sum(e.count for e in lines)
        result.events += events
        result.objects += 1
        result.bytes += len(body)
        if self.metrics:
            by_kind: collections.Counter[str] = collections.Counter()
            for entry in lines:
                by_kind[entry.scope_json["kind"]] += entry.count
            self.metrics.on_commit(new_cp, dict(by_kind), len(body), adopted=False)
        log.info("stored %s events=%d bytes=%d scopes=%d", key, events, len(body), len(lines))


class _Handoff:
    """Chunks from the readers to the writer, with at most ``budget_events`` events waiting at once.

    Reading outruns writing in a backfill; bounding by events (not by chunks) keeps memory flat whatever the
    concurrency. A chunk larger than the budget still passes, alone. ``_Done`` markers always pass.
    """

    def __init__(self, budget_events: int) -> None:
        self._budget = budget_events
        self._cond = threading.Condition()
        self._items: collections.deque[Chunk | _Done] = collections.deque()
        self._waiting = 0
        self._aborted = False

    def put(self, item: Chunk | _Done) -> bool:
        """Hand over ``item``; False when the writer gave up (the reader should stop)."""
        size = item.count if isinstance(item, Chunk) else 0
        with self._cond:
            while size and self._waiting and self._waiting + size > self._budget and not self._aborted:
                self._cond.wait()
            if self._aborted:
                return False
            self._items.append(item)
            self._waiting += size
            self._cond.notify_all()
            return True

    def get(self) -> Chunk | _Done:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.popleft()
            if isinstance(item, Chunk):
                self._waiting -= item.count
            self._cond.notify_all()
            return item

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()


@dataclass
class _Entry:
    scope_json: dict[str, str]
    watermark: Watermark
    count: int = 0


class _Batch:
    """The object being built: its writer, and each touched scope's watermark as of what it holds."""

    def __init__(self, cp: Checkpoint, version: str | None) -> None:
        self.cp = cp
        self.version = version
        self.writer = ObjectWriter()
        self.touched: dict[str, _Entry] = {}

    def add(self, chunk: Chunk, cfg: Config) -> None:
        scope = chunk.scope
        entry = self.touched.get(scope.key)
        if entry is None:
            state = self.cp.scopes.get(scope.key)
            entry = _Entry(
                scope_json={"kind": scope.kind, "id": scope.id, "name": scope.name, "org_id": scope.org_id},
                watermark=state.watermark if state else Watermark(),
            )
            self.touched[scope.key] = entry
        wants = cfg.filters.wants_event_type
        lines = chunk.lines(wants)
        (write_org_events if scope.kind == "org" else write_group_events)(self.writer, lines)
        entry.count += len(lines)
        handled: list[EventKey] = list(chunk.keys())
        entry.watermark = advance(entry.watermark, handled, lookback_s=cfg.lookback_s, read_until_s=chunk.read_until_s)


def _touch_health(when: datetime) -> None:
    """Record liveness in ``$ATLAS_LOG_HEALTH_FILE`` (for container health checks), if it is set."""
    try:
        record_success(when)
    except OSError as exc:
        log.warning("cannot write the health file: %s", exc)


# ------------------------------------------------------------------------------------------------ the loop
def run(
    config: Config,
    *,
    once: bool = False,
    exporter: Exporter | None = None,
    stop: threading.Event | None = None,
    max_cycles: int | None = None,
) -> int:
    """Poll every ``interval``; return the process exit status (0 ok, 1 when a ``--once`` cycle failed)."""
    stop = stop or threading.Event()
    if exporter is None:
        port = config.metrics_port if (config.metrics_port is not None or once) else DEFAULT_METRICS_PORT
        metrics = Metrics() if port is not None else None
        if metrics is not None and port is not None:
            try:
                metrics.serve(port)
            except OSError as exc:
                log.error(
                    "cannot serve metrics on port %d (%s): choose another with --metrics-port",
                    port,
                    exc.strerror or exc,
                )
                return 2
        exporter = Exporter(config, stop=stop, metrics=metrics)
    exporter.stop = stop
    cycles = 0
    status = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                result = exporter.run_cycle()
            except CheckpointError as exc:
                log.error("%s", exc)  # a damaged or missing checkpoint: stop rather than guess
                return 1
            except DestinationError as exc:
                log.error("%s", exc)
                if once:
                    return 1
                result = None
            except AtlasApiError as exc:
                log.error("cycle failed: %s", exc)
                if once:
                    return 1
                result = None
            if result is not None:
                log.info(result.summary())
                status = 1 if (result.failures or result.conflict) else 0
            cycles += 1
            if once or (max_cycles is not None and cycles >= max_cycles):
                return status if result is not None else 1
            delay = config.interval_s - (time.monotonic() - started)
            if result is not None and result.conflict:
                delay = random.uniform(1.0, 5.0)
            stop.wait(max(0.0, delay))
    finally:
        exporter.close()
    return 0


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the object being committed, then exit. A second one: exit at once."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        log.info("received %s: finishing the current step, then stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main() -> None:
    """``python -m atlas_log.get_latest``: the same as ``atlas-log run``."""
    from atlas_log.cli import main as cli_main

    cli_main(["run", *sys.argv[1:]])


if __name__ == "__main__":
    main()
