"""The watermark: what of one scope's feed is already exported.

A scope is one organization's feed or one project's feed. Its watermark is the seed's pair
``min_date`` plus ``last_ids``, extended by the ids exported inside the look-back window:

* ``min_date``: every event Atlas showed with ``created <= min_date`` is exported (or deliberately filtered).
* ``last_ids``: the ids of exported events created at exactly ``min_date`` (several events share one second).
* ``recent``: id -> ``created`` (epoch seconds) of exported events with
  ``min_date - lookback <= created <= min_date``; ``last_ids`` is the subset at ``min_date``.

An event is *new* when it is later than ``min_date``, or when it lies inside the look-back window and its id is
not in ``recent``. That is what lets an event that became visible late (its ``created`` earlier than events already
exported) still be exported, once, provided it became visible within ``lookback`` of its ``created``.

Everything here is pure: no I/O, no clock. Property tests drive it in ``tests/test_high_watermark.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atlas_log._time import format_atlas_time, parse_atlas_time


@dataclass(frozen=True, slots=True)
class EventKey:
    """The two fields of an event the watermark looks at."""

    id: str
    created_s: int  # epoch seconds (Atlas has one-second precision)


@dataclass(frozen=True)
class Watermark:
    min_date_s: int | None = None  # epoch seconds; None: nothing exported yet
    recent: Mapping[str, int] = field(default_factory=dict)  # id -> created_s, within the look-back window

    @property
    def min_date(self) -> datetime | None:
        return None if self.min_date_s is None else datetime.fromtimestamp(self.min_date_s, UTC)

    @property
    def last_ids(self) -> frozenset[str]:
        return frozenset(i for i, created in self.recent.items() if created == self.min_date_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "min_date": None if self.min_date is None else format_atlas_time(self.min_date),
            "last_ids": sorted(self.last_ids),
            "recent": {i: format_atlas_time(datetime.fromtimestamp(c, UTC)) for i, c in sorted(self.recent.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> Watermark:
        """Read a watermark back; raise ValueError (with the field) on anything malformed."""
        if not isinstance(data, dict):
            raise ValueError("watermark is not an object")
        raw_min = data.get("min_date")
        if raw_min is None:
            min_date_s = None
        elif isinstance(raw_min, str):
            min_date_s = int(parse_atlas_time(raw_min).timestamp())
        else:
            raise ValueError("watermark min_date is not a timestamp")
        raw_recent = data.get("recent", {})
        raw_last = data.get("last_ids", [])
        if not isinstance(raw_recent, dict) or not isinstance(raw_last, list):
            raise ValueError("watermark recent/last_ids have the wrong type")
        recent: dict[str, int] = {}
        for event_id, created in raw_recent.items():
            if not isinstance(created, str):
                raise ValueError(f"watermark recent[{event_id!r}] is not a timestamp")
            recent[event_id] = int(parse_atlas_time(created).timestamp())
        for event_id in raw_last:
            if not isinstance(event_id, str):
                raise ValueError("watermark last_ids holds a non-string")
            if min_date_s is None:
                raise ValueError("watermark has last_ids but no min_date")
            recent.setdefault(event_id, min_date_s)
        return cls(min_date_s=min_date_s, recent=recent)


def query_start_s(wm: Watermark, *, lookback_s: int, since_s: int) -> int:
    """The ``minDate`` to ask Atlas for: the look-back window before ``min_date``, or ``since`` on a first run."""
    if wm.min_date_s is None:
        return since_s
    return wm.min_date_s - lookback_s


def is_new(wm: Watermark, key: EventKey, *, lookback_s: int) -> bool:
    """True when the event is not yet exported and still inside what this watermark can judge."""
    if wm.min_date_s is None or key.created_s > wm.min_date_s:
        return True
    if key.created_s < wm.min_date_s - lookback_s:
        return False  # older than the look-back window: exported long ago (or visible too late to tell)
    return key.id not in wm.recent


def new_events(wm: Watermark, keys: Iterable[EventKey], *, lookback_s: int) -> list[EventKey]:
    """The new events among ``keys``, each id once, oldest first (ties by id)."""
    seen: set[str] = set()
    out: list[EventKey] = []
    for key in keys:
        if key.id in seen:
            continue
        seen.add(key.id)
        if is_new(wm, key, lookback_s=lookback_s):
            out.append(key)
    out.sort(key=lambda k: (k.created_s, k.id))
    return out


def advance(
    wm: Watermark, handled: Iterable[EventKey], *, lookback_s: int, read_until_s: int | None = None
) -> Watermark:
    """The watermark after ``handled`` events are durably stored (or deliberately filtered out).

    ``read_until_s``, when given, says the whole window up to that second was read, so ``min_date`` may move there
    even if no event was that late (quiet scopes keep a current watermark, and the look-back set stays small).
    """
    recent = dict(wm.recent)
    newest = wm.min_date_s
    for key in handled:
        recent[key.id] = key.created_s
        if newest is None or key.created_s > newest:
            newest = key.created_s
    if read_until_s is not None and (newest is None or read_until_s > newest):
        newest = read_until_s
    if newest is None:
        return wm
    floor = newest - lookback_s
    return Watermark(min_date_s=newest, recent={i: c for i, c in recent.items() if c >= floor})


# ----------------------------------------------------------------------------------------------- the checkpoint
CHECKPOINT_FORMAT = "atlas-log-exporter/checkpoint/1"


@dataclass
class ScopeState:
    """A scope's committed watermark plus what ``status`` shows about it."""

    kind: str
    id: str
    name: str
    org_id: str
    watermark: Watermark = field(default_factory=Watermark)
    events_total: int = 0
    last_seq: int | None = None  # the object that last carried this scope's heartbeat
    last_heartbeat: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "name": self.name,
            "org_id": self.org_id,
            "watermark": self.watermark.to_json(),
            "events_total": self.events_total,
            "last_seq": self.last_seq,
            "last_heartbeat": self.last_heartbeat,
        }

    @classmethod
    def from_json(cls, key: str, data: Any) -> ScopeState:
        if not isinstance(data, dict):
            raise ValueError(f"scope {key} is not an object")
        try:
            state = cls(
                kind=_typed(data, "kind", str),
                id=_typed(data, "id", str),
                name=_typed(data, "name", str),
                org_id=_typed(data, "org_id", str),
                watermark=Watermark.from_json(data.get("watermark")),
                events_total=_typed(data, "events_total", int),
                last_seq=_typed(data, "last_seq", int, optional=True),
                last_heartbeat=_typed(data, "last_heartbeat", str, optional=True),
            )
        except ValueError as exc:
            raise ValueError(f"scope {key}: {exc}") from None
        if state.kind not in ("org", "project") or key != f"{state.kind}:{state.id}":
            raise ValueError(f"scope {key}: kind/id do not match its key")
        return state


