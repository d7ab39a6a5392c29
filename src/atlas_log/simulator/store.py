"""The simulated Atlas: organizations, projects and their event feeds, stored compactly and rendered on demand.

Each feed (one per org, one per project) is two parallel `array('q')`s sorted ascending:
`keys[i] = created << 32 | tiebreak` (the tiebreak is random, so events that share a second are served in an
order unrelated to their ids, as Atlas does) and `meta[i] = process << 40 | counter << 16 | type_index`.
The event id is an ObjectId: `created` (4 bytes) + a process id (5 bytes) + a counter (3 bytes), so its
embedded timestamp equals `created`. Every other field is derived from a hash of the key and meta.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atlas_log.simulator.catalog import EventKind, FeedCatalog, load_catalogs
from atlas_log.simulator.config import SimulatorConfig

_M64 = (1 << 64) - 1
_TIE_MASK = 0xFFFFFFFF
_N_PROCESSES = 4
_POOL = 8  # size of per-scope pools (teams, alert configs, db users...) so related events share ids

_ORG_WORDS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "cyberdyne", "tyrell")
_PROJECT_WORDS = (
    "payments",
    "search",
    "analytics",
    "checkout",
    "inventory",
    "identity",
    "billing",
    "catalog",
    "ledger",
    "notifications",
)
_ENVS = ("prod", "staging", "dev", "qa")
_CLUSTER_NAMES = ("Cluster0", "prod-east", "prod-west", "analytics", "snapshotCluster1", "archive", "staging-1")
_FIRST_NAMES = ("ana", "bo", "chen", "dana", "eli", "fatima", "gus", "hana", "ivan", "jo", "kai", "lena")
_DOMAINS = ("example.com", "corp.example", "mongodb-user.example")


def splitmix64(x: int) -> int:
    """A fast, well-mixed 64-bit hash step (SplitMix64)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def format_ts(seconds: int) -> str:
    """`2026-08-10T03:06:47Z` for an epoch second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _hex24(h: int, ts: int) -> str:
    return f"{ts & 0xFFFFFFFF:08x}{h & _M64:016x}"


@dataclass
class Actor:
    """Who triggers events: an API key (apiKeyId + publicKey) or a user (userId + username)."""

    api_key: bool
    ident: str
    name: str


@dataclass
class Scope:
    """One organization or project and its event feed."""

    kind: str  # "org" or "group"
    id: str
    name: str
    org_id: str
    created: int
    catalog: FeedCatalog
    keys: array[int] = field(default_factory=lambda: array("q"))
    meta: array[int] = field(default_factory=lambda: array("q"))
    deleted: bool = False
    revoked: bool = False
    salt: int = 0
    clusters: tuple[str, ...] = ()
    projects: list[str] = field(default_factory=list)  # org: ids of its projects (live or deleted)


@dataclass
class OrgContext:
    """Per-organization pools shared by the org feed and its projects' feeds."""

    name: str
    actors: list[Actor]
    addresses: list[str]


