"""`atlas-log status` reads the checkpoint, with no Atlas credentials, from a folder or S3; clear errors otherwise."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

from conftest import StartSim, exporter_config, run_cli, s3_env
from s3servers import S3Server

from atlas_log._time import parse_atlas_time, utcnow
from atlas_log.config import S3Location
from atlas_log.get_latest import Exporter
from atlas_log.status import build_status, format_age, render_table
from atlas_log.write_events import LocalSink, S3Sink, Sink


def export_once(sim: object, output: str, sink: Sink | None = None) -> None:
    exporter = Exporter(exporter_config(sim, output), sink=sink)  # type: ignore[arg-type]
    try:
        assert not exporter.run_cycle().failures
    finally:
        exporter.close()


def test_status_lists_every_scope_from_a_folder(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=3, events=300)
    export_once(sim, str(tmp_path))
    proc = run_cli("status", "--output", str(tmp_path))  # run_cli's environment has no Atlas credentials
    assert proc.returncode == 0, proc.stderr
    for project in sim.projects():
        assert project["id"] in proc.stdout and project["name"] in proc.stdout
    assert f"{len(sim.ground_truth())} events exported" in proc.stdout
    header = proc.stdout.splitlines()[1].split()
    assert header[:4] == ["kind", "id", "name", "watermark"] and "lag" in header


def test_status_json_from_s3(start_sim: StartSim, moto_server: S3Server) -> None:
    sim = start_sim(projects_per_org=2, events=200)
    bucket = f"status-{uuid.uuid4().hex[:12]}"
    client = moto_server.client()
    client.create_bucket(Bucket=bucket)
    export_once(sim, f"s3://{bucket}/atlas", S3Sink(S3Location(bucket, "atlas/"), client=client))
    proc = run_cli("status", "--output", f"s3://{bucket}/atlas/", "--json", env=s3_env(moto_server))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    scopes = data["scopes"]
    assert len(scopes) == len(sim.orgs()) + len(sim.projects())
    assert sum(s["events_total"] for s in scopes) == len(sim.ground_truth())
    assert all(s["lag_s"] is not None and 0 <= s["lag_s"] < 120 for s in scopes)
    assert all(s["last_heartbeat"] and s["watermark"] for s in scopes)
    assert data["checkpoints"][0]["seq"] == 1 and data["checkpoints"][0]["pending"] is None


def test_lag_is_now_minus_the_watermark(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=1, events=50)
    export_once(sim, str(tmp_path))
    now = utcnow() + timedelta(hours=2)
    row = build_status(LocalSink(tmp_path), now=now).scopes[0]
    assert row.watermark is not None and row.last_heartbeat is not None
    assert row.lag_s == int((now - parse_atlas_time(row.watermark)).total_seconds()) >= 7200
    assert row.heartbeat_age_s == int((now - parse_atlas_time(row.last_heartbeat)).total_seconds())
    table = render_table(build_status(LocalSink(tmp_path), now=now), terminal=False)
    assert row.id in table and format_age(row.lag_s) in table


def test_missing_checkpoint_is_one_line_exit_1(tmp_path: Path) -> None:
    proc = run_cli("status", "--output", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"atlas-log: error: no checkpoint at {tmp_path}/_state/checkpoint.json: nothing was exported here yet, "
        "or --output (or --shard) is not the one the exporter uses"
    ]


def test_damaged_checkpoint_is_one_line_exit_1(tmp_path: Path) -> None:
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state" / "checkpoint.json").write_text('{"format": "atlas-log-exporter/checkpoint/1", "seq": "x"')
    proc = run_cli("status", "--output", str(tmp_path))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is damaged" in lines[0] and "Traceback" not in proc.stderr


def test_missing_bucket_is_one_line_exit_1(moto_server: S3Server) -> None:
    proc = run_cli("status", "--output", "s3://no-such-bucket-4242/atlas/", env=s3_env(moto_server))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "the bucket does not exist" in lines[0], proc.stderr


def test_format_age() -> None:
    assert [format_age(s) for s in (None, 5, 192, 7500, 4 * 86400 + 3 * 3600)] == ["-", "5s", "3m12s", "2h05m", "4d03h"]