@dataclass(frozen=True)
class Pending:
    """The next object's key, fixed by compare-and-swap before the object is written (see docs/guarantees.md)."""

    seq: int
    key: str


@dataclass
class Checkpoint:
    seq: int = 0  # number of objects committed
    scopes: dict[str, ScopeState] = field(default_factory=dict)
    pending: Pending | None = None
    last_object: str | None = None
    last_object_at: str | None = None  # when the last object was committed (ISO-8601)
    updated: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "seq": self.seq,
            "updated": self.updated,
            "last_object": self.last_object,
            "last_object_at": self.last_object_at,
            "pending": None if self.pending is None else {"seq": self.pending.seq, "key": self.pending.key},
            "scopes": {key: state.to_json() for key, state in sorted(self.scopes.items())},
        }

    @classmethod
    def from_json(cls, data: Any, *, now_s: int) -> Checkpoint:
        """Parse and check a checkpoint; ValueError naming the first problem found."""
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a checkpoint of this tool (expected format {CHECKPOINT_FORMAT!r})")
        seq = _typed(data, "seq", int)
        if seq < 0:
            raise ValueError("seq is negative")
        raw_scopes = data.get("scopes")
        if not isinstance(raw_scopes, dict):
            raise ValueError("scopes is not an object")
        scopes = {key: ScopeState.from_json(key, value) for key, value in raw_scopes.items()}
        for key, state in scopes.items():
            if state.watermark.min_date_s is not None and state.watermark.min_date_s > now_s + 300:
                raise ValueError(
                    f"scope {key}: watermark {format_atlas_time(state.watermark.min_date)} "  # type: ignore[arg-type]
                    "is in the future"
                )
        raw_pending = data.get("pending")
        pending = None
        if raw_pending is not None:
            if not isinstance(raw_pending, dict):
                raise ValueError("pending is not an object")
            pending = Pending(seq=_typed(raw_pending, "seq", int), key=_typed(raw_pending, "key", str))
            if pending.seq != seq + 1:
                raise ValueError(f"pending seq {pending.seq} does not follow seq {seq}")
        return cls(
            seq=seq,
            scopes=scopes,
            pending=pending,
            last_object=_typed(data, "last_object", str, optional=True),
            last_object_at=_typed(data, "last_object_at", str, optional=True),
            updated=_typed(data, "updated", str, optional=True),
        )


def _typed(data: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name} should be {'null or ' if optional else ''}{kind.__name__}, got {value!r:.40}")
    return value
