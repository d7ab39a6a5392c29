"""``atlas-log status``: what a destination's checkpoint says, per scope, without Atlas credentials.

Reads ``_state/checkpoint.json`` (or every shard's checkpoint) and reports, for each scope, its watermark, the lag
behind now, the events exported so far and the time of its last heartbeat. Nothing here writes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from atlas_log._time import format_atlas_time, parse_atlas_time, utcnow
from atlas_log.errors import CheckpointError
from atlas_log.high_watermark import Checkpoint
from atlas_log.write_events import STATE_DIR, Sink

_CHECKPOINT_NAME = re.compile(r"^checkpoint(?:-shard-(\d+)-of-(\d+))?\.json$")


@dataclass(frozen=True)
class CheckpointRef:
    """Where one checkpoint lives, and the shard it belongs to (``None`` for an unsharded exporter)."""

    key: str
    shard: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return "-" if self.shard is None else f"{self.shard[0]}/{self.shard[1]}"

    @property
    def object_tag(self) -> str:
        """The part of an object's name that says which shard wrote it (see ``get_latest.shard_tag``)."""
        return "" if self.shard is None else f"s{self.shard[0]}of{self.shard[1]}-"


def checkpoint_ref(shard: tuple[int, int] | None) -> CheckpointRef:
    """The checkpoint an exporter started with ``--shard i/N`` uses (the same rule as ``get_latest.checkpoint_key``)."""
    if shard is None or shard[1] <= 1:
        return CheckpointRef(f"{STATE_DIR}checkpoint.json")
    return CheckpointRef(f"{STATE_DIR}checkpoint-shard-{shard[0]}-of-{shard[1]}.json", shard)


def find_checkpoints(sink: Sink) -> list[CheckpointRef]:
    """Every checkpoint in the destination: the unsharded one and each shard's, in a stable order."""
    found = []
    for key in sink.list_keys(STATE_DIR):
        match = _CHECKPOINT_NAME.match(key[len(STATE_DIR) :])
        if not match:
            continue
        shard = None if match.group(1) is None else (int(match.group(1)), int(match.group(2)))
        if shard is not None and shard[1] <= 1:
            continue
        found.append(CheckpointRef(key, shard))
    found.sort(key=lambda ref: (ref.shard is not None, ref.shard or (0, 0)))
    return found


def checkpoints_to_read(sink: Sink, shard: tuple[int, int] | None) -> list[CheckpointRef]:
    """With ``--shard``, that shard's checkpoint; without, every checkpoint found (the unsharded one if none is)."""
    if shard is not None:
        return [checkpoint_ref(shard)]
    return find_checkpoints(sink) or [checkpoint_ref(None)]


def read_checkpoint(sink: Sink, ref: CheckpointRef, *, now: datetime) -> tuple[Checkpoint, str]:
    """The parsed checkpoint and its version; ``CheckpointError`` (one readable line) when missing or damaged."""
    loaded = sink.load_versioned(ref.key)
    where = f"{sink.describe().rstrip('/')}/{ref.key}"
    if loaded is None:
        raise CheckpointError(
            f"no checkpoint at {where}: nothing was exported here yet, or --output (or --shard) is not the one "
            "the exporter uses"
        )
    body, version = loaded
    try:
        return Checkpoint.from_json(json.loads(body), now_s=int(now.timestamp())), version
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"the checkpoint {where} is damaged: {exc}") from None


# ------------------------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class ScopeRow:
    checkpoint: str
    shard: str
    kind: str
    id: str
    name: str
    org_id: str
    watermark: str | None
    lag_s: int | None
    events_total: int
    last_heartbeat: str | None
    heartbeat_age_s: int | None
    last_seq: int | None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class CheckpointSummary:
    key: str
    shard: str
    seq: int
    updated: str | None
    last_object: str | None
    last_object_at: str | None
    pending: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class StatusReport:
    destination: str
    as_of: str
    checkpoints: list[CheckpointSummary]
    scopes: list[ScopeRow]

    def to_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "as_of": self.as_of,
            "checkpoints": [c.to_json() for c in self.checkpoints],
            "scopes": [s.to_json() for s in self.scopes],
        }


