"""What a simulator run looks like (`SimulatorConfig`) and the faults it can serve (`Fault`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Fault(enum.Enum):
    """A misbehaviour the simulator can serve instead of (or before) a normal answer."""

    HTTP_500 = "HTTP_500"  # Atlas error body UNEXPECTED_ERROR
    HTTP_502 = "HTTP_502"  # the proxy's plain-text "upstream connect error"
    HTTP_503 = "HTTP_503"  # Atlas error body SERVICE_UNAVAILABLE
    HTTP_503_HTML = "HTTP_503_HTML"  # an HTML page, as a load balancer sends it
    RATE_LIMITED = "RATE_LIMITED"  # 429 RATE_LIMITED with Retry-After
    RESET = "RESET"  # the connection is reset without an answer
    TRUNCATED = "TRUNCATED"  # Content-Length larger than the body sent, then the connection closes
    MALFORMED_JSON = "MALFORMED_JSON"  # 200 with a body that is not JSON
    LATENCY_SPIKE = "LATENCY_SPIKE"  # sleep `spike_s` seconds, then answer normally


# The kinds drawn at random when `fault_rate` > 0 (a latency spike is only served when injected).
RANDOM_FAULTS: tuple[Fault, ...] = (
    Fault.HTTP_500,
    Fault.HTTP_502,
    Fault.HTTP_503,
    Fault.HTTP_503_HTML,
    Fault.RATE_LIMITED,
    Fault.RESET,
    Fault.TRUNCATED,
    Fault.MALFORMED_JSON,
)


@dataclass
class SimulatorConfig:
    """Everything that shapes one simulator; same seed (and same `history_end`) gives the same history."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
    orgs: int = 1
    projects_per_org: int = 3
    events: int = 1000
    history_s: float = 30 * 86400.0
    rate: float = 0.0
    latency_ms: float = 0.0
    fault_rate: float = 0.0
    rate_limit_scale: float = 1.0
    public_key: str = "simulator-public"
    private_key: str = "simulator-private"
    client_id: str = "mdb_sa_id_simulator"
    client_secret: str = "mdb_sa_sk_simulator"  # noqa: S105 (the simulator's documented demo secret)
    burst_second_events: int = 600
    late_fraction: float = 0.0
    late_max_s: float = 120.0
    spike_s: float = 30.0
    nonce_ttl_s: float = 300.0
    token_ttl_s: float = 3600.0
    # The end of the generated history; None = the wall clock when the Simulator is built.
    # Pin it to get byte-identical ids and timestamps across runs.
    history_end: datetime | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0..65535")
        if self.orgs < 1:
            raise ValueError("orgs must be at least 1")
        if self.projects_per_org < 0:
            raise ValueError("projects_per_org must be 0 or more")
        if self.events < 0:
            raise ValueError("events must be 0 or more")
        if self.history_s <= 0:
            raise ValueError("history_s must be greater than zero")
        for name in ("rate", "latency_ms", "rate_limit_scale", "late_max_s", "spike_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more")
        for name in ("fault_rate", "late_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.burst_second_events < 0:
            raise ValueError("burst_second_events must be 0 or more")
        if self.nonce_ttl_s <= 0 or self.token_ttl_s <= 0:
            raise ValueError("nonce_ttl_s and token_ttl_s must be greater than zero")
        if not self.public_key or not self.private_key or not self.client_id or not self.client_secret:
            raise ValueError("credentials must not be empty")
