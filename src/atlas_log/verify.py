"""``atlas-log verify``: audit a destination against what the exporter promises (``docs/guarantees.md``).

Read-only. For every checkpoint (or the one ``--shard`` names) and the objects of that exporter, in key order:

* every object is readable gzip JSON Lines, its events first, then at least one heartbeat line;
* the objects' sequence numbers run 1, 2, 3, ... with no gap, and each heartbeat's ``seq`` is its object's;
* no event id appears twice, in one object or across objects (across shards too);
* each heartbeat's ``count`` matches the object's event lines of that scope (project events carry ``groupId``,
  org events ``orgId``; an event that could belong to either is checked against the counts' bounds);
* per scope, heartbeat watermarks never go backwards from object to object, and no event lies past its watermark;
* the checkpoint matches the objects: ``seq`` is the number of committed objects, and each scope's watermark,
  ``events_total``, ``last_seq`` and ``last_heartbeat`` are what its heartbeat lines say;
* nothing lies beyond the checkpoint except the one ``pending`` object, which the next run adopts (a note, not a
  problem).

Any problem makes the report fail. Run it while the exporter is idle, or accept that it re-checks (up to three
times) when it sees the checkpoint move under it.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atlas_log._time import format_atlas_time, parse_atlas_time, utcnow
from atlas_log.errors import AtlasLogError, CheckpointError
from atlas_log.high_watermark import Checkpoint, Watermark
from atlas_log.status import CheckpointRef, checkpoints_to_read, read_checkpoint
from atlas_log.write_events import HEARTBEAT_TYPE, Sink

_OBJECT_NAME = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})/atlas-events-(?:s(\d+)of(\d+)-)?(\d{12})\.jsonl\.gz$")
MAX_LISTED = 50  # problems printed in full; the rest are counted


@dataclass
class VerifyReport:
    destination: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoints: int = 0
    objects: int = 0
    events: int = 0
    heartbeats: int = 0
    scopes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "ok": self.ok}

    def render(self) -> str:
        lines = [f"problem: {p}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"problem: ... and {len(self.problems) - MAX_LISTED} more")
        lines += [f"note: {n}" for n in self.notes]
        counts = (
            f"{self.objects} objects, {self.events} events, {self.heartbeats} heartbeat lines, {self.scopes} scopes, "
            f"{self.checkpoints} checkpoint{'s' if self.checkpoints != 1 else ''}"
        )
        if self.ok:
            lines.append(f"verify OK: {self.destination}: {counts}")
        else:
            many = "s" if len(self.problems) != 1 else ""
            lines.append(f"verify FAILED: {self.destination}: {len(self.problems)} problem{many}; {counts}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Name:
    key: str
    tag: str  # "" or "s<i>of<N>-"
    seq: int


@dataclass
class _Expected:
    """A scope's state as its heartbeat lines in committed objects say it should be in the checkpoint."""

    watermark: Watermark
    events_total: int
    last_seq: int
    last_heartbeat: str | None


@dataclass
class _Chain:
    """What one exporter's (one checkpoint's) objects say, read in sequence order."""

    ref: CheckpointRef
    expected: dict[str, _Expected] = field(default_factory=dict)
    last_wm: dict[str, tuple[int | None, str]] = field(default_factory=dict)  # scope -> (min_date_s, object key)
    broken: list[str] = field(default_factory=list)  # keys of committed objects that could not be read


def verify_destination(
    sink: Sink, shard: tuple[int, int] | None = None, *, now: datetime | None = None, workers: int = 8
) -> VerifyReport:
    """Audit the destination; re-check up to three times if an exporter moves the checkpoint meanwhile."""
    report = VerifyReport(sink.describe())
    for _attempt in range(3):
        report, changed = _verify_once(sink, shard, now=now or utcnow(), workers=workers)
        if not changed:
            return report
    report.notes.append(
        "a checkpoint changed while the destination was read (an exporter is writing to it); the result may "
        "mention objects committed meanwhile. Re-run it while the exporter is idle to be sure"
    )
    return report