def _age_s(now: datetime, when: str | None) -> int | None:
    if when is None:
        return None
    try:
        return max(0, int((now - parse_atlas_time(when)).total_seconds()))
    except ValueError:
        return None


def build_status(sink: Sink, shard: tuple[int, int] | None = None, *, now: datetime | None = None) -> StatusReport:
    """Read the checkpoint(s) and describe every scope. Raises ``CheckpointError``/``DestinationError``."""
    now = now or utcnow()
    summaries: list[CheckpointSummary] = []
    rows: list[ScopeRow] = []
    for ref in checkpoints_to_read(sink, shard):
        cp, _version = read_checkpoint(sink, ref, now=now)
        summaries.append(
            CheckpointSummary(
                key=ref.key,
                shard=ref.label,
                seq=cp.seq,
                updated=cp.updated,
                last_object=cp.last_object,
                last_object_at=cp.last_object_at,
                pending=None if cp.pending is None else cp.pending.key,
            )
        )
        for state in cp.scopes.values():
            wm = state.watermark.min_date
            rows.append(
                ScopeRow(
                    checkpoint=ref.key,
                    shard=ref.label,
                    kind=state.kind,
                    id=state.id,
                    name=state.name,
                    org_id=state.org_id,
                    watermark=None if wm is None else format_atlas_time(wm),
                    lag_s=None if wm is None else max(0, int((now - wm).total_seconds())),
                    events_total=state.events_total,
                    last_heartbeat=state.last_heartbeat,
                    heartbeat_age_s=_age_s(now, state.last_heartbeat),
                    last_seq=state.last_seq,
                )
            )
    rows.sort(key=lambda r: (r.kind != "org", r.name.lower(), r.id))
    return StatusReport(sink.describe(), format_atlas_time(now), summaries, rows)


def format_age(seconds: int | None) -> str:
    """``42s``, ``3m12s``, ``2h05m``, ``4d03h``: short, and precise enough to judge a lag at a glance."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def render_table(report: StatusReport, *, terminal: bool | None = None, width: int | None = None) -> str:
    """The report as a table (rich), plain text when not on a terminal so it can be piped and grepped."""
    from io import StringIO

    from rich import box
    from rich.console import Console
    from rich.table import Table

    buffer = StringIO()
    console = Console(
        file=buffer,
        force_terminal=bool(terminal),
        no_color=not terminal,
        width=width or (None if terminal else 1000),
        highlight=False,
        soft_wrap=False,
    )
    sharded = any(c.shard != "-" for c in report.checkpoints)
    for cp in report.checkpoints:
        shard = f" (shard {cp.shard})" if cp.shard != "-" else ""
        line = f"{report.destination.rstrip('/')}/{cp.key}{shard}: {cp.seq} objects, last {cp.last_object or '-'}"
        line += f" at {cp.last_object_at or '-'}"
        if cp.pending:
            line += f"; pending {cp.pending} (the next run adopts or writes it)"
        console.print(line, markup=False)
    table = Table(box=box.SIMPLE_HEAD if terminal else None, pad_edge=False, header_style="bold" if terminal else "")
    columns = ["kind", "id", "name", "watermark", "lag", "events", "last heartbeat"]
    if sharded:
        columns.insert(0, "shard")
    for column in columns:
        table.add_column(column, justify="right" if column in ("lag", "events") else "left", no_wrap=True)
    for row in report.scopes:
        cells = [
            row.kind,
            row.id,
            row.name,
            row.watermark or "-",
            format_age(row.lag_s),
            str(row.events_total),
            "-" if row.last_heartbeat is None else f"{row.last_heartbeat} ({format_age(row.heartbeat_age_s)} ago)",
        ]
        if sharded:
            cells.insert(0, row.shard)
        table.add_row(*cells)
    console.print(table)
    console.print(f"{len(report.scopes)} scopes, {sum(r.events_total for r in report.scopes)} events exported")
    text = buffer.getvalue()
    return text if terminal else "".join(line.rstrip() + "\n" for line in text.splitlines())


def render_json(report: StatusReport) -> str:
    return json.dumps(report.to_json(), indent=2)
