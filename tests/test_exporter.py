"""The exporter in-process against the simulator: what lands in the destination is Atlas's feed, exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import StartSim, assert_exactly_once, exporter_config, stored_events

from atlas_log._time import utcnow
from atlas_log.atlas_api import AtlasClient, Scope
from atlas_log.get_latest import Exporter, load_checkpoint
from atlas_log.write_events import LocalSink, Sink


def export(sim: Any, out: Path | str, cycles: int = 1, **raw: Any) -> Exporter:
    exporter = Exporter(exporter_config(sim, out, **raw))
    try:
        for _ in range(cycles):
            result = exporter.run_cycle()
            assert not result.failures, result.failures
    finally:
        exporter.close()
    return exporter


def quiesce(sim: Any) -> None:
    """Stop live arrivals and let the current second close, so one more cycle can read everything."""
    sim.config.rate = 0.0
    time.sleep(1.2)


def test_first_run_exports_the_whole_history_once_with_a_burst_second_spanning_pages(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(projects_per_org=3, events=2_000, burst_second_events=1_100)
    export(sim, tmp_path)
    events, stored_objects = assert_exactly_once(sim, LocalSink(tmp_path))
    assert events == len(sim.ground_truth()) >= 3_100
    assert stored_objects == 1  # one object for every scope of the cycle, not one per scope


@pytest.mark.parametrize("count", [501, 1_001])
def test_the_originals_page_boundaries(start_sim: StartSim, tmp_path: Path, count: int) -> None:
    sim = start_sim(projects_per_org=1, events=0)
    project = sim.projects()[0]["id"]
    sim.add_events(project, count, created=utcnow() - timedelta(hours=1))
    export(sim, tmp_path)
    events, _ = assert_exactly_once(sim, LocalSink(tmp_path))
    assert events == count


def test_many_ids_at_one_timestamp_across_cycles(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=1, events=10)
    project = sim.projects()[0]["id"]
    moment = utcnow() - timedelta(seconds=30)
    sim.add_events(project, 700, created=moment)
    export(sim, tmp_path)
    sim.add_events(project, 300, created=moment)  # the same second, visible late (inside the look-back)
    export(sim, tmp_path)
    assert_exactly_once(sim, LocalSink(tmp_path))
    cp, _ = load_checkpoint(LocalSink(tmp_path), "_state/checkpoint.json")
    assert sum(s.events_total for s in cp.scopes.values()) == len(sim.ground_truth())
    assert len(cp.scopes[f"project:{project}"].watermark.recent) >= 1_000  # every id of that second, kept


def test_live_arrivals_while_paging(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=2, events=3_000, rate=200.0)
    exporter = Exporter(exporter_config(sim, tmp_path))
    try:
        for _ in range(3):
            assert not exporter.run_cycle().failures
            time.sleep(0.3)
        quiesce(sim)
        assert not exporter.run_cycle().failures
    finally:
        exporter.close()
    assert_exactly_once(sim, LocalSink(tmp_path))


def test_late_visible_event_inside_lookback_is_exported_once_outside_it_is_not(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(projects_per_org=1, events=50)
    project = sim.projects()[0]["id"]
    export(sim, tmp_path, lookback="5m")
    inside = sim.add_events(project, 3, created=utcnow() - timedelta(minutes=2))
    outside = sim.add_events(project, 2, created=utcnow() - timedelta(minutes=20))
    export(sim, tmp_path, cycles=2, lookback="5m")
    events, _, _ = stored_events(LocalSink(tmp_path))
    ids = [e["id"] for e in events]
    assert all(ids.count(e["id"]) == 1 for e in inside)
    # Documented limit: an event that becomes visible later than --lookback after its `created` is not exported.
    assert not any(e["id"] in ids for e in outside)


def test_backfill_in_chunks_and_parts_commits_progress_and_stays_exact(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=2, events=12_000, burst_second_events=700)
    exporter = Exporter(exporter_config(sim, tmp_path, max_events_per_object=2_000, concurrency=2))
    exporter.chunk_events = 1_500
    try:
        result = exporter.run_cycle()
    finally:
        exporter.close()
    assert not result.failures
    events, objects = assert_exactly_once(sim, LocalSink(tmp_path))
    assert objects >= events // (2_000 + 1_500) and result.objects == objects
    cp, _ = load_checkpoint(LocalSink(tmp_path), "_state/checkpoint.json")
    assert cp.seq == objects and sum(s.events_total for s in cp.scopes.values()) == events


def test_a_failing_scope_does_not_stop_the_others_and_keeps_its_watermark(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=3, events=600)
    export(sim, tmp_path)
    victim = sim.projects()[0]["id"]
    sink = LocalSink(tmp_path)
    before, _ = load_checkpoint(sink, "_state/checkpoint.json")
    others = [p["id"] for p in sim.projects()[1:]]
    sim.add_events(others[0], 5)
    sim.add_events(victim, 5)
    sim.inject_scope_error(victim) if hasattr(sim, "inject_scope_error") else sim.revoke_access(victim)
    exporter = Exporter(exporter_config(sim, tmp_path))
    try:
        exporter.run_cycle()
    finally:
        exporter.close()
    after, _ = load_checkpoint(sink, "_state/checkpoint.json")
    key = f"project:{victim}"
    assert after.scopes[key].watermark == before.scopes[key].watermark
    assert after.scopes[f"project:{others[0]}"].events_total == before.scopes[f"project:{others[0]}"].events_total + 5


def test_service_account_and_event_type_filter(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=2, events=800)
    types = sorted({e["eventTypeName"] for e in sim.ground_truth()})
    dropped = types[0]
    export(sim, tmp_path, service_account=True, exclude_event_type=[dropped])
    events, _, _ = stored_events(LocalSink(tmp_path))
    expected = {e["id"] for e in sim.ground_truth() if e["eventTypeName"] != dropped}
    assert sorted(e["id"] for e in events) == sorted(expected)
    # Filtered events still moved the watermark: a second cycle stores nothing new.
    export(sim, tmp_path, service_account=True, exclude_event_type=[dropped])
    assert len(stored_events(LocalSink(tmp_path))[0]) == len(expected)


class CrashAfterWrite:
    """A sink that dies (like kill -9) right after the object is durably written, before the checkpoint save."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_new(self, key: str, body: bytes) -> bool:
        created = self.inner.put_new(key, body)
        if self.armed:
            raise SystemExit("simulated crash after the object write")
        return created


