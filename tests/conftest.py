"""Shared fixtures: simulators on ephemeral ports, exporter configs, S3 servers, and the exactly-once oracle."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest_simulator import *  # noqa: F403  (the simulator's own fixtures)
from s3servers import S3Server, start_moto_server, start_seaweedfs

from atlas_log.config import Config, build_config
from atlas_log.simulator import Simulator, SimulatorConfig
from atlas_log.write_events import Sink, iter_objects

REPO = Path(__file__).resolve().parents[1]

StartSim = Callable[..., Simulator]


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Start simulators with the given SimulatorConfig fields; all are stopped after the test."""
    running: list[Simulator] = []

    def start(**fields: Any) -> Simulator:
        defaults: dict[str, Any] = {"seed": 11, "events": 300, "burst_second_events": 0, "history_s": 3 * 86400.0}
        sim = Simulator(SimulatorConfig(**{**defaults, **fields})).start()
        running.append(sim)
        return sim

    yield start
    for sim in running:
        sim.stop()


def sim_env(sim: Simulator, *, service_account: bool = False) -> dict[str, str]:
    return sim.credentials_env(service_account=service_account)


def exporter_config(sim: Simulator, output: str | Path, **raw: Any) -> Config:
    values: dict[str, Any] = {"atlas_url": sim.base_url, "output": str(output), "since": "30d", **raw}
    env = sim_env(sim, service_account=bool(values.pop("service_account", False)))
    return build_config(values, env=env)


def stored_events(sink: Sink) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    events: list[dict[str, Any]] = []
    heartbeats: list[dict[str, Any]] = []
    keys: list[str] = []
    for key, found, beats in iter_objects(sink):
        keys.append(key)
        events.extend(found)
        heartbeats.extend(beats)
        assert beats, f"object {key} has no heartbeat line"
    return events, heartbeats, keys


def assert_exactly_once(sim: Simulator, sink: Sink) -> tuple[int, int]:
    """Every event the simulator holds is in the destination exactly once, and nothing else is. Returns counts."""
    truth = {e["id"]: e for e in sim.ground_truth()}
    events, _beats, keys = stored_events(sink)
    counts = collections.Counter(e["id"] for e in events)
    doubled = {i: n for i, n in counts.items() if n > 1}
    lost = set(truth) - set(counts)
    extra = set(counts) - set(truth)
    assert not doubled, f"{len(doubled)} events stored more than once, e.g. {list(doubled)[:3]}"
    assert not lost, f"{len(lost)} of {len(truth)} events lost, e.g. {sorted(lost)[:3]}"
    assert not extra, f"{len(extra)} stored events Atlas does not have"
    by_id = {e["id"]: e for e in events}
    sample = next(iter(truth), None)
    if sample is not None:
        assert by_id[sample] == truth[sample], "a stored event differs from what Atlas returned"
    return len(events), len(keys)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, with a clean environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_ATLAS_", "ATLAS_LOG_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "atlas_log", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    server = start_moto_server()
    try:
        yield server
    finally:
        server.stop()


def s3_env(server: S3Server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
        "AWS_ENDPOINT_URL_S3": server.endpoint_url,
    }
