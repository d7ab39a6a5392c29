"""Configuration: one frozen record, validated once at start.

Values come from flags, then environment variables, then an optional TOML config file, then defaults (click
resolves that order; see ``cli.py``). ``build_config`` checks everything at once and raises one ``ConfigError``
whose message has one line per problem, so a user fixes them all in one go. Secrets come only from the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from atlas_log._time import parse_atlas_time, parse_duration, utcnow
from atlas_log.errors import ConfigError

DEFAULT_ATLAS_URL = "https://cloud.mongodb.com"
DEFAULT_OUTPUT = "./atlas-logs"
DEFAULTS: dict[str, str] = {
    "interval": "60s",
    "since": "30d",
    "settle": "0s",
    "lookback": "5m",
    "heartbeat_interval": "5m",
    "timeout": "30s",
}

ENV_PUBLIC_KEY = "MONGODB_ATLAS_PUBLIC_API_KEY"
ENV_PRIVATE_KEY = "MONGODB_ATLAS_PRIVATE_API_KEY"
ENV_CLIENT_ID = "MONGODB_ATLAS_CLIENT_ID"
ENV_CLIENT_SECRET = "MONGODB_ATLAS_CLIENT_SECRET"  # noqa: S105 (a variable name)
ENV_BUCKET = "ATLAS_LOG_BUCKET"

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, repr=False)
class Credentials:
    """Either an API key pair (HTTP Digest) or a service account (OAuth client credentials).

    ``repr`` never shows the secret halves, so a credentials object can end up in a log line safely.
    """

    public_key: str | None = None
    private_key: str | None = None
    client_id: str | None = None
    client_secret: str | None = None

    @property
    def kind(self) -> str:
        return "service-account" if self.client_id else "api-key"

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.private_key, self.client_secret) if s)

    def __repr__(self) -> str:
        who = self.client_id if self.client_id else self.public_key
        return f"Credentials(kind={self.kind!r}, id={who!r})"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ends with "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Filters:
    org_events: bool = True
    project_events: bool = True
    include_orgs: frozenset[str] = frozenset()
    exclude_orgs: frozenset[str] = frozenset()
    include_projects: frozenset[str] = frozenset()
    exclude_projects: frozenset[str] = frozenset()
    include_event_types: frozenset[str] = frozenset()
    exclude_event_types: frozenset[str] = frozenset()

    def wants_org(self, org_id: str, name: str) -> bool:
        return _selected(org_id, name, self.include_orgs, self.exclude_orgs)

    def wants_project(self, project_id: str, name: str, org_id: str, org_name: str | None) -> bool:
        if not _selected(org_id, org_name or "", self.include_orgs, self.exclude_orgs):
            return False
        return _selected(project_id, name, self.include_projects, self.exclude_projects)

    def wants_event_type(self, event_type: str) -> bool:
        if self.include_event_types and event_type not in self.include_event_types:
            return False
        return event_type not in self.exclude_event_types


def _selected(ident: str, name: str, include: frozenset[str], exclude: frozenset[str]) -> bool:
    if include and ident not in include and name not in include:
        return False
    return ident not in exclude and name not in exclude


@dataclass(frozen=True)
class Config:
    credentials: Credentials
    atlas_url: str = DEFAULT_ATLAS_URL
    output: S3Location | Path = field(default_factory=lambda: Path(DEFAULT_OUTPUT).resolve())
    interval_s: float = 60.0
    since: datetime = field(default_factory=lambda: utcnow() - timedelta(days=30))
    settle_s: int = 0
    lookback_s: int = 300
    heartbeat_interval_s: float = 300.0
    timeout_s: float = 30.0
    concurrency: int = 32
    max_events_per_object: int = 50_000
    filters: Filters = Filters()
    sse: str | None = None  # None, "AES256" or "aws:kms"
    sse_kms_key_id: str | None = None
    s3_endpoint_url: str | None = None
    ca_bundle: str | None = None
    metrics_port: int | None = None
    shard_index: int = 0
    shard_count: int = 1

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.credentials.secrets


def credentials_from_env(env: Mapping[str, str]) -> Credentials:
    """The credentials the environment names; ``ConfigError`` when they are missing or half given."""
    pub, priv = env.get(ENV_PUBLIC_KEY, ""), env.get(ENV_PRIVATE_KEY, "")
    cid, secret = env.get(ENV_CLIENT_ID, ""), env.get(ENV_CLIENT_SECRET, "")
    problems = []
    if bool(pub) != bool(priv):
        missing = ENV_PRIVATE_KEY if pub else ENV_PUBLIC_KEY
        problems.append(f"{missing} is not set: an API key needs both {ENV_PUBLIC_KEY} and {ENV_PRIVATE_KEY}")
    if bool(cid) != bool(secret):
        missing = ENV_CLIENT_SECRET if cid else ENV_CLIENT_ID
        problems.append(f"{missing} is not set: a service account needs both {ENV_CLIENT_ID} and {ENV_CLIENT_SECRET}")
    if not problems and not (pub or cid):
        problems.append(
            f"no Atlas credentials: set {ENV_CLIENT_ID} and {ENV_CLIENT_SECRET} (service account) "
            f"or {ENV_PUBLIC_KEY} and {ENV_PRIVATE_KEY} (API key)"
        )
    if not problems and pub and cid:
        problems.append("both an API key and a service account are set: keep one of them")
    if problems:
        raise ConfigError("\n".join(problems))
    if cid:
        return Credentials(client_id=cid, client_secret=secret)
    return Credentials(public_key=pub, private_key=priv)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_atlas_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"--atlas-url {url!r} is not an http(s) URL such as {DEFAULT_ATLAS_URL}")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(
            f"--atlas-url {url!r} uses plain http to a remote host; use https (http is allowed only to loopback)"
        )
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"--atlas-url {url!r} must be just scheme and host, e.g. {DEFAULT_ATLAS_URL}")
    return f"{parts.scheme}://{parts.netloc}"


def parse_output(value: str | None, env: Mapping[str, str]) -> S3Location | Path:
    """``s3://bucket/prefix``, a folder path, ``$ATLAS_LOG_BUCKET`` or the default ``./atlas-logs``."""
    if not value:
        bucket = env.get(ENV_BUCKET, "")
        value = f"s3://{bucket}/" if bucket else DEFAULT_OUTPUT
    if value.startswith("s3://"):
        bucket, _, prefix = value[5:].partition("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(
                f"--output {value!r}: {bucket!r} is not a valid S3 bucket name "
                "(3-63 lower-case letters, digits, dots and hyphens)"
            )
        prefix = prefix.strip("/")
        return S3Location(bucket=bucket, prefix=f"{prefix}/" if prefix else "")
    if "://" in value:
        raise ValueError(f"--output {value!r}: only s3:// URLs and local folder paths are supported")
    path = Path(value).expanduser().resolve()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--output {value!r}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--output {value!r}: folder {probe} is not writable by this user")
    return path


