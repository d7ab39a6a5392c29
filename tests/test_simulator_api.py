"""The simulator answers the seven operations as Atlas does: spec-valid, shaped like the recorded samples."""

from __future__ import annotations

import collections
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest_simulator import (
    ACCEPT,
    MEDIA,
    PINNED_END,
    V2,
    SpecChecker,
    digest_client,
    read_sample,
    shared_sim,
    small_config,
    spec_checker,
)

from atlas_log._time import format_atlas_time, parse_atlas_time
from atlas_log.simulator import Simulator
from atlas_log.simulator.store import EventStore

__all__ = ["shared_sim", "spec_checker"]  # fixtures imported for pytest
ACTOR_FIELDS = {"apiKeyId", "publicKey", "userId", "username"}


def _feed_ids(sim: Simulator) -> tuple[str, str]:
    return sim.orgs()[0]["id"], sim.projects()[0]["id"]


def test_every_operation_is_valid_against_the_spec(shared_sim: Simulator, spec_checker: SpecChecker) -> None:
    """All seven operations answer 200 with spec-valid envelopes, events, headers and rate-limit headers."""
    org_id, group_id = _feed_ids(shared_sim)
    with digest_client(shared_sim) as client:
        for path in (f"{V2}/orgs", f"{V2}/groups", f"{V2}/orgs/{org_id}/groups"):
            response = client.get(path)
            body = spec_checker.check("GET", path, response)
            assert set(body) == {"links", "results", "totalCount"} and body["results"]
        for feed, path in (("org", f"{V2}/orgs/{org_id}/events"), ("group", f"{V2}/groups/{group_id}/events")):
            response = client.get(path, params={"itemsPerPage": 500, "includeRaw": "true"})
            body = spec_checker.check("GET", path, response, feed)
            assert len(body["results"]) > 0 and all("raw" in e for e in body["results"])
            for event in body["results"][:30]:
                one_path = f"{path}/{event['id']}"
                one = spec_checker.check("GET", one_path, client.get(one_path), feed)
                assert one["id"] == event["id"] and "raw" not in one


def test_error_paths_are_valid_atlas_errors(spec_checker: SpecChecker) -> None:
    """400, 401, 404, 406 and 429 carry Atlas error bodies, X-Error-Code and the documented codes."""
    with (
        Simulator(small_config(events=50, rate_limit_scale=0.0)) as sim,
        Simulator(small_config(events=50, rate_limit_scale=0.004)) as limited_sim,
    ):
        org_id, group_id = _feed_ids(sim)
        events = f"{V2}/groups/{group_id}/events"
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            (events, {"itemsPerPage": 0}, 400, "INVALID_ATTRIBUTE"),
            (events, {"itemsPerPage": 501}, 400, "INVALID_ATTRIBUTE"),
            (events, {"itemsPerPage": "many"}, 400, "INVALID_ATTRIBUTE"),
            (events, {"pageNum": 0}, 400, "INVALID_ATTRIBUTE"),
            (events, {"minDate": "yesterday"}, 400, "INVALID_ATTRIBUTE"),
            (f"{V2}/orgs/{org_id}/events", {"maxDate": "2026-13-01T00:00:00Z"}, 400, "INVALID_ATTRIBUTE"),
            (f"{V2}/groups/{'1' * 24}/events", {}, 404, "GROUP_NOT_FOUND"),
            (f"{V2}/orgs/{'2' * 24}/events", {}, 404, "ORG_NOT_FOUND"),
            (f"{events}/{'3' * 24}", {}, 404, "RESOURCE_NOT_FOUND"),
        ]
        with digest_client(sim) as client:
            for path, params, status, code in cases:
                response = client.get(path, params=params)
                assert (response.status_code, response.json()["errorCode"]) == (status, code), (path, params)
                spec_checker.check("GET", path, response)
            # 406: no versioned Accept header
            response = client.get(events, headers={"Accept": "application/json"})
            assert response.status_code == 406
            assert spec_checker.check("GET", events, response)["errorCode"] == "INVALID_VERSION_DATE"
        # 429 once the project's bucket (300 * 0.004 = 1 token) is empty
        with digest_client(limited_sim) as client:
            events = f"{V2}/groups/{limited_sim.projects()[0]['id']}/events"
            first = client.get(events)
            assert first.status_code == 200 and first.headers["RateLimit-Limit"] == "1"
            limited = client.get(events)
            assert limited.status_code == 429
            assert int(limited.headers["Retry-After"]) >= 1
            assert spec_checker.check("GET", events, limited)["errorCode"] == "RATE_LIMITED"
        # 401: wrong password
        with httpx.Client(base_url=sim.base_url, headers=ACCEPT, auth=httpx.DigestAuth("simulator-public", "x")) as c:
            response = c.get(f"{V2}/orgs")
            assert response.status_code == 401
            assert spec_checker.check("GET", f"{V2}/orgs", response)["errorCode"] == "USER_UNAUTHORIZED"


