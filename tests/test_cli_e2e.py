"""The real CLI, in a subprocess, against the simulator: into a folder, moto's S3 server and SeaweedFS."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import REPO, StartSim, assert_exactly_once, run_cli, s3_env, sim_env
from s3servers import S3Server

from atlas_log.config import S3Location
from atlas_log.write_events import LocalSink, S3Sink, Sink

CRASH_AFTER_OBJECT_WRITE = """
import os, signal, sys
from atlas_log import write_events
for cls in (write_events.LocalSink, write_events.S3Sink):
    original = cls.put_new
    def put_new(self, key, body, _original=original):
        created = _original(self, key, body)
        os.kill(os.getpid(), signal.SIGKILL)  # dies between the object write and the checkpoint save
        return created
    cls.put_new = put_new
from atlas_log.cli import main
main(sys.argv[1:])
"""


def destination(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Sink, dict[str, str]]:
    if kind == "folder":
        return str(tmp_path / "out"), LocalSink(tmp_path / "out"), {}
    server: S3Server = request.getfixturevalue("moto_server" if kind == "moto" else "seaweed")
    bucket = f"atlas-{uuid.uuid4().hex[:12]}"
    client = server.client()
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/audit/atlas", S3Sink(S3Location(bucket, "audit/atlas/"), client=client), s3_env(server)


@pytest.mark.parametrize("kind", ["folder", "moto", "seaweedfs"])
def test_run_once_exports_everything_exactly_once(
    kind: str, start_sim: StartSim, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sim = start_sim(projects_per_org=3, events=1_500, burst_second_events=600)
    output, sink, env = destination(kind, tmp_path, request)
    args = ["run", "--once", "--output", output, "--atlas-url", sim.base_url, "--since", "7d"]
    first = run_cli(*args, env={**sim_env(sim), **env})
    assert first.returncode == 0, first.stderr
    assert "cycle done" in first.stderr
    sim.add_events(sim.projects()[1]["id"], 25)
    second = run_cli(*args, env={**sim_env(sim), **env})
    assert second.returncode == 0, second.stderr
    events, objects = assert_exactly_once(sim, sink)
    assert objects == 2 and events == len(sim.ground_truth())


@pytest.mark.parametrize("kind", ["folder", "seaweedfs"])
def test_kill_between_object_write_and_checkpoint_save(
    kind: str, start_sim: StartSim, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sim = start_sim(projects_per_org=2, events=800)
    output, sink, env = destination(kind, tmp_path, request)
    args = ["run", "--once", "--output", output, "--atlas-url", sim.base_url]
    killed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_OBJECT_WRITE, *args],
        env={**run_cli_env(), **sim_env(sim), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    sim.add_events(sim.projects()[0]["id"], 10)
    again = run_cli(*args, env={**sim_env(sim), **env})
    assert again.returncode == 0, again.stderr
    assert "adopting object" in again.stderr
    assert_exactly_once(sim, sink)


def run_cli_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_ATLAS_", "ATLAS_LOG_", "AWS_"))}


def test_python_m_get_latest_is_run(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=1, events=100)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "atlas_log.get_latest", "--once", "--output", str(out), "--atlas-url", sim.base_url],
        env={**run_cli_env(), **sim_env(sim)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert_exactly_once(sim, LocalSink(out))


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--interval", "0s"], {}, "--interval: '0s' must be greater than zero"),
        (["--interval", "soon"], {}, "is not a duration"),
        (["--atlas-url", "http://atlas.example.com"], {}, "plain http to a remote host"),
        (["--output", "s3://Bad_Bucket/x"], {}, "not a valid S3 bucket name"),
        ([], {"MONGODB_ATLAS_PRIVATE_API_KEY": ""}, "MONGODB_ATLAS_PRIVATE_API_KEY is not set"),
        (["--bogus"], {}, "No such option '--bogus'"),
        (["--since", "next tuesday"], {}, "--since 'next tuesday' is neither"),
    ],
)
def test_configuration_errors_exit_2_with_one_line_each(args: list[str], env: dict[str, str], expected: str) -> None:
    base = {"MONGODB_ATLAS_PUBLIC_API_KEY": "pub", "MONGODB_ATLAS_PRIVATE_API_KEY": "not-shown-secret"}
    proc = run_cli("run", "--once", *args, env={**base, **env})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert any(expected in line for line in lines), proc.stderr
    assert all(line.startswith("atlas-log: error:") for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr and "not-shown-secret" not in proc.stderr


def test_several_problems_are_reported_together() -> None:
    proc = run_cli("run", "--once", "--interval", "-5s", "--lookback", "x", env={})
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 3  # credentials, interval, lookback


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = run_cli("demo", "--output", str(tmp_path / "demo"), "--cycles", "2", "--interval", "0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lost=0 duplicated=0" in proc.stdout


def test_config_file_supplies_options_and_flags_win(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=1, events=120)
    out = tmp_path / "from-file"
    config = tmp_path / "atlas-log.toml"
    config.write_text(f'output = "{tmp_path / "ignored"}"\natlas-url = "{sim.base_url}"\nlookback = "2m"\n')
    proc = run_cli("run", "--once", "--config", str(config), "--output", str(out), env=sim_env(sim))
    assert proc.returncode == 0, proc.stderr
    assert_exactly_once(sim, LocalSink(out))
    assert not (tmp_path / "ignored").exists()


def test_config_file_with_an_unknown_key_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('outptu = "/tmp/x"\n')
    proc = run_cli("run", "--once", "--config", str(config), env={})
    assert proc.returncode == 2
    assert "unknown setting 'outptu'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