def parse_since(value: str) -> datetime:
    """An ISO-8601 instant, or a duration back from now (``7d``)."""
    try:
        return utcnow() - timedelta(seconds=parse_duration(value, allow_zero=True))
    except ValueError:
        pass
    try:
        moment = parse_atlas_time(value if ("T" in value or ":" in value) else f"{value}T00:00:00Z")
    except ValueError:
        raise ValueError(
            f"--since {value!r} is neither a duration back from now (7d) nor an ISO-8601 UTC time "
            "(2026-01-31T00:00:00Z)"
        ) from None
    if moment > utcnow():
        raise ValueError(f"--since {value!r} is in the future")
    return moment


def parse_shard(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", value.strip())
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--shard {value!r} must be i/N with 0 <= i < N, e.g. 0/3")
    return int(match.group(1)), int(match.group(2))


def _names(values: Any) -> frozenset[str]:
    out: set[str] = set()
    for value in values or ():
        out.update(part.strip() for part in str(value).split(",") if part.strip())
    return frozenset(out)


def build_config(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validate every option at once; one ``ConfigError`` line per problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {}

    def check(name: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            values[name] = fn(*args, **kwargs)
        except (ValueError, ConfigError) as exc:
            problems.extend(str(exc).splitlines())

    def duration(name: str, *, allow_zero: bool = False) -> None:
        text = str(raw.get(name) or DEFAULTS[name])
        flag = "--" + name.replace("_", "-")
        try:
            values[name] = parse_duration(text, allow_zero=allow_zero)
        except ValueError as exc:
            problems.append(f"{flag}: {exc}")

    check("credentials", credentials_from_env, env)
    check(
        "atlas_url",
        check_atlas_url,
        str(raw.get("atlas_url") or env.get("MONGODB_ATLAS_URL") or DEFAULT_ATLAS_URL),
    )
    check("output", parse_output, raw.get("output"), env)
    check("since", parse_since, str(raw.get("since") or DEFAULTS["since"]))
    duration("interval")
    duration("settle", allow_zero=True)
    duration("lookback", allow_zero=True)
    duration("heartbeat_interval")
    duration("timeout")
    for name, low, high in (("concurrency", 1, 256), ("max_events_per_object", 100, 10_000_000)):
        value = raw.get(name)
        if value is not None and not (isinstance(value, int) and low <= value <= high):
            problems.append(f"--{name.replace('_', '-')} {value!r} must be a whole number from {low} to {high}")
    metrics_port = raw.get("metrics_port")
    if metrics_port is not None and not (isinstance(metrics_port, int) and 0 <= metrics_port <= 65535):
        problems.append(f"--metrics-port {metrics_port!r} must be a port number from 0 to 65535")
    sse = raw.get("sse") or None
    if sse in ("none", "None"):
        sse = None
    if sse not in (None, "AES256", "aws:kms"):
        problems.append(f"--sse {sse!r} must be one of none, AES256, aws:kms")
    if raw.get("sse_kms_key_id") and sse != "aws:kms":
        problems.append("--sse-kms-key-id needs --sse aws:kms")
    ca_bundle = raw.get("ca_bundle") or None
    if ca_bundle and not Path(ca_bundle).is_file():
        problems.append(f"--ca-bundle {ca_bundle!r} is not a readable file")
    shard = (0, 1)
    if raw.get("shard"):
        try:
            shard = parse_shard(str(raw["shard"]))
        except ValueError as exc:
            problems.append(str(exc))
    filters = Filters(
        org_events=bool(raw.get("org_events", True)),
        project_events=bool(raw.get("project_events", True)),
        include_orgs=_names(raw.get("include_org")),
        exclude_orgs=_names(raw.get("exclude_org")),
        include_projects=_names(raw.get("include_project")),
        exclude_projects=_names(raw.get("exclude_project")),
        include_event_types=_names(raw.get("include_event_type")),
        exclude_event_types=_names(raw.get("exclude_event_type")),
    )
    if not (filters.org_events or filters.project_events):
        problems.append("--no-org-events and --no-project-events together leave nothing to export")
    if problems:
        raise ConfigError("\n".join(problems))
    if isinstance(values["output"], Path) is False and values["output"] is None:
        raise ConfigError("--output is empty")
    return Config(
        credentials=values["credentials"],
        atlas_url=values["atlas_url"],
        output=values["output"],
        interval_s=values["interval"],
        since=values["since"],
        settle_s=int(values["settle"]),
        lookback_s=int(values["lookback"]),
        heartbeat_interval_s=values["heartbeat_interval"],
        timeout_s=values["timeout"],
        concurrency=int(raw.get("concurrency") or 32),
        max_events_per_object=int(raw.get("max_events_per_object") or 50_000),
        filters=filters,
        sse=sse,
        sse_kms_key_id=raw.get("sse_kms_key_id") or None,
        s3_endpoint_url=raw.get("s3_endpoint_url") or None,
        ca_bundle=ca_bundle,
        metrics_port=metrics_port,
        shard_index=shard[0],
        shard_count=shard[1],
    )