def _versions(sink: Sink, refs: list[CheckpointRef]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for ref in refs:
        loaded = sink.load_versioned(ref.key)
        out[ref.key] = None if loaded is None else loaded[1]
    return out


def _verify_once(
    sink: Sink, shard: tuple[int, int] | None, *, now: datetime, workers: int
) -> tuple[VerifyReport, bool]:
    report = VerifyReport(sink.describe())
    refs = checkpoints_to_read(sink, shard)
    before = _versions(sink, refs)
    names, stray = _list_objects(sink)
    report.problems += [f"{key}: not an object name this exporter writes" for key in stray]
    wanted_tags = {ref.object_tag for ref in refs}
    if shard is None:
        for tag in sorted(set(n.tag for n in names) - wanted_tags):
            report.problems.append(
                f"objects named atlas-events-{tag}... exist but their checkpoint "
                f"{_tag_checkpoint(tag)} does not: an exporter would export them again"
            )
    if all(v is None for v in before.values()) and not report.problems and not any(n.tag in wanted_tags for n in names):
        raise CheckpointError(
            f"nothing to verify at {sink.describe()}: no {' or '.join(ref.key for ref in refs)} and no objects of "
            "it (is --output, or --shard, right?)"
        )
    seen_ids: dict[str, str] = {}
    for ref in refs:
        cp: Checkpoint | None = None
        if before[ref.key] is None:
            mine = [n for n in names if n.tag == ref.object_tag]
            if mine:
                report.problems.append(
                    f"{ref.key} is missing but {len(mine)} objects of it exist: `atlas-log run` refuses to start "
                    "(restore the checkpoint from a backup or an object version)"
                )
            else:
                continue
        else:
            try:
                cp, _version = read_checkpoint(sink, ref, now=now)
            except CheckpointError as exc:
                report.problems.append(str(exc))
        report.checkpoints += 1 if cp is not None else 0
        chain_names = sorted((n for n in names if n.tag == ref.object_tag), key=lambda n: (n.seq, n.key))
        _verify_chain(sink, ref, cp, chain_names, seen_ids, report, workers)
    after = _versions(sink, refs)
    return report, after != before


def _tag_checkpoint(tag: str) -> str:
    match = re.fullmatch(r"s(\d+)of(\d+)-", tag)
    return f"_state/checkpoint-shard-{match.group(1)}-of-{match.group(2)}.json" if match else "_state/checkpoint.json"


def _list_objects(sink: Sink) -> tuple[list[_Name], list[str]]:
    names: list[_Name] = []
    stray: list[str] = []
    for key in sink.list_keys("dt="):
        match = _OBJECT_NAME.match(key)
        if match is None:
            stray.append(key)
            continue
        tag = "" if match.group(2) is None else f"s{match.group(2)}of{match.group(3)}-"
        names.append(_Name(key, tag, int(match.group(4))))
    return names, stray


def _fetch(sink: Sink, names: list[_Name], workers: int) -> Iterator[tuple[_Name, bytes | Exception | None]]:
    """The objects' bytes in order, fetched a few at a time ahead of the reader (memory stays bounded)."""
    window = max(1, workers) * 2
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="atlas-verify") as pool:
        queued: collections.deque[tuple[_Name, Future[bytes | None]]] = collections.deque()
        pending = iter(names)
        for name in pending:
            queued.append((name, pool.submit(sink.get, name.key)))
            if len(queued) >= window:
                break
        while queued:
            name, future = queued.popleft()
            try:
                result: bytes | Exception | None = future.result()
            except AtlasLogError as exc:
                result = exc
            nxt = next(pending, None)
            if nxt is not None:
                queued.append((nxt, pool.submit(sink.get, nxt.key)))
            yield name, result