def test_recorded_samples_show_exactly_the_tolerated_deviations(spec_checker: SpecChecker) -> None:
    """Real Atlas answers fail the spec only where the checker tolerates it (event types, error parameters)."""
    tolerated: collections.Counter[str] = collections.Counter()
    for name, feed in (("list-org-events.http", "org"), ("list-project-events.http", "group")):
        _, _, body = read_sample(name)
        for event in body["results"]:
            if not spec_checker.check_event(feed, event):
                tolerated[event["eventTypeName"]] += 1
    assert set(tolerated) == {
        "GROUP_CREATED",
        "GROUP_DELETED",
        "TENANT_RESTORE_COMPLETED_AUDIT",
        "TENANT_RESTORE_REQUESTED_AUDIT",
    }
    _, _, error = read_sample("error-404-group-not-found.http")
    assert [type(p) for p in error["parameters"]] == [str]


def test_bodies_match_recorded_samples_key_by_key(shared_sim: Simulator) -> None:
    """Envelope keys, headers and, per event type, the field names and JSON types match the recorded answers."""
    org_id, group_id = _feed_ids(shared_sim)
    with digest_client(shared_sim) as client:
        for name, scope_id, feed_path in (
            ("list-org-events.http", org_id, f"{V2}/orgs/{org_id}/events"),
            ("list-project-events.http", group_id, f"{V2}/groups/{group_id}/events"),
        ):
            _, sample_headers, sample = read_sample(name)
            by_type: dict[str, dict[str, Any]] = {}
            for event in sample["results"]:
                by_type.setdefault(event["eventTypeName"], event)
            for type_name, recorded in by_type.items():
                ours = shared_sim.add_events(scope_id, 1, event_type=type_name)[0]
                served = client.get(f"{feed_path}/{ours['id']}").json()
                assert served == ours
                assert set(ours) - ACTOR_FIELDS == set(recorded) - ACTOR_FIELDS, type_name
                assert bool(set(ours) & ACTOR_FIELDS) == bool(set(recorded) & ACTOR_FIELDS), type_name
                for key in set(ours) & set(recorded):
                    assert type(ours[key]) is type(recorded[key]), (type_name, key)
                assert ours["links"][0]["rel"] == "self"
            response = client.get(feed_path, params={"includeCount": "false", "includeRaw": "false"})
            body = response.json()
            assert list(body) == list(sample)
            assert response.headers["Content-Type"] == sample_headers["Content-Type"]
            for header in ("Ratelimit-Limit", "Ratelimit-Remaining", "X-Java-Method", "X-Envoy-Upstream-Service-Time"):
                assert header in sample_headers
            for header in ("Server", "Strict-Transport-Security", "X-Frame-Options", "X-Content-Type-Options"):
                assert response.headers[header] == sample_headers[header]
        missing = client.get(f"{V2}/groups/{'1' * 24}/events")
        _, sample_headers, sample = read_sample("error-404-group-not-found.http")
        assert missing.json() == sample
        assert missing.headers["Content-Type"] == sample_headers["Content-Type"]
        assert missing.headers["X-Error-Code"] == sample_headers["X-Error-Code"]


def test_org_events_without_project_link_under_groups_null(shared_sim: Simulator) -> None:
    org_id = shared_sim.orgs()[0]["id"]
    events = [e for e in shared_sim.ground_truth() if e.get("orgId") == org_id]
    without = [e for e in events if "groupId" not in e]
    with_group = [e for e in events if "groupId" in e]
    assert without and with_group
    assert all(f"/groups/null/events/{e['id']}" in e["links"][0]["href"] for e in without)
    assert all(f"/groups/{e['groupId']}/events/{e['id']}" in e["links"][0]["href"] for e in with_group)


def test_wire_quirks_newest_first_seconds_and_ids(shared_sim: Simulator) -> None:
    """Newest first; one-second `created`; id timestamp == created; non-monotone ids within one second."""
    group_id = shared_sim.projects()[0]["id"]
    events = [e for e in shared_sim.ground_truth() if e.get("groupId") == group_id and "orgId" not in e]
    created = [e["created"] for e in events]
    assert created == sorted(created, reverse=True)
    assert all(len(c) == 20 and c.endswith("Z") for c in created)
    assert all(int(e["id"][:8], 16) == int(parse_atlas_time(e["created"]).timestamp()) for e in events)
    per_second = collections.defaultdict(list)
    for e in events:
        per_second[e["created"]].append(e["id"])
    assert max(len(v) for v in per_second.values()) >= 600  # the burst second spans pages
    crowded = [ids for ids in per_second.values() if len(ids) > 2]
    assert any(ids != sorted(ids, reverse=True) and ids != sorted(ids) for ids in crowded)
    assert sum("clusterName" in e for e in events) > len(events) // 5


