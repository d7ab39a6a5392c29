"""Metrics scraped over HTTP during real runs, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import REPO, StartSim, assert_exactly_once, exporter_config, sim_env
from prometheus_client.parser import text_string_to_metric_families

from atlas_log.get_latest import Exporter, load_checkpoint
from atlas_log.metrics import Metrics
from atlas_log.write_events import LocalSink


def scrape(port: int) -> dict[str, float]:
    """Every sample as `name{label="v",...}` -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_metrics_count_stored_events_requests_and_lag(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=2, events=700)
    metrics = Metrics()
    port = metrics.serve(0, host="127.0.0.1")
    exporter = Exporter(exporter_config(sim, tmp_path), metrics=metrics)
    try:
        exporter.run_cycle()
        exporter.run_cycle()  # nothing new: the counters must not move
    finally:
        exporter.close()
    stored, _ = assert_exactly_once(sim, LocalSink(tmp_path))
    values = scrape(port)
    exported = sum(v for k, v in values.items() if k.startswith("atlas_log_exporter_events_exported_total"))
    assert exported == stored
    assert values['atlas_log_exporter_events_exported_total{scope_kind="project"}'] > 0
    assert values["atlas_log_exporter_objects_written_total"] == 1
    assert values['atlas_log_exporter_cycles_total{outcome="ok"}'] == 2
    assert values["atlas_log_exporter_last_success_timestamp_seconds"] > time.time() - 60
    requests = sum(v for k, v in values.items() if k.startswith("atlas_log_exporter_atlas_requests_total"))
    assert requests == exporter.client.requests
    assert values['atlas_log_exporter_atlas_requests_total{route="group_events",status="200"}'] >= 4
    cp, _ = load_checkpoint(LocalSink(tmp_path), "_state/checkpoint.json")
    lags = {k: v for k, v in values.items() if k.startswith("atlas_log_exporter_scope_lag_seconds")}
    assert len(lags) == len(cp.scopes) == 3
    assert all(0 <= v < 120 for v in lags.values())


def test_run_loop_serves_metrics_and_stops_cleanly_on_sigterm(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=1, events=200, rate=20.0)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_ATLAS_", "ATLAS_LOG_", "AWS_"))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atlas_log",
            "run",
            "--output",
            str(out),
            "--atlas-url",
            sim.base_url,
            "--interval",
            "1s",
            "--metrics-port",
            "0",
        ],
        env={**env, **sim_env(sim)},
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stderr is not None
        port = None
        cycles = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and cycles < 2:
            line = proc.stderr.readline()
            record = json.loads(line)  # off a terminal, every log line is JSON
            match = re.search(r"metrics on http://[^:]+:(\d+)/metrics", record["message"])
            if match:
                port = int(match.group(1))
            cycles += record["message"].startswith("cycle done")
        assert port is not None and cycles == 2
        values = scrape(port)
        assert values['atlas_log_exporter_cycles_total{outcome="ok"}'] >= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    sim.set_rate(0.0)
    time.sleep(1.2)
    exporter = Exporter(exporter_config(sim, out))
    try:
        exporter.run_cycle()
    finally:
        exporter.close()
    assert_exactly_once(sim, LocalSink(out))
