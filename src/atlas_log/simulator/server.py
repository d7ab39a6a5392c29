"""The HTTP side: a ThreadingHTTPServer answering the seven Atlas operations, OAuth tokens and admin routes."""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import socket
import struct
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from atlas_log._time import parse_atlas_time
from atlas_log.simulator.auth import AuthOutcome, DigestVerifier, TokenIssuer
from atlas_log.simulator.config import RANDOM_FAULTS, Fault, SimulatorConfig
from atlas_log.simulator.ratelimit import Decision, RateLimiter
from atlas_log.simulator.store import EventStore, Scope

API_PREFIX = "/api/atlas/v2"
VERSION = "2023-01-01"
MEDIA_TYPE = f"application/vnd.atlas.{VERSION}+json"
CONTENT_TYPE = f"{MEDIA_TYPE};charset=utf-8"
ERROR_CONTENT_TYPE = "application/json"
_HEX24 = re.compile(r"^[a-f0-9]{24}$")
_ACCEPT_VERSION = re.compile(r"application/vnd\.atlas\.(\d{4}-\d{2}-\d{2})\+json", re.IGNORECASE)
_ACCEPT_ANY_VERSION = re.compile(r"application/vnd\.atlas\.([^+;,\s]*)\+json", re.IGNORECASE)

# Headers Atlas sends on every answer (samples/*.http); Date and Server come from http.server.
_STATIC_HEADERS: tuple[tuple[str, str], ...] = (
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubdomains;"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("X-Java-Version", "17.0.19+10-LTS"),
    ("X-Mongodb-Service-Version", "gitHash=0000000000000000000000000000000000000000; versionString=simulator"),
    ("X-Permitted-Cross-Domain-Policies", "none"),
)
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Route:
    operation: str  # the spec's operationId
    java_method: str
    bucket: str
    pattern: re.Pattern[str]


ROUTES: tuple[Route, ...] = (
    Route("listOrgs", "ApiOrganizationsResource::getAllOrgs", "orgs", re.compile(r"^/orgs/?$")),
    Route("listGroups", "ApiAtlasGroupsResource::getGroups", "groups", re.compile(r"^/groups/?$")),
    Route(
        "getOrgGroups", "ApiOrganizationsResource::getAllGroups", "org_groups", re.compile(r"^/orgs/([^/]+)/groups/?$")
    ),
    Route("listOrgEvents", "ApiOrgEventsResource::getAllEvents", "org_events", re.compile(r"^/orgs/([^/]+)/events/?$")),
    Route(
        "getOrgEvent",
        "ApiOrgEventsResource::getEvent",
        "org_events",
        re.compile(r"^/orgs/([^/]+)/events/([^/]+)/?$"),
    ),
    Route(
        "listGroupEvents",
        "ApiGroupEventsResource::getAllEvents",
        "group_events",
        re.compile(r"^/groups/([^/]+)/events/?$"),
    ),
    Route(
        "getGroupEvent",
        "ApiGroupEventsResource::getEvent",
        "group_events",
        re.compile(r"^/groups/([^/]+)/events/([^/]+)/?$"),
    ),
)


class ApiError(Exception):
    """An Atlas error answer: status, errorCode, detail and its parameters."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        parameters: list[Any] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.parameters = parameters or []
        self.headers = headers or []


def error_body(status: int, code: str, detail: str, parameters: list[Any]) -> bytes:
    body = {
        "detail": detail,
        "error": status,
        "errorCode": code,
        "parameters": parameters,
        "reason": _REASONS.get(status, "Error"),
    }
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class FaultQueue:
    """One-shot faults (FIFO), each for the next request whose path contains `path_contains`."""

    items: deque[list[Any]] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, fault: Fault | CustomResponse, count: int, path_contains: str | None) -> None:
        if count < 1:
            return
        with self.lock:
            self.items.append([fault, count, path_contains])

    def clear(self) -> None:
        with self.lock:
            self.items.clear()

    def pop_for(self, path: str) -> Fault | CustomResponse | None:
        with self.lock:
            for item in self.items:
                fault, _, needle = item
                matches = needle in path if needle else path.startswith(API_PREFIX)
                if matches:
                    item[1] -= 1
                    if item[1] <= 0:
                        self.items.remove(item)
                    return fault  # type: ignore[no-any-return]
        return None


@dataclass(frozen=True)
class CustomResponse:
    """An arbitrary answer served instead of the normal one (bad-input tests: HTML pages, wrong shapes...)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Rewrite = Callable[[dict[str, Any]], "dict[str, Any] | bytes"]


