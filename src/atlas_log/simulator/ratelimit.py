"""Token buckets with Atlas's documented capacities and refill rates."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

# bucket kind -> (capacity, tokens refilled per interval, interval seconds)
LIMITS: dict[str, tuple[int, int, float]] = {
    "group_events": (300, 100, 60.0),  # per project
    "org_events": (500, 250, 60.0),  # per organization
    "orgs": (300, 100, 60.0),  # GET /orgs, per user
    "org_groups": (500, 250, 60.0),  # GET /orgs/{orgId}/groups, per organization
    "groups": (1200, 500, 60.0),  # GET /groups, per user
    "oauth_token": (10, 10, 60.0),  # POST /api/oauth/token, per client
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int  # whole seconds until one token is available (0 when allowed)
    refill: int
    interval_s: float


class _Bucket:
    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.last = now


class RateLimiter:
    """One bucket per (kind, key); `scale` multiplies capacities and refill rates; scale 0 disables limits."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, kind: str, key: str) -> Decision | None:
        """Take one token; None when rate limiting is disabled."""
        if self.scale <= 0:
            return None
        capacity, refill, interval = LIMITS[kind]
        cap = max(1, round(capacity * self.scale))
        per_interval = max(1, round(refill * self.scale))
        rate = per_interval / interval
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get((kind, key))
            if bucket is None:
                bucket = self._buckets[(kind, key)] = _Bucket(cap, rate, now)
            bucket.tokens = min(bucket.capacity, bucket.tokens + (now - bucket.last) * bucket.rate)
            bucket.last = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return Decision(True, cap, int(bucket.tokens), 0, per_interval, interval)
            wait = (1.0 - bucket.tokens) / bucket.rate
            return Decision(False, cap, 0, max(1, math.ceil(wait)), per_interval, interval)