def test_deviating_types_occur_at_a_realistic_frequency(shared_sim: Simulator) -> None:
    names = collections.Counter(e["eventTypeName"] for e in shared_sim.ground_truth())
    assert names["GROUP_CREATED"] + names["GROUP_DELETED"] > 0
    assert names["TENANT_RESTORE_COMPLETED_AUDIT"] + names["TENANT_RESTORE_REQUESTED_AUDIT"] > 0


def test_include_count_false_has_zero_total_and_no_next_link(shared_sim: Simulator) -> None:
    group_id = shared_sim.projects()[0]["id"]
    with digest_client(shared_sim) as client:
        path = f"{V2}/groups/{group_id}/events"
        counted = client.get(path, params={"itemsPerPage": 10}).json()
        assert counted["totalCount"] > 10 and [link["rel"] for link in counted["links"]] == ["self", "next"]
        quirk = client.get(path, params={"itemsPerPage": 10, "includeCount": "false"}).json()
        assert quirk["totalCount"] == 0 and len(quirk["results"]) == 10
        assert [link["rel"] for link in quirk["links"]] == ["self"]
        second = client.get(path, params={"itemsPerPage": 10, "pageNum": 2}).json()
        rels = {link["rel"]: link["href"] for link in second["links"]}
        assert set(rels) == {"self", "next", "previous"}
        assert rels["next"].startswith(shared_sim.base_url) and rels["next"].endswith("itemsPerPage=10&pageNum=3")
        assert rels["self"].endswith("pageNum=2&itemsPerPage=10")


def test_min_and_max_date_are_inclusive_and_filters_apply(shared_sim: Simulator) -> None:
    group_id = shared_sim.projects()[0]["id"]
    truth = [e for e in shared_sim.ground_truth() if e.get("groupId") == group_id and "orgId" not in e]
    pivot = truth[len(truth) // 2]["created"]
    with digest_client(shared_sim) as client:
        path = f"{V2}/groups/{group_id}/events"

        def fetch(**params: Any) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            url: str | None = path
            query: dict[str, Any] | None = {"itemsPerPage": 500, **params}
            while url:
                body = client.get(url, params=query).json()
                out.extend(body["results"])
                url = next((link["href"] for link in body["links"] if link["rel"] == "next"), None)
                query = None
            return out

        same_second = fetch(minDate=pivot, maxDate=pivot)
        assert same_second and {e["created"] for e in same_second} == {pivot}
        assert len(same_second) == sum(e["created"] == pivot for e in truth)
        newer = fetch(minDate=pivot)
        assert len(newer) == sum(e["created"] >= pivot for e in truth)
        common = collections.Counter(e["eventTypeName"] for e in truth).most_common(2)
        only = fetch(eventType=[common[0][0], common[1][0]])
        assert len(only) == common[0][1] + common[1][1]
        without = fetch(excludedEventType=common[0][0])
        assert len(without) == len(truth) - common[0][1]
        cluster = next(e["clusterName"] for e in truth if "clusterName" in e)
        assert {e.get("clusterName") for e in fetch(clusterNames=cluster)} == {cluster}


def test_same_seed_same_history() -> None:
    """With a pinned history end, the same seed gives byte-identical orgs, projects and events."""
    end = datetime(2026, 1, 1, tzinfo=UTC)
    one = EventStore(small_config(seed=7, history_end=end))
    two = EventStore(small_config(seed=7, history_end=end))
    other = EventStore(small_config(seed=8, history_end=end))
    assert one.ground_truth("http://h") == two.ground_truth("http://h")
    assert one.ground_truth("http://h") != other.ground_truth("http://h")
    first = one.ground_truth("http://h")
    assert all(format_atlas_time(end - timedelta(days=30)) <= e["created"] <= format_atlas_time(end) for e in first)
    assert len({e["id"] for e in first}) == len(first) == 1500 + 600
    assert PINNED_END.tzinfo is UTC and MEDIA.endswith("+json")


@pytest.mark.parametrize("value", ["true", "false"])
def test_pretty_and_envelope_flags(shared_sim: Simulator, value: str) -> None:
    with digest_client(shared_sim) as client:
        response = client.get(f"{V2}/orgs", params={"pretty": value, "envelope": value})
        assert response.status_code == 200
        assert ("\n" in response.text) is (value == "true")
        assert ("status" in response.json()) is (value == "true")