def _verify_chain(
    sink: Sink,
    ref: CheckpointRef,
    cp: Checkpoint | None,
    names: list[_Name],
    seen_ids: dict[str, str],
    report: VerifyReport,
    workers: int,
) -> None:
    chain = _Chain(ref)
    committed_seq = cp.seq if cp is not None else None
    pending = cp.pending if cp is not None else None
    by_seq: dict[int, list[_Name]] = collections.defaultdict(list)
    for name in names:
        by_seq[name.seq].append(name)
    for seq, same in sorted(by_seq.items()):
        if len(same) > 1:
            report.problems.append(
                f"sequence number {seq} is used by {len(same)} objects: {', '.join(n.key for n in same)}"
            )
    top = max(by_seq, default=0)
    last = max(top, committed_seq or 0)
    for seq in range(1, last + 1):
        if seq not in by_seq and not (pending is not None and seq == pending.seq):
            report.problems.append(
                f"object {seq} of {ref.key} is missing (deleted?): no atlas-events-{ref.object_tag}{seq:012d}"
            )
    for name, body in _fetch(sink, names, workers):
        beyond = committed_seq is not None and name.seq > committed_seq
        if beyond:
            if pending is not None and name.seq == pending.seq and name.key == pending.key:
                report.notes.append(f"{name.key}: pending, will be adopted (written, not yet committed to {ref.key})")
            else:
                report.problems.append(
                    f"{name.key}: beyond the checkpoint {ref.key} (seq {committed_seq}) and not its pending object"
                )
        if isinstance(body, Exception):
            report.problems.append(f"{name.key}: cannot be read: {body}")
            chain.broken.append(name.key)
            continue
        if body is None:
            report.problems.append(f"{name.key}: vanished while it was verified")
            chain.broken.append(name.key)
            continue
        report.objects += 1
        if not _verify_object(name, body, chain, seen_ids, report, committed=not beyond):
            chain.broken.append(name.key)
    if pending is not None and not any(n.key == pending.key for n in names):
        report.notes.append(f"{pending.key}: its key is fixed (pending) but not written yet; the next run writes it")
    if cp is not None:
        _compare_checkpoint(ref, cp, names, chain, report)
    report.scopes += len(cp.scopes) if cp is not None else len(chain.expected)


def _verify_object(
    name: _Name,
    body: bytes,
    chain: _Chain,
    seen_ids: dict[str, str],
    report: VerifyReport,
    *,
    committed: bool,
) -> bool:
    """Check one object; record its heartbeats in ``chain``. False when it cannot be read at all."""
    key = name.key
    try:
        data = gzip.decompress(body)  # checked end to end: CRC, length, nothing truncated or appended
    except (OSError, EOFError, zlib.error) as exc:
        report.problems.append(f"{key}: not readable gzip ({exc}): truncated, or not written by this exporter")
        return False
    events: list[dict[str, Any]] = []
    heartbeats: list[dict[str, Any]] = []
    bad_lines: list[int] = []
    event_after_heartbeat = False
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad_lines.append(number)
            continue
        if not isinstance(record, dict):
            bad_lines.append(number)
        elif record.get("eventTypeName") == HEARTBEAT_TYPE:
            heartbeats.append(record)
        else:
            event_after_heartbeat = event_after_heartbeat or bool(heartbeats)
            events.append(record)
    if bad_lines:
        report.problems.append(f"{key}: {len(bad_lines)} lines are not JSON objects (first: line {bad_lines[0]})")
    if event_after_heartbeat:
        report.problems.append(f"{key}: event lines follow heartbeat lines (the exporter writes heartbeats last)")
    report.events += len(events)
    report.heartbeats += len(heartbeats)
    _check_event_ids(key, events, seen_ids, report)
    if not heartbeats:
        report.problems.append(f"{key}: no heartbeat lines: its events cannot be tied to any watermark")
        return False
    scopes = _check_heartbeats(name, heartbeats, chain, report, committed=committed)
    _check_counts(key, events, scopes, report)
    return True


