"""Durations (`90s`, `5m`, `12h`, `30d`) and Atlas timestamps (ISO-8601 UTC, one-second precision)."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """Parse `90s`, `5m`, `12h`, `30d` (also `ms`, `w`) into seconds; raise ValueError with a readable reason."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; write it like 90s, 5m, 12h or 30d")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{text!r} must be {'zero or more' if allow_zero else 'greater than zero'}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a whole number of seconds in the units parse_duration reads."""
    whole = int(seconds)
    if whole != seconds:
        return f"{round(seconds * 1000)}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def parse_atlas_time(text: str) -> datetime:
    """Parse an Atlas timestamp into an aware UTC datetime.

    Atlas writes `2026-08-10T03:06:47Z`; offsets (`+02:00`) and fractional seconds are accepted and normalised.
    Raises ValueError on anything else.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not an ISO-8601 timestamp")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; Atlas timestamps are UTC")
    return parsed.astimezone(UTC)


@functools.lru_cache(maxsize=8192)
def atlas_epoch_s(text: str) -> int:
    """``parse_atlas_time`` as whole epoch seconds, cached: events crowd into few distinct seconds."""
    return int(parse_atlas_time(text).timestamp())


def format_atlas_time(moment: datetime) -> str:
    """Write a datetime as Atlas does: UTC, one-second precision, `Z` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> datetime:
    return datetime.now(UTC)


def floor_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
