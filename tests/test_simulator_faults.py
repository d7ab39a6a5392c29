"""Faults, rate limits, admin routes and the CLI, observed with a plain httpx client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest_simulator import ACCEPT, V2, SpecChecker, digest_client, small_config, spec_checker

from atlas_log.simulator import Fault, Simulator
from atlas_log.simulator.cli import simulate

__all__ = ["spec_checker"]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def faulty() -> Iterator[Simulator]:
    with Simulator(small_config(events=50, spike_s=0.3, rate_limit_scale=0)) as sim:
        yield sim


@pytest.mark.parametrize(
    ("fault", "status", "content_type"),
    [
        (Fault.HTTP_500, 500, "application/json"),
        (Fault.HTTP_502, 502, "text/plain"),
        (Fault.HTTP_503, 503, "application/json"),
        (Fault.HTTP_503_HTML, 503, "text/html"),
        (Fault.RATE_LIMITED, 429, "application/json"),
    ],
)
def test_status_faults(faulty: Simulator, fault: Fault, status: int, content_type: str) -> None:
    faulty.inject(fault, path_contains="/orgs")
    response = httpx.get(f"{faulty.base_url}{V2}/orgs", headers=ACCEPT)
    assert response.status_code == status
    assert response.headers["Content-Type"] == content_type
    if fault is Fault.RATE_LIMITED:
        assert response.headers["Retry-After"] == "1" and response.json()["errorCode"] == "RATE_LIMITED"
    if fault is Fault.HTTP_503_HTML:
        assert response.text.lstrip().startswith("<html>")
    assert httpx.get(f"{faulty.base_url}{V2}/orgs", headers=ACCEPT).status_code == 401  # one-shot


def test_connection_faults(faulty: Simulator) -> None:
    url = f"{faulty.base_url}{V2}/groups"
    faulty.inject(Fault.RESET)
    with pytest.raises(httpx.TransportError):
        httpx.get(url, headers=ACCEPT)
    faulty.inject(Fault.TRUNCATED)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url, headers=ACCEPT)
    faulty.inject(Fault.MALFORMED_JSON)
    response = httpx.get(url, headers=ACCEPT)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    faulty.inject(Fault.LATENCY_SPIKE)
    started = time.monotonic()
    assert httpx.get(url, headers=ACCEPT).status_code == 401
    assert time.monotonic() - started >= 0.3
    faults = faulty.stats()["faults"]
    assert {"RESET", "TRUNCATED", "MALFORMED_JSON", "LATENCY_SPIKE"} <= set(faults)


def test_injected_faults_are_fifo_and_respect_the_path_filter(faulty: Simulator) -> None:
    faulty.inject(Fault.HTTP_502, count=2, path_contains="/events")
    faulty.inject(Fault.HTTP_500)
    assert httpx.get(f"{faulty.base_url}{V2}/orgs", headers=ACCEPT).status_code == 500
    group = faulty.projects()[0]["id"]
    codes = [httpx.get(f"{faulty.base_url}{V2}/groups/{group}/events").status_code for _ in range(3)]
    assert codes == [502, 502, 401]


def test_fault_rate_one_faults_every_api_request() -> None:
    with Simulator(small_config(events=10, fault_rate=1.0)) as sim:
        for _ in range(20):
            try:
                response = httpx.get(f"{sim.base_url}{V2}/orgs", headers=ACCEPT)
            except httpx.TransportError:
                continue
            assert response.status_code in (200, 429, 500, 502, 503)
            if response.status_code == 200:
                with pytest.raises(json.JSONDecodeError):
                    response.json()
        assert sum(sim.stats()["faults"].values()) == 20


def test_rate_limit_buckets_answer_429_with_retry_after(spec_checker: SpecChecker) -> None:
    with Simulator(small_config(events=50, rate_limit_scale=0.01)) as sim:  # project events: 3 tokens, 1/min
        path = f"{V2}/groups/{sim.projects()[0]['id']}/events"
        with digest_client(sim) as client:
            answers = [client.get(path) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert {a.headers["RateLimit-Limit"] for a in answers} == {"3"}
        assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
        body = spec_checker.check("GET", path, answers[3])
        assert body["errorCode"] == "RATE_LIMITED" and body["parameters"][0] == path
        assert sim.stats()["rate_limited"] == 1


def test_admin_routes_drive_a_separate_process_simulator(faulty: Simulator) -> None:
    queued = httpx.post(f"{faulty.base_url}/__sim/faults", json={"fault": "HTTP_503", "count": 2})
    assert queued.status_code == 200
    assert [httpx.get(f"{faulty.base_url}{V2}/orgs").status_code for _ in range(2)] == [503, 503]
    events = httpx.get(f"{faulty.base_url}/__sim/events").json()["events"]
    assert [e["id"] for e in events] == [e["id"] for e in faulty.ground_truth()]
    bad = httpx.post(f"{faulty.base_url}/__sim/faults", json={"fault": "NOPE"})
    assert bad.status_code == 400


def test_cli_prints_base_url_first_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atlas_log.simulator", "--events", "30", "--history", "2d", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert len(httpx.get(f"{base_url}/__sim/events").json()["events"]) == 30 + 600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("args", [["--history", "3x"], ["--fault-rate", "2"], ["--port", "70000"], ["--rate", "-1"]])
def test_cli_rejects_bad_values_with_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 2
    assert "Invalid value" in result.output