def _check_event_ids(key: str, events: list[dict[str, Any]], seen_ids: dict[str, str], report: VerifyReport) -> None:
    doubled: dict[str, str] = {}
    missing = 0
    for event in events:
        event_id = event.get("id")
        if not isinstance(event_id, str) or not isinstance(event.get("created"), str):
            missing += 1
            continue
        first = seen_ids.get(event_id)
        if first is not None:
            doubled.setdefault(event_id, first)
        else:
            seen_ids[event_id] = key
    if missing:
        report.problems.append(f"{key}: {missing} event lines have no id or created field")
    if doubled:
        sample = ", ".join(f"{i} (first in {where})" for i, where in list(doubled.items())[:3])
        report.problems.append(f"{key}: {len(doubled)} event ids stored more than once, e.g. {sample}")


@dataclass
class _Beat:
    scope: dict[str, Any]
    watermark: Watermark
    count: int


def _check_heartbeats(
    name: _Name, heartbeats: list[dict[str, Any]], chain: _Chain, report: VerifyReport, *, committed: bool
) -> dict[str, _Beat]:
    key = name.key
    found: dict[str, _Beat] = {}
    for hb in heartbeats:
        scope = hb.get("scope")
        if not isinstance(scope, dict) or scope.get("kind") not in ("org", "project") or not scope.get("id"):
            report.problems.append(f"{key}: a heartbeat line without a valid scope")
            continue
        scope_key = f"{scope['kind']}:{scope['id']}"
        try:
            wm = Watermark.from_json(hb.get("watermark"))
            created = hb.get("created")
            parse_atlas_time(created if isinstance(created, str) else "")
        except ValueError as exc:
            report.problems.append(f"{key}: heartbeat of {scope_key} is unreadable: {exc}")
            continue
        count = hb.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            report.problems.append(f"{key}: heartbeat of {scope_key} has no valid count")
            count = 0
        if hb.get("seq") != name.seq:
            report.problems.append(
                f"{key}: heartbeat of {scope_key} says seq {hb.get('seq')!r}, its name says {name.seq}"
            )
        if scope_key in found:
            report.problems.append(f"{key}: two heartbeat lines for {scope_key}")
        found[scope_key] = _Beat(scope, wm, count)
        previous = chain.last_wm.get(scope_key)
        if previous is not None and (
            wm.min_date_s is None or (previous[0] is not None and wm.min_date_s < previous[0])
        ):
            report.problems.append(
                f"{key}: the watermark of {scope_key} goes backwards, to {_when(wm.min_date_s)} from "
                f"{_when(previous[0])} in {previous[1]}"
            )
        chain.last_wm[scope_key] = (wm.min_date_s, key)
        if committed:
            state = chain.expected.get(scope_key)
            chain.expected[scope_key] = _Expected(
                watermark=wm,
                events_total=(state.events_total if state else 0) + count,
                last_seq=name.seq,
                last_heartbeat=str(hb.get("created")),
            )
    return found


def _when(epoch_s: int | None) -> str:
    return "nothing" if epoch_s is None else format_atlas_time(datetime.fromtimestamp(epoch_s, UTC))


