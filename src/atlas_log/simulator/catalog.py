"""The event types Atlas documents, per feed, with the extra fields each one carries and how often it occurs.

Read from the package data (copies of `shared/atlas-api/*-event-types.txt` and `event-subtypes-summary.tsv`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from importlib import resources

# Fields every event view has; everything else a subtype lists is an "extra" field filled per event.
COMMON_FIELDS = frozenset(
    {
        "apiKeyId",
        "created",
        "delegatePrincipal",
        "eventTypeName",
        "groupId",
        "id",
        "isGlobalAdmin",
        "links",
        "orgId",
        "publicKey",
        "raw",
        "remoteAddress",
        "userId",
        "username",
    }
)

# Relative frequencies of the types seen most often on the wire; every other documented type weighs 1.
_ORG_HOT: dict[str, float] = {
    "GROUP_CREATED": 25,  # the spec's oneOf rejects it, yet it is among the commonest org events
    "GROUP_DELETED": 8,  # same deviation
    "GROUP_MOVED": 1,
    "GROUP_TAGS_MODIFIED": 4,
    "JOINED_ORG": 6,
    "INVITED_TO_ORG": 6,
    "REMOVED_FROM_ORG": 3,
    "USER_ROLES_CHANGED_AUDIT": 5,
    "TEAM_CREATED": 4,
    "TEAM_DELETED": 3,
    "TEAM_NAME_CHANGED": 2,
    "TEAM_ADDED_TO_GROUP": 3,
    "TEAM_REMOVED_FROM_GROUP": 2,
    "TEAM_ROLES_MODIFIED": 2,
    "JOINED_TEAM": 4,
    "REMOVED_FROM_TEAM": 3,
    "API_KEY_CREATED": 5,
    "API_KEY_DELETED": 5,
    "API_KEY_DESCRIPTION_CHANGED": 2,
    "API_KEY_ACCESS_LIST_ENTRY_ADDED": 3,
    "API_KEY_ACCESS_LIST_ENTRY_DELETED": 3,
    "API_KEY_ROLES_CHANGED": 2,
    "SERVICE_ACCOUNT_CREATED": 2,
    "INVOICE_CLOSED": 2,
    "CHARGE_SUCCEEDED": 2,
}
_PROJECT_HOT: dict[str, float] = {
    "PROJECT_SCHEDULED_MAINTENANCE": 60,
    "CLUSTER_UPDATE_STARTED": 25,
    "CLUSTER_UPDATE_COMPLETED": 22,
    "CLUSTER_UPDATE_SUBMITTED": 8,
    "CLUSTER_CREATED": 5,
    "CLUSTER_READY": 6,
    "CLUSTER_DELETE_SUBMITTED": 4,
    "CLUSTER_DELETED": 4,
    "MONGODB_USER_ADDED": 8,
    "MONGODB_USER_UPDATED": 6,
    "MONGODB_USER_DELETED": 6,
    "MONGODB_USER_X509_CERT_CREATED": 2,
    "MONGODB_ROLE_ADDED": 2,
    "MONGODB_ROLE_UPDATED": 2,
    "MONGODB_ROLE_DELETED": 2,
    "TENANT_RESTORE_REQUESTED_AUDIT": 5,  # the spec's oneOf rejects both TENANT_RESTORE_*_AUDIT
    "TENANT_RESTORE_COMPLETED_AUDIT": 5,
    "ALERT_ACKNOWLEDGED_AUDIT": 3,
    "ALERT_UNACKNOWLEDGED_AUDIT": 2,
    "ALERT_CONFIG_ADDED_AUDIT": 2,
    "ALERT_CONFIG_CHANGED_AUDIT": 3,
    "ALERT_CONFIG_DELETED_AUDIT": 2,
    "API_KEY_ADDED_TO_GROUP": 2,
    "API_KEY_REMOVED_FROM_GROUP": 2,
    "CLUSTER_TAGS_MODIFIED": 2,
    "HOST_UP": 4,
    "HOST_DOWN": 2,
    "HOST_RESTARTED": 3,
    "PRIMARY_ELECTED": 4,
    "NETWORK_PERMISSION_ENTRY_ADDED": 3,
    "NETWORK_PERMISSION_ENTRY_REMOVED": 2,
    "DATA_EXPLORER": 3,
    "INSIDE_METRIC_THRESHOLD": 2,
    "OUTSIDE_METRIC_THRESHOLD": 2,
    "FTS_INDEX_CREATED": 2,
    "FTS_INDEX_BUILD_COMPLETE": 2,
}

# Subtypes whose view carries no caller (system events): no apiKeyId/userId/remoteAddress.
_SYSTEM_SUBTYPES = frozenset(
    {
        "ForNdsGroup",
        "ClusterEventViewForNdsGroup",
        "AppServiceEventView",
        "StreamsEventViewForNdsGroup",
        "StreamProcessorEventViewForNdsGroup",
        "HostMetricEvent",
        "BillingEventViewForNdsGroup",
        "BillingEventViewForOrg",
    }
)
_SYSTEM_WORDS = (
    "_STARTED",
    "_COMPLETED",
    "_READY",
    "MAINTENANCE",
    "HOST_",
    "CLUSTER_DELETED",
    "_FAILED",
    "_EXPIRED",
    "ABOUT_TO_EXPIRE",
    "THRESHOLD",
    "PRIMARY",
    "OPLOG",
    "AUTO_SCALE",
    "AUTO_INDEXING",
    "_RESTARTED",
)
# Project events about a deployment carry `clusterName` (undocumented, seen on the wire).
_CLUSTER_WORDS = (
    "CLUSTER",
    "HOST_",
    "PRIMARY",
    "REPLICATION",
    "AUTO_SCALE",
    "FTS_",
    "ONLINE_ARCHIVE",
    "SNAPSHOT",
    "BACKUP",
    "MONGOS",
    "SEARCH_",
    "DATA_EXPLORER",
    "INDEX",
)


@dataclass(frozen=True)
class EventKind:
    """One event type of one feed and how to fill it."""

    name: str
    subtype: str  # the spec's view name, or "" when no view lists the type
    fields: tuple[str, ...]  # extra fields beyond the common ones
    system: bool  # no caller fields
    cluster: bool  # carries clusterName (project feed)
    group_ref: bool  # carries groupId (org feed)


@dataclass
class FeedCatalog:
    """The types of one feed ("org" or "group"), their weights, and a name -> index map."""

    feed: str
    kinds: list[EventKind]
    weights: list[float]
    index: dict[str, int] = field(default_factory=dict)
    cum_weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.index = {k.name: i for i, k in enumerate(self.kinds)}
        self.cum_weights = list(itertools.accumulate(self.weights))

    def index_of(self, name: str) -> int:
        """The index of a type; an unknown type is added (Atlas adds types often; they are never rejected)."""
        found = self.index.get(name)
        if found is not None:
            return found
        if len(self.kinds) >= 0xFFFF:
            raise ValueError("too many distinct event types")
        kind = EventKind(name, "", (), system=False, cluster=False, group_ref=False)
        self.kinds.append(kind)
        self.weights.append(0.0)
        self.cum_weights.append(self.cum_weights[-1] if self.cum_weights else 0.0)
        self.index[name] = len(self.kinds) - 1
        return self.index[name]


# Extra fields a view declares but only some of its types fill (as the recorded samples show).
_FIELD_WHEN: dict[str, tuple[str, ...]] = {
    "dbUserUsername": ("MONGODB_USER_ADDED", "MONGODB_USER_UPDATED", "MONGODB_USER_DELETED"),
    "whitelistEntry": ("ACCESS_LIST", "WHITELIST", "NETWORK_PERMISSION"),
    "deskLocation": ("ATTEMPT_KILL",),
    "employeeIdentifier": ("ATTEMPT_KILL",),
}


def _relevant(field_name: str, type_name: str) -> bool:
    words = _FIELD_WHEN.get(field_name)
    return words is None or any(w in type_name for w in words)


def _read(name: str) -> str:
    return resources.files("atlas_log.simulator").joinpath("data", name).read_text(encoding="utf-8")


def _subtypes() -> dict[str, dict[str, tuple[str, tuple[str, ...]]]]:
    """feed -> type name -> (subtype, extra fields), from the subtype summary."""
    out: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {"org": {}, "group": {}}
    feed = "org"
    for line in _read("event-subtypes-summary.tsv").splitlines():
        if line.startswith("## EventViewForNdsGroup"):
            feed = "group"
        cells = line.split("\t")
        if len(cells) < 6 or line.startswith("#"):
            continue
        attrs = dict(cell.split("=", 1) for cell in cells[1:] if "=" in cell)
        props = [p for p in attrs.get("properties", "").split(",") if p and p not in COMMON_FIELDS]
        for type_name in attrs.get("eventTypeNames", "").split(","):
            if type_name and type_name not in out[feed]:
                out[feed][type_name] = (cells[0], tuple(props))
    return out


def load_catalogs() -> dict[str, FeedCatalog]:
    """The org and project ("group") feed catalogs."""
    subtypes = _subtypes()
    catalogs: dict[str, FeedCatalog] = {}
    for feed, file_name, hot in (
        ("org", "org-event-types.txt", _ORG_HOT),
        ("group", "project-event-types.txt", _PROJECT_HOT),
    ):
        kinds: list[EventKind] = []
        weights: list[float] = []
        for name in dict.fromkeys(t.strip() for t in _read(file_name).splitlines() if t.strip()):
            subtype, all_fields = subtypes[feed].get(name, ("", ()))
            fields = tuple(f for f in all_fields if _relevant(f, name))
            system = subtype in _SYSTEM_SUBTYPES or any(w in name for w in _SYSTEM_WORDS)
            if name.endswith("_AUDIT") and "COMPLETED" not in name:
                system = False
            if feed == "org":
                cluster = False
                # Org events about one project carry its groupId (and a self link under it).
                group_ref = "GROUP" in name or name == "TEAM_ROLES_MODIFIED"
            else:
                cluster = (
                    any(w in name for w in _CLUSTER_WORDS) and "TENANT_RESTORE" not in name and "_TAGS_" not in name
                )
                group_ref = True
            kinds.append(EventKind(name, subtype, fields, system, cluster, group_ref))
            weights.append(float(hot.get(name, 1.0)))
        catalogs[feed] = FeedCatalog(feed, kinds, weights)
    return catalogs
