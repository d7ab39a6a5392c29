"""`atlas-log verify` passes a sound destination and catches every kind of damage, in a folder and in S3."""

from __future__ import annotations

import gzip
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import StartSim, exporter_config, run_cli, s3_env
from s3servers import S3Server

from atlas_log.config import S3Location
from atlas_log.get_latest import Exporter
from atlas_log.simulator import Simulator, SimulatorConfig
from atlas_log.verify import verify_destination
from atlas_log.write_events import HEARTBEAT_TYPE, LocalSink, S3Sink, Sink

CP = "_state/checkpoint.json"


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sound destination: three cycles, objects split small, so there are many objects and several heartbeats."""
    out = tmp_path_factory.mktemp("golden")
    sim = Simulator(SimulatorConfig(seed=5, events=400, projects_per_org=3, history_s=2 * 86400.0)).start()
    try:
        exporter = Exporter(exporter_config(sim, out, max_events_per_object=300))
        try:
            for round_ in range(3):
                if round_:
                    sim.add_events(sim.projects()[round_]["id"], 40)
                assert not exporter.run_cycle().failures
        finally:
            exporter.close()
    finally:
        sim.stop()
    return out


class Store:
    """Raw access to a destination's files, to damage them the way an operator or a broken tool might."""

    def __init__(self, sink: Sink, put: Callable[[str, bytes], None], delete: Callable[[str], None]) -> None:
        self.sink = sink
        self.put = put
        self.delete = delete

    def objects(self) -> list[str]:
        return [k for k in self.sink.list_keys("dt=") if k.endswith(".jsonl.gz")]

    def lines(self, key: str) -> list[bytes]:
        body = self.sink.get(key)
        assert body is not None
        return [line for line in gzip.decompress(body).split(b"\n") if line]

    def put_lines(self, key: str, lines: list[bytes]) -> None:
        self.put(key, gzip.compress(b"".join(line + b"\n" for line in lines)))


def folder_store(golden: Path, tmp_path: Path) -> tuple[Store, str]:
    root = tmp_path / "dest"
    shutil.copytree(golden, root)

    def put(key: str, body: bytes) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(body)

    return Store(LocalSink(root), put, lambda key: (root / key).unlink()), str(root)


def s3_store(golden: Path, server: S3Server) -> tuple[Store, str]:
    client = server.client()
    bucket = f"verify-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    prefix = "audit/atlas/"
    for path in sorted(golden.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            client.put_object(Bucket=bucket, Key=prefix + path.relative_to(golden).as_posix(), Body=path.read_bytes())

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket=bucket, Key=prefix + key, Body=body)

    def delete(key: str) -> None:
        client.delete_object(Bucket=bucket, Key=prefix + key)

    sink = S3Sink(S3Location(bucket, prefix), client=client)
    return Store(sink, put, delete), f"s3://{bucket}/{prefix}"


@pytest.fixture(params=["folder", "moto"])
def store(request: pytest.FixtureRequest, golden: Path, tmp_path: Path) -> tuple[Store, str]:
    if request.param == "folder":
        return folder_store(golden, tmp_path)
    return s3_store(golden, request.getfixturevalue("moto_server"))