class EventStore:
    """All orgs, projects and events; thread-safe; deterministic from the seed for the generated history."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.catalogs = load_catalogs()
        self.lock = threading.RLock()
        rng = random.Random(config.seed)
        self._rng = rng
        self.processes = [rng.getrandbits(40) for _ in range(_N_PROCESSES)]
        self.counters = [rng.getrandbits(24) for _ in range(_N_PROCESSES)]
        end = config.history_end or datetime.now(UTC)
        self.history_end = int(end.timestamp())
        self.history_start = self.history_end - max(1, int(config.history_s))
        self.orgs: list[Scope] = []
        self.projects: list[Scope] = []
        self.by_id: dict[str, Scope] = {}
        self.org_ctx: dict[str, OrgContext] = {}
        # org events whose groupId is fixed (e.g. GROUP_DELETED written by delete_project): (org, key, meta) -> id
        self.pinned_groups: dict[tuple[str, int, int], str] = {}
        self._build_scopes(rng)
        self._generate_history(rng)
        self._live_rng = random.Random(config.seed ^ 0x5EED)

    # ---------------------------------------------------------------- construction
    def _object_id(self, rng: random.Random, ts: int) -> str:
        return f"{ts:08x}{rng.getrandbits(64):016x}"

    def _build_scopes(self, rng: random.Random) -> None:
        cfg = self.config
        base_ts = 1_500_000_000 + rng.randrange(50_000_000)
        for o in range(cfg.orgs):
            org_ts = base_ts + o * 86_400
            org_id = self._object_id(rng, org_ts)
            org_name = f"{_ORG_WORDS[o % len(_ORG_WORDS)]}-{o + 1}"
            org = Scope("org", org_id, org_name, org_id, org_ts, self.catalogs["org"], salt=rng.getrandbits(64))
            actors = [Actor(True, self._object_id(rng, org_ts + 3600 * (i + 1)), _public_key(rng)) for i in range(4)]
            actors += [
                Actor(
                    False,
                    self._object_id(rng, org_ts + 7200 * (i + 1)),
                    f"{rng.choice(_FIRST_NAMES)}.{rng.randrange(100, 999)}@{rng.choice(_DOMAINS)}",
                )
                for i in range(6)
            ]
            addresses = [
                f"{rng.randrange(3, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
                for _ in range(6)
            ]
            self.org_ctx[org_id] = OrgContext(org_name, actors, addresses)
            self.orgs.append(org)
            self.by_id[org_id] = org
            for p in range(cfg.projects_per_org):
                p_ts = org_ts + 600 * (p + 1)
                word = _PROJECT_WORDS[p % len(_PROJECT_WORDS)]
                env = _ENVS[(p // len(_PROJECT_WORDS)) % len(_ENVS)]
                name = f"{word}-{env}-{o + 1}-{p + 1}"
                clusters = tuple(rng.sample(_CLUSTER_NAMES, rng.randint(1, 3)))
                project = Scope(
                    "group",
                    self._object_id(rng, p_ts),
                    name,
                    org_id,
                    p_ts,
                    self.catalogs["group"],
                    salt=rng.getrandbits(64),
                    clusters=clusters,
                )
                org.projects.append(project.id)
                self.projects.append(project)
                self.by_id[project.id] = project

    def _generate_history(self, rng: random.Random) -> None:
        cfg = self.config
        scopes = self.orgs + self.projects
        weights = [(0.5 if s.kind == "org" else 1.0) * rng.uniform(0.3, 1.7) for s in scopes]
        counts = [0] * len(scopes)
        if cfg.events > 0:
            for i in rng.choices(range(len(scopes)), weights=weights, k=cfg.events):
                counts[i] += 1
        start, end = self.history_start, self.history_end
        span = end - start
        for si, scope in enumerate(scopes):
            n = counts[si]
            extra = cfg.burst_second_events if (self.projects and scope is self.projects[0]) else 0
            if n == 0 and extra == 0:
                continue
            rnd = rng.random
            times: list[int] = []
            t = start + int(rnd() * span)
            for _ in range(n):
                r = rnd()
                if r < 0.3:
                    pass  # same second as the previous event
                elif r < 0.55:
                    t -= 1 + int(rnd() * 20)  # same burst of activity
                else:
                    t = start + int(rnd() * span)
                if t < start:
                    t = start
                times.append(t)
            if extra:
                burst_t = start + span // 3 + int(rnd() * (span // 3))
                times.extend([burst_t] * extra)
            total = len(times)
            cat = scope.catalog
            types = rng.choices(range(len(cat.kinds)), cum_weights=cat.cum_weights, k=total)
            getbits = rng.getrandbits
            packed = sorted(
                ((t << 32 | getbits(32)) << 18) | (ty << 2) | getbits(2) for t, ty in zip(times, types, strict=True)
            )
            keys = array("q")
            meta = array("q")
            counters = self.counters
            for value in packed:
                proc = value & 3
                ctr = counters[proc] = (counters[proc] + 1) & 0xFFFFFF
                keys.append(value >> 18)
                meta.append(proc << 40 | ctr << 16 | ((value >> 2) & 0xFFFF))
            scope.keys = keys
            scope.meta = meta

    # ---------------------------------------------------------------- mutation
    def insert(self, scope: Scope, created: int, type_index: int | None = None) -> tuple[int, int]:
        """Insert one event; return its (key, meta)."""
        rng = self._live_rng
        with self.lock:
            if type_index is None:
                cat = scope.catalog
                type_index = rng.choices(range(len(cat.kinds)), cum_weights=cat.cum_weights, k=1)[0]
            proc = rng.randrange(_N_PROCESSES)
            ctr = self.counters[proc] = (self.counters[proc] + 1) & 0xFFFFFF
            key = created << 32 | rng.getrandbits(32)
            meta = proc << 40 | ctr << 16 | type_index
            pos = bisect.bisect_right(scope.keys, key)
            scope.keys.insert(pos, key)
            scope.meta.insert(pos, meta)
            return key, meta

    # ---------------------------------------------------------------- queries
    def visible_projects(self) -> list[Scope]:
        return [p for p in self.projects if not p.deleted and not p.revoked]

    def visible_orgs(self) -> list[Scope]:
        return [o for o in self.orgs if not o.deleted and not o.revoked]

    def window(self, scope: Scope, min_s: int | None, max_s: int | None) -> tuple[array[int], array[int]]:
        """Copies of the (keys, meta) with min_s <= created <= max_s, ascending."""
        with self.lock:
            keys = scope.keys
            lo = 0 if min_s is None else bisect.bisect_left(keys, min_s << 32)
            hi = len(keys) if max_s is None else bisect.bisect_right(keys, max_s << 32 | _TIE_MASK)
            if hi < lo:
                hi = lo
            return keys[lo:hi], scope.meta[lo:hi]

    def page(
        self, scope: Scope, min_s: int | None, max_s: int | None, page_num: int, per_page: int
    ) -> tuple[int, list[tuple[int, int]]]:
        """(matching count, the (key, meta) pairs of page `page_num`, newest first) without filters."""
        with self.lock:
            keys = scope.keys
            lo = 0 if min_s is None else bisect.bisect_left(keys, min_s << 32)
            hi = len(keys) if max_s is None else bisect.bisect_right(keys, max_s << 32 | _TIE_MASK)
            total = max(0, hi - lo)
            top = hi - (page_num - 1) * per_page
            bottom = max(lo, top - per_page)
            if top <= lo:
                return total, []
            k = keys[bottom:top]
            m = scope.meta[bottom:top]
        return total, list(zip(reversed(k), reversed(m), strict=True))

    def find(self, scope: Scope, event_id: str) -> tuple[int, int] | None:
        """The (key, meta) of the event with this id in this feed, or None."""
        try:
            ts = int(event_id[:8], 16)
            rest = int(event_id[8:], 16)
        except ValueError:
            return None
        proc_id, ctr = rest >> 24, rest & 0xFFFFFF
        try:
            proc = self.processes.index(proc_id)
        except ValueError:
            return None
        want = proc << 40 | ctr << 16
        keys, meta = self.window(scope, ts, ts)
        for k, m in zip(keys, meta, strict=True):
            if m & ~0xFFFF == want:
                return k, m
        return None

    def event_id(self, key: int, meta: int) -> str:
        return f"{key >> 32:08x}{self.processes[meta >> 40]:010x}{(meta >> 16) & 0xFFFFFF:06x}"

    def kind_of(self, scope: Scope, meta: int) -> EventKind:
        return scope.catalog.kinds[meta & 0xFFFF]

    def cluster_of(self, scope: Scope, key: int, meta: int) -> str | None:
        kind = scope.catalog.kinds[meta & 0xFFFF]
        if scope.kind != "group" or not kind.cluster or not scope.clusters:
            return None
        h = splitmix64(key ^ (meta << 3) ^ scope.salt)
        return scope.clusters[(h >> 8) % len(scope.clusters)]

    def render(self, scope: Scope, key: int, meta: int, base: str, include_raw: bool = False) -> dict[str, Any]:
        """The event exactly as the API serves it (keys in Atlas's alphabetical order)."""
        created = key >> 32
        kind = scope.catalog.kinds[meta & 0xFFFF]
        eid = f"{created:08x}{self.processes[meta >> 40]:010x}{(meta >> 16) & 0xFFFFFF:06x}"
        h = splitmix64(key ^ (meta << 3) ^ scope.salt)
        ctx = self.org_ctx[scope.org_id]
        ev: dict[str, Any] = {"created": format_ts(created), "eventTypeName": kind.name, "id": eid}
        group_id: str | None
        if scope.kind == "group":
            group_id = scope.id
            if kind.cluster and scope.clusters:
                ev["clusterName"] = scope.clusters[(h >> 8) % len(scope.clusters)]
        else:
            ev["orgId"] = scope.id
            group_id = None
            if kind.group_ref and scope.projects:
                group_id = (
                    self.pinned_groups.get((scope.id, key, meta)) or scope.projects[(h >> 12) % len(scope.projects)]
                )
        if group_id is not None:
            ev["groupId"] = group_id
        ev["isGlobalAdmin"] = False
        if not kind.system:
            actor_index = (h >> 20) % len(ctx.actors)
            actor = ctx.actors[actor_index]
            if actor.api_key:
                ev["apiKeyId"] = actor.ident
                ev["publicKey"] = actor.name
            else:
                ev["userId"] = actor.ident
                ev["username"] = actor.name
            if not kind.name.startswith("TENANT_RESTORE"):
                ev["remoteAddress"] = ctx.addresses[(actor_index + (h >> 28) % 2) % len(ctx.addresses)]
        for i, name in enumerate(kind.fields):
            ev[name] = _field_value(name, splitmix64(h + i + 1), scope, created, ctx)
        ev["links"] = [{"href": f"{base}/api/atlas/v2/groups/{group_id or 'null'}/events/{eid}", "rel": "self"}]
        if include_raw:
            raw: dict[str, Any] = {
                "_t": _raw_type(kind),
                "cre": ev["created"],
                "description": kind.name.replace("_", " ").capitalize(),
                "id": eid,
                "orgId": scope.org_id,
                "orgName": ctx.name,
                "severity": "WARNING" if ("FAIL" in kind.name or "DOWN" in kind.name) else "INFO",
            }
            if group_id is not None:
                raw["cid"] = group_id
                if scope.kind == "group":
                    raw["gn"] = scope.name
            ev["raw"] = raw
        return dict(sorted(ev.items()))

    def render_all(self, scope: Scope, base: str) -> Iterator[dict[str, Any]]:
        """Every event of a feed, newest first."""
        keys, meta = self.window(scope, None, None)
        for i in range(len(keys) - 1, -1, -1):
            yield self.render(scope, keys[i], meta[i], base)

    def ground_truth(self, base: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for scope in self.visible_orgs() + self.visible_projects():
            out.extend(self.render_all(scope, base))
        return out

    def count(self) -> int:
        with self.lock:
            return sum(len(s.keys) for s in self.orgs + self.projects)


def _public_key(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))


def _raw_type(kind: EventKind) -> str:
    sub = kind.subtype or "NDSAudit"
    for suffix in ("ViewForOrg", "ViewForNdsGroup", "ForOrg", "ForNdsGroup", "View"):
        if sub.endswith(suffix) and sub != suffix:
            sub = sub[: -len(suffix)]
            break
    out = []
    for i, ch in enumerate(sub):
        if ch.isupper() and i and not sub[i - 1].isupper():
            out.append("_")
        out.append(ch.upper())
    return "".join(out)


def _field_value(name: str, h: int, scope: Scope, created: int, ctx: OrgContext) -> Any:
    """A plausible value for a subtype's extra field."""
    pooled = h % _POOL
    salt = scope.salt
    if name in ("teamId", "alertConfigId", "resourcePolicyId", "endpointId"):
        return _hex24(splitmix64(salt + pooled + len(name)), scope.created + pooled * 60)
    if name in ("alertId", "invoiceId", "paymentId", "sessionId", "resourceId"):
        return _hex24(h, created - (h >> 40) % 86400)
    if name == "targetPublicKey":
        r = random.Random(salt + pooled)
        return _public_key(r)
    if name in ("targetUsername", "modifiedBy"):
        return f"{_FIRST_NAMES[pooled % len(_FIRST_NAMES)]}.{100 + pooled}@{_DOMAINS[pooled % len(_DOMAINS)]}"
    if name == "dbUserUsername":
        return f"CN=user{(salt + pooled) % 1000}" if h & 1 else f"app-user-{pooled}"
    if name == "whitelistEntry":
        return f"10.{(h >> 8) % 256}.{(h >> 16) % 256}.0/24"
    if name == "resourceType":
        return "cluster" if scope.kind == "group" else "project"
    if name in ("shardName", "replicaSetName"):
        return f"atlas-{(salt >> 8) % 1000000:06x}-shard-{h % 3}"
    if name == "hostname":
        return f"atlas-{(salt >> 8) % 1000000:06x}-shard-00-0{h % 3}.{(salt >> 32) % 100000:05x}.mongodb.net"
    if name == "port":
        return 27017
    if name in ("collection", "database"):
        return ("orders", "users", "events", "sessions")[h % 4] if name == "collection" else "app"
    if name == "opType":
        return ("insert", "update", "delete", "find")[h % 4]
    if name == "deskLocation":
        return ("NYC", "DUB", "SYD", "ATL")[h % 4]
    if name == "employeeIdentifier":
        return f"emp{h % 100000:05d}"
    if name == "currentValue":
        return {"number": float(h % 10000) / 100.0, "units": ("count", "MB", "msec")[(h >> 20) % 3]}
    if name == "metricName":
        return ("CONNECTIONS", "NORMALIZED_SYSTEM_CPU_USER", "DISK_PARTITION_SPACE_USED_DATA")[h % 3]
    if name == "providerEndpointId":
        return f"vpce-{h % (1 << 48):012x}"
    if name == "instanceName":
        return f"stream-{pooled}"
    if name == "processorName":
        return f"processor-{pooled}"
    if name == "processorState":
        return ("STARTED", "STOPPED", "FAILED", "CREATED")[h % 4]
    if name == "processorErrorMsg":
        return "" if h & 1 else "connection to source lost"
    if name in ("fromTier", "toTier"):
        return ("SP10", "SP30", "SP50")[h % 3]
    if name == "reason":
        return "USER_REQUESTED"
    if name == "region":
        return ("VIRGINIA_USA", "DUBLIN_IRL", "FRANKFURT_DEU")[h % 3]
    if name == "violatedPolicies":
        return [_hex24(splitmix64(salt + pooled), scope.created)]
    if name == "violationAction":
        return "BLOCKED"
    return f"{name}-{pooled}"
