"""`Simulator`: a faithful Atlas Admin API v2 (events, orgs, projects) on a local port, driven in-process."""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime
from types import TracebackType
from typing import Any

from atlas_log.simulator.config import Fault, SimulatorConfig
from atlas_log.simulator.server import App, CustomResponse, Rewrite, SimulatorServer
from atlas_log.simulator.store import EventStore


class Simulator:
    """Start with `start()` (or `with Simulator(cfg) as sim:`); `base_url` is then the Atlas base URL."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.config.validate()
        self.store = EventStore(self.config)
        self.app = App(self.config, self.store)
        self._server: SimulatorServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._live_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> Simulator:
        if self._server is not None:
            return self
        server = SimulatorServer((self.config.host, self.config.port), self.app)
        host, port = server.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else str(host)  # noqa: S104 (a comparison, not a bind)
        if ":" in shown:
            shown = f"[{shown}]"
        self.app.base_url = f"http://{shown}:{port}"
        self._server = server
        self._stopping.clear()
        self._serve_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="atlas-simulator", daemon=True
        )
        self._serve_thread.start()
        if self.config.rate > 0:
            self._live_thread = threading.Thread(target=self._live, name="atlas-simulator-live", daemon=True)
            self._live_thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for thread in (self._serve_thread, self._live_thread):
            if thread is not None:
                thread.join(timeout=5)
        self._serve_thread = self._live_thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>` once started."""
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self.app.base_url

    # ---------------------------------------------------------------- what exists
    def orgs(self) -> list[dict[str, Any]]:
        return [{"id": o.id, "name": o.name} for o in self.store.visible_orgs()]

    def projects(self) -> list[dict[str, Any]]:
        return [{"id": p.id, "name": p.name, "orgId": p.org_id} for p in self.store.visible_projects()]

    def ground_truth(self) -> list[dict[str, Any]]:
        """Every event visible now, exactly as the API serves it (self links use `base_url`)."""
        return self.store.ground_truth(self.app.base_url)

    # ---------------------------------------------------------------- driving it
    def add_events(
        self, scope_id: str, count: int, *, created: datetime | None = None, event_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Insert events into an org or project feed; a past `created` makes them late-visible."""
        return self.app.add_events(scope_id, count, created, event_type)

    def inject(self, fault: Fault, *, count: int = 1, path_contains: str | None = None) -> None:
        """Queue a fault for the next `count` matching requests (FIFO).

        Without `path_contains` it matches requests under /api/atlas/v2; with it, any request whose path contains
        the text (so `/api/oauth/token` can be targeted too).
        """
        self.app.faults.push(fault, count, path_contains)

    def inject_response(
        self,
        status: int,
        body: bytes | str,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        count: int = 1,
        path_contains: str | None = None,
    ) -> None:
        """Serve this exact answer to the next `count` matching requests (before authentication, like a proxy)."""
        raw = body.encode() if isinstance(body, str) else body
        response = CustomResponse(status, raw, content_type, tuple((headers or {}).items()))
        self.app.faults.push(response, count, path_contains)

    def inject_rewrite(self, fn: Rewrite, *, count: int = 1, path_contains: str | None = None) -> None:
        """Rewrite the next `count` successful answers whose path contains the text (all API paths if None).

        `fn` gets the JSON body about to be sent (`links`, `results`, `totalCount`) and returns a new body, or bytes
        to send as they are: lying counts, oversize pages, looping links, bad events, invalid UTF-8.
        """
        self.app.rewrites.push(fn, count, path_contains)

    def clear_faults(self) -> None:
        """Drop every queued fault, custom answer and rewrite, and stop random faults."""
        self.app.faults.clear()
        with self.app.rewrites.lock:
            self.app.rewrites.items.clear()
        self.config.fault_rate = 0.0

    def all_events(self) -> list[dict[str, Any]]:
        """Every event ever held, also those of deleted projects and scopes whose access was revoked."""
        store = self.store
        return [e for s in store.orgs + store.projects for e in store.render_all(s, self.app.base_url)]

    def issued_tokens(self) -> list[str]:
        """Every service-account access token issued so far."""
        return self.app.tokens.issued()

    def delete_project(self, group_id: str) -> None:
        """The project is gone: 404 GROUP_NOT_FOUND, absent from listings; its org feed gets GROUP_DELETED."""
        scope = self._project(group_id)
        with self.store.lock:
            if scope.deleted:
                return
            scope.deleted = True
        org = self.store.by_id[scope.org_id]
        type_index = org.catalog.index_of("GROUP_DELETED")
        key, meta = self.store.insert(org, int(time.time()), type_index)
        # the GROUP_DELETED event names the project it is about
        with self.store.lock:
            self._pin_group(org, key, meta, group_id)

    def revoke_access(self, scope_id: str) -> None:
        """The credentials lose access: absent from listings; direct calls answer 401 (NOT_IN_GROUP for projects)."""
        scope = self.store.by_id.get(scope_id)
        if scope is None:
            raise KeyError(f"no organization or project with id {scope_id}")
        with self.store.lock:
            scope.revoked = True

    def set_rate(self, events_per_s: float) -> None:
        """Change the live arrival rate (0 pauses arrivals; a positive rate starts the thread if needed)."""
        if events_per_s < 0:
            raise ValueError("events_per_s must be 0 or more")
        self.config.rate = events_per_s
        if events_per_s > 0 and self._server is not None and self._live_thread is None:
            self._live_thread = threading.Thread(target=self._live, name="atlas-simulator-live", daemon=True)
            self._live_thread.start()

    def credentials_env(self, *, service_account: bool = False) -> dict[str, str]:
        """The environment an exporter needs to log in here: the service account, or the API key (Digest)."""
        cfg = self.config
        if service_account:
            return {"MONGODB_ATLAS_CLIENT_ID": cfg.client_id, "MONGODB_ATLAS_CLIENT_SECRET": cfg.client_secret}
        return {"MONGODB_ATLAS_PUBLIC_API_KEY": cfg.public_key, "MONGODB_ATLAS_PRIVATE_API_KEY": cfg.private_key}

    def stats(self) -> dict[str, Any]:
        return self.app.stats.snapshot()

    # ---------------------------------------------------------------- internals
    def _project(self, group_id: str) -> Any:
        scope = self.store.by_id.get(group_id)
        if scope is None or scope.kind != "group":
            raise KeyError(f"no project with id {group_id}")
        return scope

    def _pin_group(self, org: Any, key: int, meta: int, group_id: str) -> None:
        self.store.pinned_groups[(org.id, key, meta)] = group_id

    def _live(self) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed ^ 0x11FE)
        carry = 0.0
        last = time.monotonic()
        while not self._stopping.wait(0.05):
            now = time.monotonic()
            carry += (now - last) * cfg.rate
            last = now
            due = int(carry)
            if due <= 0:
                continue
            carry -= due
            scopes = [s for s in self.store.orgs + self.store.projects if not s.deleted]
            if not scopes:
                continue
            wall = time.time()
            for _ in range(due):
                scope = rng.choice(scopes)
                created = int(wall)
                if cfg.late_fraction > 0 and rng.random() < cfg.late_fraction:
                    created = int(wall - rng.uniform(1.0, max(1.0, cfg.late_max_s)))
                self.store.insert(scope, created)
