"""``atlas-log demo``: the exporter end to end on the bundled simulator, into a local folder.

It starts the simulator in-process with live arrivals, runs a few cycles of the real exporter against it, then
shows what landed and checks it against the simulator's ground truth.
"""

from __future__ import annotations

import collections
import logging
import threading
from pathlib import Path

import click

from atlas_log.config import build_config
from atlas_log.get_latest import Exporter
from atlas_log.simulator import Simulator, SimulatorConfig
from atlas_log.write_events import LocalSink, iter_objects

log = logging.getLogger("atlas_log")


def collect(sink: LocalSink) -> tuple[list[dict[str, object]], int, list[str]]:
    """Every event stored under the sink (heartbeats excluded), the heartbeat count, and the object keys."""
    events: list[dict[str, object]] = []
    heartbeats = 0
    keys = []
    for key, stored, beats in iter_objects(sink):
        keys.append(key)
        events.extend(stored)
        heartbeats += len(beats)
    return events, heartbeats, keys


def run_demo(folder: Path, *, cycles: int = 3, interval_s: float = 2.0) -> int:
    folder = folder.resolve()
    sim_config = SimulatorConfig(seed=7, orgs=1, projects_per_org=4, events=2_000, history_s=7 * 86400.0, rate=5.0)
    with Simulator(sim_config) as sim:
        click.echo(
            f"simulator: {sim.base_url} ({len(sim.orgs())} org, {len(sim.projects())} projects, "
            f"{len(sim.ground_truth())} events, +{sim_config.rate:g}/s live)"
        )
        config = build_config(
            {"atlas_url": sim.base_url, "output": str(folder), "since": "30d", "interval": f"{interval_s}s"},
            env=sim.credentials_env(),
        )
        click.echo(f"exporting into {folder}, {cycles} cycles {interval_s:g}s apart")
        exporter = Exporter(config)
        stop = threading.Event()
        try:
            for number in range(1, cycles + 1):
                result = exporter.run_cycle()
                click.echo(f"  cycle {number}: {result.summary()}")
                if number < cycles:
                    stop.wait(interval_s)
            # One last cycle after the live generator pauses, so the comparison below is exact.
            sim.config.rate = 0.0  # the live generator reads its rate every tick
            stop.wait(1.2)  # let the current second close, so nothing lands after the final read
            result = exporter.run_cycle()
            click.echo(f"  final: {result.summary()}")
        finally:
            exporter.close()
        truth = {e["id"] for e in sim.ground_truth()}
        sink = LocalSink(folder)
        events, heartbeats, keys = collect(sink)
    stored = collections.Counter(str(e["id"]) for e in events)
    lost = len(truth - stored.keys())
    doubled = sum(1 for n in stored.values() if n > 1)
    types = collections.Counter(str(e.get("eventTypeName")) for e in events)
    click.echo(f"\n{len(keys)} objects, {len(events)} events, {heartbeats} heartbeat lines in {folder}")
    for key in keys[:3]:
        click.echo(f"  {key}")
    if len(keys) > 3:
        click.echo(f"  ... {len(keys) - 3} more")
    click.echo("most common event types: " + ", ".join(f"{t} x{n}" for t, n in types.most_common(4)))
    click.echo(f"checked against the simulator: {len(truth)} events there, lost={lost} duplicated={doubled}")
    click.echo(f"checkpoint: {folder / '_state' / 'checkpoint.json'}")
    return 0 if lost == 0 and doubled == 0 else 1
