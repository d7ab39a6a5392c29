"""The Atlas Admin API v2 client: authentication, discovery, event pages, and the one retry layer.

It returns pages and knows nothing about watermarks. Every answer is checked before it leaves this module:
a malformed page raises ``AtlasApiError`` naming the scope and what was wrong, never a ``KeyError`` later on.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from atlas_log import __version__
from atlas_log._time import atlas_epoch_s, format_atlas_time
from atlas_log.config import Config, Credentials
from atlas_log.errors import AtlasApiError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.atlas.2023-01-01+json"
API_PREFIX = "/api/atlas/v2"
ITEMS_PER_PAGE = 500
MAX_RETRY_AFTER_S = 300.0  # a Retry-After beyond this is treated as absurd and capped
_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")

# Atlas's documented token buckets (capacity, refill per second). "Not part of the API contract and might change."
BUCKETS: dict[str, tuple[int, float]] = {
    "group_events": (300, 100 / 60),
    "org_events": (500, 250 / 60),
    "orgs": (300, 100 / 60),
    "org_groups": (500, 250 / 60),
    "groups": (1200, 500 / 60),
}


@dataclass(frozen=True)
class Scope:
    """One feed: an organization's events or a project's events."""

    kind: str  # "org" or "project"
    id: str
    name: str
    org_id: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    def describe(self) -> str:
        return f"{'organization' if self.kind == 'org' else 'project'} {self.id} ({self.name})"


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    total_count: int | None  # None when Atlas did not count (includeCount=false)
    page_num: int
    items_per_page: int
    has_next_link: bool

    @property
    def full(self) -> bool:
        return len(self.events) >= self.items_per_page


# --------------------------------------------------------------------------------------------- authentication
class ServiceAccountAuth(httpx.Auth):
    """OAuth client credentials: one token cached until shortly before it expires, renewed once on a 401."""

    requires_response_body = True
    RENEW_BEFORE_S = 120.0

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        token_url: str,
        *,
        verify: Any = True,
        timeout_s: float = 30.0,
    ) -> None:
        self._basic = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self._token_url = token_url
        self._verify = verify
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return "ServiceAccountAuth(<redacted>)"

    def _fetch_token(self) -> str:
        for attempt in range(6):
            try:
                resp = httpx.post(
                    self._token_url,
                    headers={
                        "Authorization": self._basic,
                        "Accept": "application/json",
                        "Content-Type": "application/x-www-form-urlencoded",
                    },
                    content=b"grant_type=client_credentials",
                    verify=self._verify,
                    timeout=self._timeout_s,
                )
            except httpx.TransportError as exc:
                _raise_if_tls_failure(exc, self._token_url)
                wait = _backoff(attempt)
                log.warning("service-account token request failed (%s); retrying in %.1fs", type(exc).__name__, wait)
                time.sleep(wait)
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                wait = max(_retry_after(resp.headers.get("Retry-After")) or 0.0, _backoff(attempt))
                log.warning("service-account token request answered %d; retrying in %.1fs", resp.status_code, wait)
                time.sleep(wait)
                continue
            if resp.status_code != 200:
                raise AtlasApiError(
                    f"Atlas refused the service-account credentials ({_describe_error(resp)}): check "
                    "MONGODB_ATLAS_CLIENT_ID and MONGODB_ATLAS_CLIENT_SECRET",
                    status=resp.status_code,
                )
            try:
                body = resp.json()
                token = body["access_token"]
                expires_in = float(body.get("expires_in", 3600))
            except (ValueError, KeyError, TypeError):
                raise AtlasApiError("Atlas's token endpoint answered with an unreadable body") from None
            self._token = str(token)
            self._expires_at = time.monotonic() + expires_in - self.RENEW_BEFORE_S
            self.tokens_fetched += 1
            return self._token
        raise AtlasApiError("could not obtain a service-account token after 6 attempts", retriable=True)

    def _current_token(self, *, renew: bool = False) -> str:
        with self._lock:
            if renew or self._token is None or time.monotonic() >= self._expires_at:
                return self._fetch_token()
            return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._current_token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self._current_token(renew=True)}"
            yield request


def mk_auth(credentials: Credentials, atlas_url: str, *, verify: Any = True, timeout_s: float = 30.0) -> httpx.Auth:
    """Build whichever authentication the environment configured: a service account or an API key (Digest)."""
    if credentials.client_id and credentials.client_secret:
        return ServiceAccountAuth(
            credentials.client_id,
            credentials.client_secret,
            f"{atlas_url}/api/oauth/token",
            verify=verify,
            timeout_s=timeout_s,
        )
    if credentials.public_key and credentials.private_key:
        return httpx.DigestAuth(credentials.public_key, credentials.private_key)
    raise AtlasApiError("no Atlas credentials configured")


# ----------------------------------------------------------------------------------------------- rate pacing
class Pacer:
    """Client-side token buckets mirroring Atlas's, so a backfill runs at the limit without provoking 429s.

    One bucket per (kind, key), sized from ``BUCKETS`` times ``scale``. Atlas's answers correct it:
    ``RateLimit-Remaining`` (or 0 on a 429) lowers a bucket to what Atlas says is left, and ``remaining + 1`` is a
    lower bound of the bucket's real capacity, so the largest such bound seen for a kind is the scale Atlas really
    applies to it (limits "might change"; a scaled simulator is the same case). The refill rate follows the capacity
    (Atlas's documented ratio). The learned scale only ever lowers what ``scale`` allows, never raises it.
    """

    def __init__(self, scale: float = 1.0) -> None:
        self._scale = scale
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (tokens, last monotonic)
        self._learned: dict[str, float] = {}  # bucket kind -> scale implied by the largest Remaining + 1 seen

    def limits(self, bucket: str) -> tuple[float, float]:
        """(capacity, refill per second) this pacer uses for a bucket kind now."""
        capacity, refill = BUCKETS[bucket]
        scale = min(self._scale, self._learned.get(bucket, self._scale))
        return max(1.0, capacity * scale), refill * scale

    def acquire(self, bucket: str, key: str) -> None:
        if self._scale <= 0:
            return
        while True:
            with self._lock:
                capacity_f, refill_f = self.limits(bucket)
                now = time.monotonic()
                tokens, last = self._state.get((bucket, key), (capacity_f, now))
                tokens = min(capacity_f, tokens + (now - last) * refill_f)
                if tokens >= 1.0:
                    self._state[(bucket, key)] = (tokens - 1.0, now)
                    return
                self._state[(bucket, key)] = (tokens, now)
                wait = (1.0 - tokens) / refill_f
            time.sleep(min(wait, 5.0))

    def drain(self, bucket: str, key: str, remaining: float) -> None:
        """Atlas said how many tokens are left (RateLimit-Remaining, or 0 on a 429): believe it."""
        with self._lock:
            now = time.monotonic()
            if remaining > 0 and self._scale > 0:
                seen = (remaining + 1.0) / BUCKETS[bucket][0]
                if seen > self._learned.get(bucket, 0.0):
                    self._learned[bucket] = seen
            tokens, _ = self._state.get((bucket, key), (remaining, now))
            self._state[(bucket, key)] = (min(tokens, remaining), now)


# ----------------------------------------------------------------------------------------------- the client
def _backoff(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Exponential backoff with full jitter."""
    return float(random.uniform(0, min(cap_s, base_s * (2**attempt))))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds or seconds < 0:  # NaN or negative
        return 0.0
    return seconds


def _raise_if_tls_failure(exc: BaseException, url: str) -> None:
    """A certificate that does not verify is not transient: stop at once and say how to fix it."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cause):
            detail = getattr(cause, "verify_message", None) or str(cause)
            raise AtlasApiError(
                f"TLS certificate verification failed for {url} ({detail}): if it uses a private CA, pass that "
                "CA's certificate with --ca-bundle (verification is always on)"
            ) from None
        cause = cause.__cause__ or cause.__context__
    return


def _describe_error(resp: httpx.Response) -> str:
    """`403 IP_ADDRESS_NOT_ON_ACCESS_LIST: detail` from an Atlas error body, or a short note on what came instead."""
    code = resp.headers.get("X-Error-Code")
    detail = ""
    try:
        body = resp.json()
        if isinstance(body, dict):
            code = body.get("errorCode") or code
            detail = str(body.get("detail") or "")[:300]
    except ValueError:
        ctype = resp.headers.get("Content-Type", "")
        detail = "an HTML page (a proxy or gateway error)" if "html" in ctype.lower() else "a body that is not JSON"
    parts = [str(resp.status_code)]
    if code:
        parts.append(str(code))
    text = " ".join(parts)
    return f"{text}: {detail}" if detail else text


_FIXES = {
    401: "check the API key or service account credentials and that they are not expired or deleted",
    403: "grant the key access (Organization Member for org events, Project Read Only for project events) "
    "and add this host's address to the key's IP access list",
    404: "the organization or project no longer exists or the key cannot see it",
}


class AtlasClient:
    """Thread-safe: one connection pool shared by every worker."""

    def __init__(
        self,
        config: Config,
        *,
        on_request: Callable[[str, int, float], None] | None = None,
        max_attempts: int = 8,
        pace_scale: float = 1.0,
    ) -> None:
        verify: Any = config.ca_bundle or True
        self._base = config.atlas_url
        self._auth = mk_auth(config.credentials, config.atlas_url, verify=verify, timeout_s=config.timeout_s)
        self._http = httpx.Client(
            base_url=config.atlas_url,
            auth=self._auth,
            headers={"Accept": MEDIA_TYPE, "User-Agent": f"atlas-log-exporter/{__version__}"},
            timeout=config.timeout_s,
            verify=verify,
            limits=httpx.Limits(
                max_connections=max(10, config.concurrency * 2),
                max_keepalive_connections=max(10, config.concurrency * 2),
            ),
        )
        self._pacer = Pacer(pace_scale)
        self._max_attempts = max_attempts
        self._on_request = on_request
        self.requests = 0
        self.retries = 0
        self.rate_limited = 0
        self.server_clock_offset_s = 0.0  # Atlas's clock minus ours, from the Date header (0 when unknown)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AtlasClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request, retried -------------------------------------------------------------------------------
    def _get(self, path: str, params: Mapping[str, Any], *, bucket: str, bucket_key: str, what: str) -> Any:
        last_problem = ""
        for attempt in range(self._max_attempts):
            self._pacer.acquire(bucket, bucket_key)
            started = time.monotonic()
            try:
                resp = self._http.get(API_PREFIX + path, params=params)
                body_bytes = resp.content
            except httpx.TimeoutException:
                status, last_problem = 0, "timed out"
            except httpx.TransportError as exc:
                _raise_if_tls_failure(exc, self._base)
                status, last_problem = 0, f"connection failed ({type(exc).__name__})"
            else:
                status = resp.status_code
            elapsed = time.monotonic() - started
            self.requests += 1
            if self._on_request:
                self._on_request(bucket, status, elapsed)
            if status:
                self._note_server_clock(resp.headers.get("Date"))
                remaining = resp.headers.get("RateLimit-Remaining")
                if remaining is not None and remaining.strip().isdigit():
                    self._pacer.drain(bucket, bucket_key, float(remaining))
                if status == 200:
                    try:
                        return json.loads(body_bytes)
                    except ValueError:
                        last_problem = "a 200 answer whose body is not valid JSON (truncated or malformed)"
                elif status == 429:
                    self.rate_limited += 1
                    self._pacer.drain(bucket, bucket_key, 0.0)
                    wait_hint = _retry_after(resp.headers.get("Retry-After"))
                    if wait_hint is not None and wait_hint > MAX_RETRY_AFTER_S:
                        log.warning(
                            "Atlas asked to wait %.0fs for %s; waiting %.0fs instead",
                            wait_hint,
                            what,
                            MAX_RETRY_AFTER_S,
                        )
                        wait_hint = MAX_RETRY_AFTER_S
                    self._sleep_before_retry(attempt, f"429 rate limited on {what}", wait_hint)
                    last_problem = "429 rate limited"
                    continue
                elif status >= 500 or status == 408:
                    last_problem = _describe_error(resp)
                elif status in _FIXES:
                    raise AtlasApiError(
                        f"Atlas answered {_describe_error(resp)} for {what}: {_FIXES[status]}",
                        status=status,
                        error_code=resp.headers.get("X-Error-Code"),
                    )
                else:
                    raise AtlasApiError(
                        f"Atlas answered {_describe_error(resp)} for {what}",
                        status=status,
                        error_code=resp.headers.get("X-Error-Code"),
                    )
            self._sleep_before_retry(attempt, f"{last_problem} on {what}", None)
        raise AtlasApiError(f"gave up on {what} after {self._max_attempts} attempts: {last_problem}", retriable=True)

    def _note_server_clock(self, date_header: str | None) -> None:
        """Remember how far Atlas's clock is from ours, so a cycle never reads up to a second Atlas has not reached."""
        if not date_header:
            return
        try:
            server = email.utils.parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError):
            return
        # Date has one-second precision and is stamped before the answer travels: only a lag beyond that counts.
        offset = server + 1.0 - time.time()
        self.server_clock_offset_s = min(0.0, offset)

    def _sleep_before_retry(self, attempt: int, problem: str, at_least_s: float | None) -> None:
        if attempt + 1 >= self._max_attempts:
            return
        self.retries += 1
        wait = max(at_least_s or 0.0, _backoff(attempt))
        log.info("retrying after %s in %.1fs (attempt %d/%d)", problem, wait, attempt + 2, self._max_attempts)
        time.sleep(wait)

    # -- discovery ---------------------------------------------------------------------------------------------
    def _list_all(self, path: str, *, bucket: str, bucket_key: str, what: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        page_num = 1
        while True:
            body = self._get(
                path,
                {"itemsPerPage": ITEMS_PER_PAGE, "pageNum": page_num, "includeCount": "true"},
                bucket=bucket,
                bucket_key=bucket_key,
                what=f"{what} page {page_num}",
            )
            results = _results(body, f"{what} page {page_num}")
            fresh = 0
            for item in results:
                if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                    raise AtlasApiError(f"Atlas returned a malformed entry in {what} page {page_num}: no id")
                if item["id"] not in seen:
                    seen.add(item["id"])
                    items.append(item)
                    fresh += 1
            if len(results) < ITEMS_PER_PAGE or fresh == 0:
                return items
            page_num += 1

    def list_orgs(self) -> list[dict[str, Any]]:
        return self._list_all("/orgs", bucket="orgs", bucket_key="user", what="the organization list")

    def list_projects(self) -> list[dict[str, Any]]:
        return self._list_all("/groups", bucket="groups", bucket_key="user", what="the project list")

    def discover(self) -> list[Scope]:
        """Every organization and project the key can see, as scopes (org feeds first)."""
        orgs = self.list_orgs()
        names = {o["id"]: str(o.get("name", "")) for o in orgs}
        scopes = [Scope("org", o["id"], names[o["id"]], o["id"]) for o in orgs]
        for project in self.list_projects():
            org_id = str(project.get("orgId", ""))
            scopes.append(Scope("project", project["id"], str(project.get("name", "")), org_id))
        return scopes

    # -- events --------------------------------------------------------------------------------------------------
    def get_events(
        self,
        scope: Scope,
        *,
        min_date: datetime,
        max_date: datetime | None,
        page_num: int = 1,
        items_per_page: int = ITEMS_PER_PAGE,
        include_count: bool = True,
    ) -> Page:
        """One page of a scope's events in ``[min_date, max_date]`` (inclusive), newest first as Atlas serves."""
        params: dict[str, Any] = {
            "minDate": format_atlas_time(min_date),
            "itemsPerPage": items_per_page,
            "pageNum": page_num,
            "includeCount": "true" if include_count else "false",
        }
        if max_date is not None:
            params["maxDate"] = format_atlas_time(max_date)
        if scope.kind == "org":
            path, bucket = f"/orgs/{scope.id}/events", "org_events"
        else:
            path, bucket = f"/groups/{scope.id}/events", "group_events"
        what = f"{scope.describe()} events page {page_num}"
        body = self._get(path, params, bucket=bucket, bucket_key=scope.id, what=what)
        results = _results(body, what)
        if len(results) > items_per_page:
            raise AtlasApiError(
                f"Atlas returned {len(results)} events for {what}, more than the {items_per_page} "
                "asked for; refusing a page that breaks the paging contract"
            )
        for event in results:
            _check_event(event, what)
        total = body.get("totalCount")
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            total = None
        if not include_count and total == 0:
            total = None  # the observed quirk: includeCount=false still says "totalCount": 0
        links = body.get("links")
        has_next = isinstance(links, list) and any(isinstance(x, dict) and x.get("rel") == "next" for x in links)
        return Page(
            events=results,
            total_count=total,
            page_num=page_num,
            items_per_page=items_per_page,
            has_next_link=has_next,
        )

    def get_org_events(self, scope: Scope, **kwargs: Any) -> Page:
        return self.get_events(scope, **kwargs)

    def get_group_events(self, scope: Scope, **kwargs: Any) -> Page:
        return self.get_events(scope, **kwargs)


def _results(body: Any, what: str) -> list[Any]:
    if not isinstance(body, dict):
        raise AtlasApiError(f"Atlas returned JSON of the wrong shape for {what}: not an object")
    results = body.get("results")
    if not isinstance(results, list):
        raise AtlasApiError(f"Atlas returned JSON of the wrong shape for {what}: 'results' is not a list")
    return results


def _check_event(event: Any, what: str) -> None:
    if not isinstance(event, dict):
        raise AtlasApiError(f"Atlas returned an event that is not an object in {what}")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not _OBJECT_ID.match(event_id):
        raise AtlasApiError(f"Atlas returned an event without a valid 'id' in {what}: {str(event_id)[:40]!r}")
    created = event.get("created")
    try:
        atlas_epoch_s(created)
    except (ValueError, TypeError):
        raise AtlasApiError(
            f"Atlas returned event {event_id} in {what} whose 'created' is not a date: {str(created)[:40]!r}"
        ) from None
    if not isinstance(event.get("eventTypeName"), str):
        raise AtlasApiError(f"Atlas returned event {event_id} in {what} without an 'eventTypeName'")


def ensure_no_missing_history(scope: Scope, *, read: int, total_count: int | None) -> bool:
    """Warn when Atlas reports more events in the window than were read; True when the counts agree.

    ``totalCount`` is "an estimate and may not be exact", and with ``includeCount=false`` it is absent (or a fake 0):
    then there is nothing to compare and the check passes.
    """
    if total_count is None or read >= total_count:
        return True
    log.warning(
        "%s: Atlas reports %d events in the window but %d were read; some history may be missing",
        scope.describe(),
        total_count,
        read,
    )
    return False