@dataclass
class RewriteQueue:
    """One-shot rewrites of a successful list answer (FIFO), applied after authentication and routing."""

    items: deque[list[Any]] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, fn: Rewrite, count: int, path_contains: str | None) -> None:
        if count < 1:
            return
        with self.lock:
            self.items.append([fn, count, path_contains])

    def pop_for(self, path: str) -> Rewrite | None:
        with self.lock:
            for item in self.items:
                fn, _, needle = item
                if needle is None or needle in path:
                    item[1] -= 1
                    if item[1] <= 0:
                        self.items.remove(item)
                    return fn  # type: ignore[no-any-return]
        return None


class Stats:
    """Counters the tests and benchmarks read through `Simulator.stats()`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.faults: dict[str, int] = defaultdict(int)
        self.rate_limited = 0
        self.events_served = 0
        self.tokens_issued = 0

    def request(self, route: str, status: int) -> None:
        with self.lock:
            self.requests[route][status] += 1
            if status == 429:
                self.rate_limited += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": {route: dict(by_status) for route, by_status in self.requests.items()},
                "requests_total": sum(sum(v.values()) for v in self.requests.values()),
                "rate_limited": self.rate_limited,
                "faults": dict(self.faults),
                "events_served": self.events_served,
                "tokens_issued": self.tokens_issued,
            }


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or vanishes (killed exporters, fault tests) is normal here, not worth a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class App:
    """Everything a request needs: the store, auth, limits, faults and stats."""

    def __init__(self, config: SimulatorConfig, store: EventStore) -> None:
        self.config = config
        self.store = store
        self.digest = DigestVerifier(config.public_key, config.private_key, config.nonce_ttl_s)
        self.tokens = TokenIssuer(config.client_id, config.client_secret, config.token_ttl_s)
        self.limiter = RateLimiter(config.rate_limit_scale)
        self.faults = FaultQueue()
        self.rewrites = RewriteQueue()
        self.stats = Stats()
        self.fault_rng = random.Random(config.seed ^ 0xFA17)
        self.fault_lock = threading.Lock()
        self.base_url = f"http://{config.host}:{config.port}"

    def add_events(
        self, scope_id: str, count: int, created: datetime | None = None, event_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Insert `count` events into one feed now (created defaults to the current second); return them."""
        store = self.store
        scope = store.by_id.get(scope_id)
        if scope is None:
            raise KeyError(f"no organization or project with id {scope_id}")
        if count < 0:
            raise ValueError("count must be 0 or more")
        type_index = scope.catalog.index_of(event_type) if event_type else None
        ts = int(created.timestamp()) if created is not None else int(time.time())
        base = self.base_url
        out = []
        for _ in range(count):
            key, meta = store.insert(scope, ts, type_index)
            out.append(store.render(scope, key, meta, base))
        return out

    def pick_fault(self, path: str) -> Fault | CustomResponse | None:
        queued = self.faults.pop_for(path)
        if queued is not None:
            return queued
        if self.config.fault_rate > 0 and path.startswith(API_PREFIX):
            with self.fault_lock:
                if self.fault_rng.random() < self.config.fault_rate:
                    return self.fault_rng.choice(RANDOM_FAULTS)
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would add ~40 ms to each
    server: SimulatorServer
    timeout = 120

    # ---------------------------------------------------------------- plumbing
    def version_string(self) -> str:
        return "mdbws"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: list[tuple[str, str]] | None = None,
        route: str = "other",
        started: float | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _STATIC_HEADERS:
            self.send_header(name, value)
        if started is not None:
            self.send_header("X-Envoy-Upstream-Service-Time", str(max(1, round((time.monotonic() - started) * 1000))))
        for name, value in headers or ():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.app.stats.request(route, status)

    def _send_error(self, err: ApiError, route: str, started: float | None = None) -> None:
        headers = [("Vary", "Accept-Encoding"), ("X-Error-Code", err.code), *err.headers]
        body = error_body(err.status, err.code, err.detail, err.parameters)
        self._send(err.status, body, ERROR_CONTENT_TYPE, headers, route, started)

    def _base(self) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    # ---------------------------------------------------------------- entry points
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        try:
            if path.startswith("/__sim/"):
                self._admin(path)
            elif path == "/api/oauth/token":
                self._oauth(path, started)
            elif path.startswith(API_PREFIX + "/") or path == API_PREFIX:
                self._api(path, started)
            else:
                self._send_error(ApiError(404, "RESOURCE_NOT_FOUND", f"Cannot find resource {path}."), "other")
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    # ---------------------------------------------------------------- faults
    def _serve_fault(self, fault: Fault | CustomResponse, route: str, started: float) -> bool:
        """Serve a fault; True when the request is fully answered (or dropped)."""
        app = self.server.app
        if isinstance(fault, CustomResponse):
            with app.stats.lock:
                app.stats.faults["CUSTOM"] += 1
            self._send(fault.status, fault.body, fault.content_type, list(fault.headers), route, started)
            return True
        with app.stats.lock:
            app.stats.faults[fault.value] += 1
        if fault is Fault.LATENCY_SPIKE:
            time.sleep(app.config.spike_s)
            return False
        if fault is Fault.HTTP_500:
            err = ApiError(500, "UNEXPECTED_ERROR", "Unexpected error.")
            self._send_error(err, route, started)
        elif fault is Fault.HTTP_503:
            self._send_error(ApiError(503, "SERVICE_UNAVAILABLE", "Service Unavailable."), route, started)
        elif fault is Fault.HTTP_502:
            body = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            self._send(502, body, "text/plain", [], route, started)
        elif fault is Fault.HTTP_503_HTML:
            body = (
                b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
                b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n"
            )
            self._send(503, body, "text/html", [], route, started)
        elif fault is Fault.RATE_LIMITED:
            err = ApiError(
                429,
                "RATE_LIMITED",
                "You have exceeded the rate limit. Please wait and retry.",
                [urlsplit(self.path).path, "1"],
                [("Retry-After", "1")],
            )
            self._send_error(err, route, started)
        elif fault is Fault.MALFORMED_JSON:
            body = b'{"links":[{"href":"' + self._base().encode() + b'","rel":"self"}],"results":[{"id":"6a79'
            self._send(200, body, CONTENT_TYPE, [], route, started)
        elif fault is Fault.TRUNCATED:
            body = b'{"links":[],"results":[' + b" " * 2048 + b"]}"
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            app.stats.request(route, 200)
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        elif fault is Fault.RESET:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            app.stats.request(route, 0)
        return True

    # ---------------------------------------------------------------- the API
    def _api(self, path: str, started: float) -> None:
        app = self.server.app
        sub = path[len(API_PREFIX) :]
        route: Route | None = None
        match: re.Match[str] | None = None
        for candidate in ROUTES:
            match = candidate.pattern.match(sub)
            if match:
                route = candidate
                break
        name = route.operation if route else "unknown"
        if self.command == "POST" or self.command == "PUT" or self.command == "PATCH":
            self._read_body()
        if app.config.latency_ms > 0:
            time.sleep(app.config.latency_ms / 1000.0 * random.uniform(0.5, 1.5))
        fault = app.pick_fault(path)
        if fault is not None and self._serve_fault(fault, name, started):
            return
        try:
            principal = self._authenticate()
            self._check_version()
            if route is None or match is None:
                raise ApiError(404, "RESOURCE_NOT_FOUND", f"Cannot find resource {path}.", [path])
            if self.command not in ("GET", "HEAD"):
                raise ApiError(405, "METHOD_NOT_ALLOWED", f"Method {self.command} is not allowed.", [path])
            self._operate(route, match, principal, started)
        except ApiError as err:
            self._send_error(err, name, started)

    def _authenticate(self) -> str:
        app = self.server.app
        header = self.headers.get("Authorization") or ""
        scheme = header.split(" ", 1)[0].lower()
        outcome: AuthOutcome
        if scheme == "digest":
            outcome = app.digest.verify(header, self.command, self.path)
        elif scheme == "bearer":
            outcome = app.tokens.verify(header)
        else:
            outcome = AuthOutcome(None, "You are not authorized for this resource.", app.digest.challenge())
        if outcome.principal is None:
            headers = [("WWW-Authenticate", outcome.challenge)] if outcome.challenge else []
            raise ApiError(401, "USER_UNAUTHORIZED", outcome.failure, [], headers)
        return outcome.principal

    def _check_version(self) -> None:
        accept = self.headers.get("Accept") or ""
        versions = _ACCEPT_ANY_VERSION.findall(accept)
        for version in versions:
            if version == VERSION:
                return
        for version in versions:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", version) or not _valid_date(version):
                raise ApiError(
                    400, "INVALID_VERSION_DATE", f"The version date {version} is not a valid date.", [version]
                )
        raise ApiError(
            406,
            "INVALID_VERSION_DATE",
            "Invalid accept header or version date. This resource requires "
            f"'Accept: {MEDIA_TYPE}'; supported versions: {VERSION}.",
            [accept or "(none)"],
        )

    def _limit(self, route: Route, key: str) -> list[tuple[str, str]]:
        decision: Decision | None = self.server.app.limiter.take(route.bucket, key)
        if decision is None:
            return []
        headers = [("RateLimit-Limit", str(decision.limit)), ("RateLimit-Remaining", str(decision.remaining))]
        if not decision.allowed:
            raise ApiError(
                429,
                "RATE_LIMITED",
                f"You have exceeded the rate limit for {urlsplit(self.path).path}. "
                f"Retry after {decision.retry_after_s} seconds.",
                [
                    urlsplit(self.path).path,
                    str(decision.retry_after_s),
                    str(decision.limit),
                    str(decision.refill),
                    str(round(decision.interval_s)),
                ],
                [*headers, ("Retry-After", str(decision.retry_after_s))],
            )
        return headers

    def _scope(self, kind: str, scope_id: str) -> Scope:
        store = self.server.app.store
        if kind == "group":
            if not _HEX24.match(scope_id):
                raise ApiError(404, "INVALID_GROUP_ID", f"An invalid group ID {scope_id} was specified.", [scope_id])
            scope = store.by_id.get(scope_id)
            if scope is None or scope.kind != "group" or scope.deleted:
                raise ApiError(404, "GROUP_NOT_FOUND", f"No group with ID {scope_id} exists.", [scope_id])
            if scope.revoked:
                raise ApiError(401, "NOT_IN_GROUP", f"Current user is not in group {scope_id}.", [scope_id])
            return scope
        if not _HEX24.match(scope_id):
            raise ApiError(404, "INVALID_ORG_ID", f"An invalid organization ID {scope_id} was specified.", [scope_id])
        scope = store.by_id.get(scope_id)
        if scope is None or scope.kind != "org" or scope.deleted:
            raise ApiError(404, "ORG_NOT_FOUND", f"No organization with ID {scope_id} exists.", [scope_id])
        if scope.revoked:
            raise ApiError(
                401, "USER_UNAUTHORIZED", "Current user is not authorized to perform this action.", [scope_id]
            )
        return scope

    def _operate(self, route: Route, match: re.Match[str], principal: str, started: float) -> None:
        app = self.server.app
        query = parse_qsl(urlsplit(self.path).query, keep_blank_values=True)
        params: dict[str, list[str]] = defaultdict(list)
        for key, value in query:
            params[key].append(value)
        op = route.operation
        scope: Scope | None = None
        if op in ("getOrgGroups", "listOrgEvents", "getOrgEvent"):
            scope = self._scope("org", match.group(1))
        elif op in ("listGroupEvents", "getGroupEvent"):
            scope = self._scope("group", match.group(1))
        rl_headers = self._limit(route, scope.id if scope is not None else principal)
        pretty = _bool(params, "pretty", False)
        envelope = _bool(params, "envelope", False)
        include_raw = _bool(params, "includeRaw", False)
        base = self._base()
        body: dict[str, Any]
        served = 0
        if op in ("getOrgEvent", "getGroupEvent"):
            assert scope is not None
            event_id = match.group(2)
            found = app.store.find(scope, event_id) if _HEX24.match(event_id) else None
            if found is None:
                raise ApiError(404, "RESOURCE_NOT_FOUND", f"Cannot find resource event {event_id}.", [event_id])
            body = app.store.render(scope, found[0], found[1], base, include_raw)
            served = 1
            if envelope:
                body = {"content": body, "status": 200}
        else:
            include_count = _bool(params, "includeCount", True)
            per_page = _int(params, "itemsPerPage", 100, 1, 500)
            page_num = _int(params, "pageNum", 1, 1, 1 << 31)
            if op in ("listOrgEvents", "listGroupEvents"):
                assert scope is not None
                total, results = self._events(scope, params, page_num, per_page, base, include_raw)
            else:
                total, results = self._listing(op, scope, params, page_num, per_page, base)
            served = len(results) if op in ("listOrgEvents", "listGroupEvents") else 0
            others = [(k, v) for k, v in query if k not in ("pageNum", "itemsPerPage")]
            path = urlsplit(self.path).path
            links = [
                {"href": _href(base, path, [*others, ("pageNum", page_num), ("itemsPerPage", per_page)]), "rel": "self"}
            ]
            if include_count and page_num * per_page < total:
                links.append(
                    {
                        "href": _href(base, path, [*others, ("itemsPerPage", per_page), ("pageNum", page_num + 1)]),
                        "rel": "next",
                    }
                )
            if page_num > 1:
                links.append(
                    {
                        "href": _href(base, path, [*others, ("itemsPerPage", per_page), ("pageNum", page_num - 1)]),
                        "rel": "previous",
                    }
                )
            body = {"links": links, "results": results, "totalCount": total if include_count else 0}
            if envelope:
                body["status"] = 200
        rewrite = app.rewrites.pop_for(urlsplit(self.path).path)
        if rewrite is not None:
            with app.stats.lock:
                app.stats.faults["REWRITE"] += 1
            rewritten = rewrite(body)
            if isinstance(rewritten, bytes):
                data = rewritten
            else:
                body = rewritten
        if rewrite is None or not isinstance(rewritten, bytes):
            data = json.dumps(body, indent=2 if pretty else None, separators=None if pretty else (",", ":")).encode()
        headers = [("X-Java-Method", route.java_method), *rl_headers]
        if served:
            with app.stats.lock:
                app.stats.events_served += served
        self._send(200, data, CONTENT_TYPE, headers, route.operation, started)

    def _events(
        self,
        scope: Scope,
        params: dict[str, list[str]],
        page_num: int,
        per_page: int,
        base: str,
        include_raw: bool,
    ) -> tuple[int, list[dict[str, Any]]]:
        store = self.server.app.store
        min_s = _date(params, "minDate", ceil=True)
        max_s = _date(params, "maxDate", ceil=False)
        types = set(params.get("eventType", []))
        excluded = set(params.get("excludedEventType", [])) if scope.kind == "group" else set()
        clusters: set[str] = set()
        if scope.kind == "group":
            for value in params.get("clusterNames", []):
                clusters.update(v for v in value.split(",") if v)
        if not types and not excluded and not clusters:
            total, pairs = store.page(scope, min_s, max_s, page_num, per_page)
        else:
            keys, meta = store.window(scope, min_s, max_s)
            kinds = scope.catalog.kinds
            selected: list[tuple[int, int]] = []
            for i in range(len(keys) - 1, -1, -1):
                k, m = keys[i], meta[i]
                name = kinds[m & 0xFFFF].name
                if types and name not in types:
                    continue
                if name in excluded:
                    continue
                if clusters and store.cluster_of(scope, k, m) not in clusters:
                    continue
                selected.append((k, m))
            total = len(selected)
            start = (page_num - 1) * per_page
            pairs = selected[start : start + per_page]
        return total, [store.render(scope, k, m, base, include_raw) for k, m in pairs]

    def _listing(
        self, op: str, scope: Scope | None, params: dict[str, list[str]], page_num: int, per_page: int, base: str
    ) -> tuple[int, list[dict[str, Any]]]:
        store = self.server.app.store
        name_filter = (params.get("name") or [""])[-1].lower()
        items: list[dict[str, Any]]
        if op == "listOrgs":
            orgs = [o for o in store.visible_orgs() if o.name.lower().startswith(name_filter)]
            items = [_org_view(o, base) for o in orgs]
        else:
            projects = store.visible_projects()
            if scope is not None:
                projects = [p for p in projects if p.org_id == scope.id and p.name.lower().startswith(name_filter)]
            items = [_group_view(p, base) for p in projects]
        start = (page_num - 1) * per_page
        return len(items), items[start : start + per_page]

    # ---------------------------------------------------------------- OAuth
    def _oauth(self, path: str, started: float) -> None:
        app = self.server.app
        route = "oauthToken"
        raw = self._read_body()
        fault = app.faults.pop_for(path)
        if fault is not None and self._serve_fault(fault, route, started):
            return
        if self.command != "POST":
            self._send_error(ApiError(405, "METHOD_NOT_ALLOWED", "Use POST."), route, started)
            return
        client = app.tokens.check_basic(self.headers.get("Authorization") or "")
        if client is None:
            body = json.dumps({"error": "invalid_client", "error_description": "Invalid client credentials."})
            self._send(401, body.encode(), "application/json", [], route, started)
            return
        decision = app.limiter.take("oauth_token", client)
        if decision is not None and not decision.allowed:
            err = ApiError(
                429,
                "RATE_LIMITED",
                "Too many token requests for this client; reuse the access token until it nears expiry.",
                [path, str(decision.retry_after_s)],
                [("Retry-After", str(decision.retry_after_s))],
            )
            self._send_error(err, route, started)
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        form = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
        if content_type != "application/x-www-form-urlencoded":
            body = json.dumps({"error": "invalid_request", "error_description": "Use a form-encoded body."})
            self._send(400, body.encode(), "application/json", [], route, started)
            return
        if form.get("grant_type") != "client_credentials":
            body = json.dumps({"error": "unsupported_grant_type", "error_description": "Use client_credentials."})
            self._send(400, body.encode(), "application/json", [], route, started)
            return
        token, expires_in = app.tokens.issue()
        with app.stats.lock:
            app.stats.tokens_issued += 1
        body = json.dumps({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"})
        headers = [("Cache-Control", "no-store")]
        self._send(200, body.encode(), "application/json", headers, route, started)

    # ---------------------------------------------------------------- admin (outside /api/)
    def _admin(self, path: str) -> None:
        app = self.server.app
        sim_route = "admin"
        raw = self._read_body() if self.command == "POST" else b""
        try:
            if path == "/__sim/events" and self.command == "GET":
                body: Any = {"events": app.store.ground_truth(self._base())}
            elif path == "/__sim/stats" and self.command == "GET":
                body = app.stats.snapshot()
            elif path == "/__sim/faults" and self.command == "POST":
                req = json.loads(raw or b"{}")
                fault = Fault[str(req["fault"])]
                count = int(req.get("count", 1))
                app.faults.push(fault, count, req.get("path_contains"))
                body = {"queued": count, "fault": fault.value}
            elif path == "/__sim/events" and self.command == "POST":
                req = json.loads(raw or b"{}")
                created = parse_atlas_time(req["created"]) if req.get("created") else None
                sim_add = app.add_events
                events = sim_add(str(req["scope_id"]), int(req.get("count", 1)), created, req.get("event_type"))
                body = {"events": events}
            else:
                raise ApiError(404, "RESOURCE_NOT_FOUND", f"Cannot find resource {path}.", [path])
        except (KeyError, ValueError, TypeError) as exc:
            self._send_error(ApiError(400, "INVALID_ATTRIBUTE", f"Bad admin request: {exc}"), sim_route)
            return
        except ApiError as err:
            self._send_error(err, sim_route)
            return
        self._send(200, json.dumps(body).encode(), "application/json", [], sim_route)


# -------------------------------------------------------------------- helpers
def _valid_date(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _bool(params: dict[str, list[str]], name: str, default: bool) -> bool:
    values = params.get(name)
    if not values:
        return default
    value = values[-1].strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    raise ApiError(400, "INVALID_ATTRIBUTE", f"Invalid attribute {name} specified.", [name])


def _int(params: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    values = params.get(name)
    if not values:
        return default
    try:
        value = int(values[-1].strip())
    except ValueError:
        raise ApiError(400, "INVALID_ATTRIBUTE", f"Invalid attribute {name} specified.", [name]) from None
    if not lo <= value <= hi:
        raise ApiError(400, "INVALID_ATTRIBUTE", f"Invalid attribute {name} specified.", [name])
    return value


def _date(params: dict[str, list[str]], name: str, *, ceil: bool) -> int | None:
    values = params.get(name)
    if not values:
        return None
    try:
        moment = parse_atlas_time(values[-1])
    except ValueError:
        raise ApiError(400, "INVALID_ATTRIBUTE", f"Invalid attribute {name} specified.", [name]) from None
    ts = moment.timestamp()
    return math.ceil(ts) if ceil else math.floor(ts)


def _href(base: str, path: str, pairs: list[tuple[str, Any]]) -> str:
    return f"{base}{path}?{urlencode(pairs)}"


def _org_view(org: Scope, base: str) -> dict[str, Any]:
    return {
        "id": org.id,
        "isDeleted": False,
        "links": [{"href": f"{base}{API_PREFIX}/orgs/{org.id}", "rel": "self"}],
        "name": org.name,
        "skipDefaultAlertsSettings": False,
    }


def _group_view(project: Scope, base: str) -> dict[str, Any]:
    return {
        "clusterCount": len(project.clusters),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(project.created)),
        "id": project.id,
        "links": [{"href": f"{base}{API_PREFIX}/groups/{project.id}", "rel": "self"}],
        "name": project.name,
        "orgId": project.org_id,
        "tags": [],
    }