def test_crash_between_object_write_and_checkpoint_save_is_adopted(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=2, events=900)
    config = exporter_config(sim, tmp_path)
    crashing = Exporter(config, sink=CrashAfterWrite(LocalSink(tmp_path)))
    with pytest.raises(SystemExit):
        crashing.run_cycle()
    crashing.close()
    cp, _ = load_checkpoint(LocalSink(tmp_path), "_state/checkpoint.json")
    assert cp.seq == 0 and cp.pending is not None  # the object exists, the checkpoint does not know it yet
    sim.add_events(sim.projects()[0]["id"], 7)
    export(sim, tmp_path)
    assert_exactly_once(sim, LocalSink(tmp_path))


def test_two_exporters_at_once_on_one_destination(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=4, events=5_000, rate=100.0)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            exporter = Exporter(exporter_config(sim, tmp_path, max_events_per_object=700))
            exporter.chunk_events = 1_000
            for _ in range(4):
                exporter.run_cycle()
            exporter.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    quiesce(sim)
    export(sim, tmp_path)
    assert_exactly_once(sim, LocalSink(tmp_path))


def test_a_project_deleted_mid_cycle_vanishes_without_failing_the_cycle(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=3, events=600)
    victim = sim.projects()[0]["id"]

    class DeletingClient(AtlasClient):
        def discover(self) -> list[Scope]:
            found = super().discover()
            sim.delete_project(victim)  # gone after it was listed, before it is read
            return found

    config = exporter_config(sim, tmp_path)
    exporter = Exporter(config, client=DeletingClient(config))
    try:
        result = exporter.run_cycle()
        assert result.failures == []
        assert result.scopes == 4
        second = exporter.run_cycle()
        assert second.scopes == 3  # no longer polled
    finally:
        exporter.close()
    assert_exactly_once(sim, LocalSink(tmp_path))


@pytest.mark.parametrize("sse", ["AES256", "aws:kms"])
def test_server_side_encryption_is_requested_on_every_object(
    sse: str, start_sim: StartSim, moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    client = moto_server.client()
    bucket = f"sse-{sse.replace(':', '-').lower()}-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    sim = start_sim(projects_per_org=1, events=50)
    raw: dict[str, Any] = {"sse": sse}
    if sse == "aws:kms":
        raw["sse_kms_key_id"] = "alias/atlas-log-test"
    export(sim, f"s3://{bucket}/p", **raw)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith(".jsonl.gz") for k in keys)
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == sse
        if key.endswith(".jsonl.gz"):
            assert head["ContentType"] == "application/x-ndjson"


def test_include_and_exclude_by_name_and_id(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(orgs=2, projects_per_org=2, events=800)
    orgs, projects = sim.orgs(), sim.projects()
    keep_org = orgs[0]
    in_org = [p for p in projects if p["orgId"] == keep_org["id"]]
    dropped_project = in_org[0]
    export(
        sim,
        tmp_path,
        include_org=[keep_org["name"]],
        exclude_project=[dropped_project["id"]],
        org_events=False,
    )
    events, _, _ = stored_events(LocalSink(tmp_path))
    groups = {e.get("groupId") for e in events}
    assert groups == {p["id"] for p in in_org[1:]}
    # Project-feed events carry groupId and no orgId (org-feed events carry orgId).
    expected = {e["id"] for e in sim.ground_truth() if e.get("groupId") in groups and "orgId" not in e}
    assert sorted(e["id"] for e in events) == sorted(expected)