def _check_counts(key: str, events: list[dict[str, Any]], beats: dict[str, _Beat], report: VerifyReport) -> None:
    """Each heartbeat's count against the event lines of its scope; ambiguous events bound the counts."""
    definite: collections.Counter[str] = collections.Counter()
    maybe: collections.Counter[str] = collections.Counter()
    homeless = 0
    late: list[str] = []
    total = sum(b.count for b in beats.values())
    if total != len(events):
        report.problems.append(
            f"{key}: holds {len(events)} event lines but its heartbeats count {total} "
            "(lines removed, added or duplicated)"
        )
    for event in events:
        candidates = []
        group_id, org_id = event.get("groupId"), event.get("orgId")
        if isinstance(group_id, str) and f"project:{group_id}" in beats:
            candidates.append(f"project:{group_id}")
        if isinstance(org_id, str) and f"org:{org_id}" in beats:
            candidates.append(f"org:{org_id}")
        if not candidates:
            homeless += 1
        elif len(candidates) == 1:
            definite[candidates[0]] += 1
            created = event.get("created")
            wm = beats[candidates[0]].watermark.min_date_s
            try:
                if isinstance(created, str) and wm is not None and parse_atlas_time(created).timestamp() > wm:
                    late.append(str(event.get("id")))
            except ValueError:
                report.problems.append(f"{key}: event {event.get('id')} has an unreadable created time")
        else:
            for candidate in candidates:
                maybe[candidate] += 1
    if homeless:
        report.problems.append(f"{key}: {homeless} event lines belong to no scope with a heartbeat in the object")
    if late:
        report.problems.append(f"{key}: {len(late)} events lie past their scope's watermark, e.g. {late[0]}")
    for scope_key, beat in sorted(beats.items()):
        low, high = definite[scope_key], definite[scope_key] + maybe[scope_key]
        if not low <= beat.count <= high:
            found = str(low) if low == high else f"{low}-{high}"
            report.problems.append(
                f"{key}: the heartbeat of {scope_key} counts {beat.count} events, the object holds {found}"
            )


def _compare_checkpoint(
    ref: CheckpointRef, cp: Checkpoint, names: list[_Name], chain: _Chain, report: VerifyReport
) -> None:
    committed = [n for n in names if n.seq <= cp.seq]
    if len({n.seq for n in committed}) != cp.seq:
        report.problems.append(
            f"{ref.key} says {cp.seq} objects were committed; {len({n.seq for n in committed})} of them exist"
        )
    newest = next((n.key for n in names if n.seq == cp.seq), None)
    if cp.seq and newest is not None and cp.last_object != newest:
        report.problems.append(f"{ref.key}: last_object is {cp.last_object}, the newest committed object is {newest}")
    broken = [k for k in chain.broken if any(n.key == k and n.seq <= cp.seq for n in names)]
    if broken or len({n.seq for n in committed}) != cp.seq:
        report.notes.append(
            f"{ref.key}: watermarks not compared with the objects, since committed objects are missing or unreadable"
        )
        return
    for scope_key in sorted(set(cp.scopes) | set(chain.expected)):
        state = cp.scopes.get(scope_key)
        expected = chain.expected.get(scope_key)
        if state is None:
            report.problems.append(f"{ref.key}: {scope_key} has heartbeats in the objects but no watermark here")
            continue
        if expected is None:
            if state.watermark.min_date_s is not None or state.events_total:
                report.problems.append(f"{ref.key}: {scope_key} has a watermark but no heartbeat in any object")
            continue
        if state.watermark != expected.watermark:
            report.problems.append(
                f"{ref.key}: the watermark of {scope_key} ({_wm_text(state.watermark)}) is not the one its last "
                f"heartbeat, in object {expected.last_seq}, says ({_wm_text(expected.watermark)})"
            )
        if state.events_total != expected.events_total:
            report.problems.append(
                f"{ref.key}: {scope_key} has events_total {state.events_total}, its heartbeats count "
                f"{expected.events_total}"
            )
        if state.last_seq != expected.last_seq or state.last_heartbeat != expected.last_heartbeat:
            report.problems.append(
                f"{ref.key}: {scope_key} says its last heartbeat is {state.last_heartbeat} in object "
                f"{state.last_seq}; the objects say {expected.last_heartbeat} in object {expected.last_seq}"
            )


def _wm_text(wm: Watermark) -> str:
    return f"min_date {_when(wm.min_date_s)}, {len(wm.recent)} recent ids"