# --------------------------------------------------------------------------------------------- the damage
def truncate_object(s: Store) -> str:
    key = s.objects()[1]
    body = s.sink.get(key)
    assert body is not None
    s.put(key, body[: len(body) // 2])
    return "not readable gzip"


def delete_object(s: Store) -> str:
    s.delete(s.objects()[1])
    return "is missing (deleted?)"


def duplicate_event_line(s: Store) -> str:
    first, third = s.objects()[0], s.objects()[2]
    event = next(line for line in s.lines(first) if HEARTBEAT_TYPE.encode() not in line)
    lines = s.lines(third)
    s.put_lines(third, [event, *lines])
    return "stored more than once"


def edit_checkpoint_watermark(s: Store) -> str:
    body = s.sink.get(CP)
    assert body is not None
    cp = json.loads(body)
    scope = next(iter(cp["scopes"].values()))
    scope["watermark"]["min_date"] = "2020-01-01T00:00:00Z"
    scope["watermark"]["last_ids"] = []
    s.put(CP, json.dumps(cp).encode())
    return "is not the one its last heartbeat"


def remove_heartbeat_lines(s: Store) -> str:
    key = s.objects()[1]
    s.put_lines(key, [line for line in s.lines(key) if HEARTBEAT_TYPE.encode() not in line])
    return "no heartbeat lines"


def remove_one_heartbeat_line(s: Store) -> str:
    key = max(s.objects(), key=lambda k: sum(HEARTBEAT_TYPE.encode() in line for line in s.lines(k)))
    lines = s.lines(key)
    beats = [i for i, line in enumerate(lines) if HEARTBEAT_TYPE.encode() in line]
    assert len(beats) > 1
    del lines[beats[0]]
    s.put_lines(key, lines)
    return "heartbeat"


def replace_with_plain_json(s: Store) -> str:
    key = s.objects()[0]
    s.put(key, b"".join(line + b"\n" for line in s.lines(key)))
    return "not readable gzip"


def drop_an_event_line(s: Store) -> str:
    key = s.objects()[0]
    lines = s.lines(key)
    s.put_lines(key, lines[1:])
    return "holds"


def stray_object_beyond_checkpoint(s: Store) -> str:
    last = s.objects()[-1]
    body = s.sink.get(last)
    assert body is not None
    seq = len(s.objects())
    s.put(last.replace(f"{seq:012d}", f"{seq + 2:012d}"), body)
    return "beyond the checkpoint"


def delete_checkpoint(s: Store) -> str:
    s.delete(CP)
    return "is missing but"


DAMAGE: list[Callable[[Store], str]] = [
    truncate_object,
    delete_object,
    duplicate_event_line,
    edit_checkpoint_watermark,
    remove_heartbeat_lines,
    remove_one_heartbeat_line,
    replace_with_plain_json,
    drop_an_event_line,
    stray_object_beyond_checkpoint,
    delete_checkpoint,
]


def test_a_sound_destination_passes(store: tuple[Store, str]) -> None:
    s, _where = store
    report = verify_destination(s.sink)
    assert report.ok, report.render()
    assert report.objects == len(s.objects()) >= 4
    assert report.checkpoints == 1 and report.events > 1_000 and report.scopes == 4


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_each_kind_of_damage_is_caught(store: tuple[Store, str], damage: Callable[[Store], str]) -> None:
    s, _where = store
    expected = damage(s)
    report = verify_destination(s.sink)
    assert not report.ok, f"{damage.__name__} was not detected:\n{report.render()}"
    assert any(expected in problem for problem in report.problems), report.render()
    assert "verify FAILED" in report.render()


def test_the_cli_exits_1_on_damage_and_0_when_sound(golden: Path, tmp_path: Path, moto_server: S3Server) -> None:
    s, where = s3_store(golden, moto_server)
    ok = run_cli("verify", "--output", where, env=s3_env(moto_server))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verify OK" in ok.stdout
    truncate_object(s)
    bad = run_cli("verify", "--output", where, "--json", env=s3_env(moto_server))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    result: dict[str, Any] = json.loads(bad.stdout)
    assert result["ok"] is False and result["problems"]


def test_a_pending_object_is_reported_as_pending_not_damage(start_sim: StartSim, tmp_path: Path) -> None:
    """A crash between the object write and the commit leaves a pending object: the next run adopts it."""

    class CrashAfterWrite(LocalSink):
        def put_new(self, key: str, body: bytes) -> bool:
            super().put_new(key, body)
            raise KeyboardInterrupt("crash between the object write and the checkpoint save")

    sim = start_sim(projects_per_org=2, events=200)
    config = exporter_config(sim, tmp_path)
    exporter = Exporter(config)
    exporter.run_cycle()
    exporter.close()
    sim.add_events(sim.projects()[0]["id"], 30)
    crashing = Exporter(config, sink=CrashAfterWrite(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        crashing.run_cycle()
    crashing.close()
    report = verify_destination(LocalSink(tmp_path))
    assert report.ok, report.render()
    assert any("pending, will be adopted" in note for note in report.notes), report.render()
    again = Exporter(config)
    again.run_cycle()
    again.close()
    after = verify_destination(LocalSink(tmp_path))
    assert after.ok and not after.notes, after.render()


def test_nothing_to_verify_is_an_error_not_a_success(tmp_path: Path) -> None:
    proc = run_cli("verify", "--output", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("atlas-log: error: nothing to verify")
