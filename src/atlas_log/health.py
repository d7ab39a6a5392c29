"""The health file: when the exporter last finished a cycle successfully, for container health checks.

The exporter calls ``write_health(path, when)`` after each successful cycle when ``ATLAS_LOG_HEALTH_FILE`` is set;
``atlas-log health --max-age 5m`` (a Docker ``HEALTHCHECK``, a Kubernetes liveness probe) exits 0 when that time is
recent enough and 1 otherwise. No network, no credentials: it only reads one small local file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from atlas_log._time import format_atlas_time, format_duration, parse_atlas_time, utcnow

ENV_HEALTH_FILE = "ATLAS_LOG_HEALTH_FILE"
HEALTH_FORMAT = "atlas-log-exporter/health/1"


def health_file_from_env(env: dict[str, str] | None = None) -> Path | None:
    """The health file ``ATLAS_LOG_HEALTH_FILE`` names, or None when it is not set."""
    value = (os.environ if env is None else env).get(ENV_HEALTH_FILE, "").strip()
    return Path(value) if value else None


def write_health(path: Path, when: datetime) -> None:
    """Record ``when`` as the last successful cycle: written to a temporary file and renamed, so a reader never
    sees half a file. Errors are the caller's to log; a health file must never stop the exporter."""
    body = json.dumps({"format": HEALTH_FORMAT, "last_success": format_atlas_time(when), "pid": os.getpid()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".health-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(body + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def record_success(when: datetime, env: dict[str, str] | None = None) -> None:
    """``write_health`` to ``$ATLAS_LOG_HEALTH_FILE`` if it is set; does nothing otherwise."""
    path = health_file_from_env(env)
    if path is not None:
        write_health(path, when)


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str
    age_s: float | None = None


def read_last_success(path: Path) -> datetime:
    """The time in the health file; ``ValueError`` naming the problem when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no health file at {path}: no cycle has succeeded yet") from None
    except OSError as exc:
        raise ValueError(f"cannot read the health file {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ValueError(f"the health file {path} is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("last_success"), str):
        raise ValueError(f"the health file {path} has no last_success time")
    return parse_atlas_time(data["last_success"])


def check_health(path: Path, max_age_s: float, *, now: datetime | None = None) -> Health:
    """Healthy when the last successful cycle ended at most ``max_age_s`` ago."""
    try:
        last = read_last_success(path)
    except ValueError as exc:
        return Health(False, f"unhealthy: {exc}")
    age_s = ((now or utcnow()) - last).total_seconds()
    shown = format_duration(max(0, int(age_s)))
    if age_s > max_age_s:
        return Health(
            False,
            f"unhealthy: the last successful cycle was {shown} ago ({format_atlas_time(last)}), "
            f"more than --max-age {format_duration(int(max_age_s))}",
            age_s,
        )
    return Health(True, f"healthy: the last successful cycle was {shown} ago ({format_atlas_time(last)})", age_s)
