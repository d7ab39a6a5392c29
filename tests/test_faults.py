"""Fault injection: random schedules of Atlas, destination, process and concurrency faults, then the oracle.

The seed is printed; replay a failure with ``ATLAS_LOG_FAULT_SEED=<seed> pytest tests/test_faults.py`` or
``python bench/soak.py --seed <seed> --schedules 1``. The long run (1,000+ schedules) is ``bench/soak.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, StartSim, assert_exactly_once, exporter_config, sim_env
from faultlib import (
    CHILD_ENV,
    HERE,
    FaultyS3Client,
    FaultySink,
    Figures,
    check_destination,
    fast_backoff,
    run_schedules,
)
from s3servers import S3Server

from atlas_log.config import S3Location
from atlas_log.errors import AtlasApiError, CheckpointError, DestinationError
from atlas_log.get_latest import Exporter, load_checkpoint
from atlas_log.simulator import Fault
from atlas_log.write_events import LocalSink, S3Sink

SCHEDULES = int(os.environ.get("ATLAS_LOG_FAULT_SCHEDULES", "5"))


@pytest.fixture
def quick_retries() -> Iterator[None]:
    with fast_backoff():
        yield


def test_random_fault_schedules_lose_and_duplicate_nothing(tmp_path: Path, moto_server: S3Server) -> None:
    """Random schedules (simulator, destination, kill, SIGTERM and concurrency faults): zero lost, zero doubled."""
    base = int(os.environ.get("ATLAS_LOG_FAULT_SEED") or random.randrange(1, 2**31))
    print(f"fault schedules: first seed {base} (replay: ATLAS_LOG_FAULT_SEED={base})")
    figures = run_schedules(list(range(base, base + SCHEDULES)), tmp_path, s3=moto_server)
    replay = f"replay with: .venv/bin/python bench/soak.py --seed <seed> --schedules 1 (first seed {base})"
    assert not figures.failed_schedules, f"{figures.summary()}\n{figures.failed_schedules}\n{replay}"
    assert figures.lost == figures.duplicated == figures.extra == figures.unreadable_objects == 0
    assert figures.events > 0 and sum(figures.faults.values()) > 0


def _export_until_clean(sim: Any, out: Path | str, sink: Any = None, **raw: Any) -> None:
    sim.clear_faults()
    sim.set_rate(0.0)
    time.sleep(1.05 - time.time() % 1.0)
    exporter = Exporter(exporter_config(sim, out, **raw), sink=sink)
    try:
        for _ in range(3):
            result = exporter.run_cycle()
            if not result.failures and not result.conflict:
                return
        raise AssertionError(f"catch-up kept failing: {result.failures}")
    finally:
        exporter.close()


def _child(sim: Any, out: Path, plan: dict[str, Any], *extra: str) -> subprocess.Popen[bytes]:
    args = ["run", "--output", str(out), "--atlas-url", sim.base_url, "--interval", "300ms"]
    args += ["--heartbeat-interval", "1s", "--metrics-port", "0", *extra]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_ATLAS_", "ATLAS_LOG_", "AWS_"))}
    env = {**base, **sim_env(sim), CHILD_ENV: json.dumps(plan)}
    return subprocess.Popen(
        [sys.executable, str(HERE), "child", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize(("write", "when"), [(2, "after"), (5, "after"), (8, "before")])
def test_sigkill_in_the_middle_of_a_multi_object_cycle(
    start_sim: StartSim, tmp_path: Path, write: int, when: str
) -> None:
    """SIGKILL after object 1 is committed and object 2 written but not committed (or before a later write)."""
    sim = start_sim(projects_per_org=2, events=650)
    out = tmp_path / "out"
    proc = _child(sim, out, {"kill_at": [write, when]}, "--max-events-per-object", "100")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    cp, _ = load_checkpoint(LocalSink(out), "_state/checkpoint.json")
    assert cp.pending is not None  # killed inside a commit: the next object's key is fixed, it is not committed
    assert cp.seq == (write - 1) // 3
    sim.add_events(sim.projects()[0]["id"], 9)
    _export_until_clean(sim, out, max_events_per_object=100)
    events, objects = assert_exactly_once(sim, LocalSink(out))
    assert objects >= 3 and events == len(sim.ground_truth())
    assert not check_destination(sim, LocalSink(out)).problems


def test_sigterm_during_a_cycle_stops_cleanly_and_loses_nothing(start_sim: StartSim, tmp_path: Path) -> None:
    """SIGTERM while a cycle reads: the process commits what it has, exits 0, and a restart completes the rest."""
    sim = start_sim(projects_per_org=3, events=3_000, latency_ms=40.0, rate=30.0)
    out = tmp_path / "out"
    proc = _child(sim, out, {}, "--max-events-per-object", "200", "--concurrency", "2")
    time.sleep(1.2)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err
    _export_until_clean(sim, out)
    assert_exactly_once(sim, LocalSink(out))
    assert not check_destination(sim, LocalSink(out)).problems


def test_s3_errors_slowdown_conflicts_412_and_timeouts_in_process(
    start_sim: StartSim, moto_server: S3Server, quick_retries: None
) -> None:
    """503 SlowDown, 409, 412 after an applied PUT, timeouts (applied or not): retried or resumed, never doubled."""
    sim = start_sim(projects_per_org=2, events=700, rate=40.0)
    bucket = f"faults-{random.getrandbits(40):x}"
    client = moto_server.client(max_attempts=1)
    client.create_bucket(Bucket=bucket)
    location = S3Location(bucket, "atlas/")
    figures = Figures()
    rng = random.Random(7)
    output = f"s3://{bucket}/atlas/"
    for round_ in range(8):
        sink = S3Sink(location, client=FaultyS3Client(client, rng, figures.faults, rate=0.35))
        exporter = Exporter(exporter_config(sim, output, max_events_per_object=150), sink=sink)
        try:
            for _ in range(2):
                with contextlib.suppress(CheckpointError, DestinationError, AtlasApiError):
                    exporter.run_cycle()
        finally:
            exporter.close()
        if round_ % 3 == 0:
            sim.add_events(sim.projects()[round_ % 2]["id"], 30)
    assert sum(figures.faults.values()) >= 8, figures.faults
    clean = S3Sink(location, client=client)
    _export_until_clean(sim, output, sink=clean)
    assert not check_destination(sim, clean).problems
    assert_exactly_once(sim, clean)


def test_three_exporters_at_once_with_a_faulty_folder_and_an_unreliable_atlas(
    start_sim: StartSim, tmp_path: Path, quick_retries: None
) -> None:
    """Three exporters start together on one folder whose writes fail and whose answers get lost; Atlas errs too."""
    sim = start_sim(projects_per_org=3, events=1_500, burst_second_events=520, rate=50.0, fault_rate=0.03)
    sim.inject(Fault.RATE_LIMITED, count=3, path_contains="/events")
    figures = Figures()
    crashes: list[str] = []

    def worker(seed: int) -> None:
        sink = FaultySink(LocalSink(tmp_path), random.Random(seed), figures.faults, rate=0.15)
        exporter = Exporter(exporter_config(sim, tmp_path, max_events_per_object=300, timeout="2s"), sink=sink)
        exporter.chunk_events = 400
        try:
            for _ in range(3):
                with contextlib.suppress(CheckpointError, DestinationError, AtlasApiError):
                    exporter.run_cycle()
        except Exception as exc:  # pragma: no cover - reported below
            crashes.append(repr(exc))
        finally:
            exporter.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not crashes
    _export_until_clean(sim, tmp_path)
    assert not check_destination(sim, LocalSink(tmp_path)).problems
    assert_exactly_once(sim, LocalSink(tmp_path))


class RacingFirstRun:
    """A sink on which another exporter completes a whole cycle between our checkpoint read and our listing."""

    def __init__(self, inner: LocalSink, other: Exporter) -> None:
        self.inner = inner
        self.other: Exporter | None = other

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list_keys(self, prefix: str) -> Iterator[str]:
        if self.other is not None:
            other, self.other = self.other, None
            assert not other.run_cycle().failures
            other.close()
        return self.inner.list_keys(prefix)


def test_two_first_runs_at_once_do_not_stop_each_other(start_sim: StartSim, tmp_path: Path) -> None:
    """Two exporters start on an empty destination; the slower one must not mistake the other's object for a lost
    checkpoint and stop for good."""
    from atlas_log.get_latest import run

    sim = start_sim(projects_per_org=2, events=300)
    config = exporter_config(sim, tmp_path, interval="200ms")
    other = Exporter(config)
    slow = Exporter(config, sink=RacingFirstRun(LocalSink(tmp_path), other))
    stop = threading.Event()
    status = run(config, exporter=slow, stop=stop, max_cycles=3)
    assert status == 0
    assert_exactly_once(sim, LocalSink(tmp_path))


def test_a_metrics_port_in_use_is_one_clear_line_not_a_traceback(start_sim: StartSim, tmp_path: Path) -> None:
    """A second exporter on the same host (the same default metrics port) must say what to fix."""
    import socket

    sim = start_sim(projects_per_org=1, events=10)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 (the exporter binds the metrics port on every interface)
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = subprocess.run(
            [sys.executable, "-m", "atlas_log", "run", "--output", str(tmp_path), "--atlas-url", sim.base_url,
             "--metrics-port", port],
            env={**{k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_ATLAS_", "ATLAS_LOG_"))},
                 **sim_env(sim)},
            capture_output=True, text=True, timeout=30, check=False, cwd=REPO,
        )  # fmt: skip
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert port in proc.stderr
