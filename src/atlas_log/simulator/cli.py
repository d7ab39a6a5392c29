"""`atlas-log simulate`: run the Atlas simulator in the foreground; the first stdout line is its base URL."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import click

from atlas_log._time import parse_duration
from atlas_log.simulator.config import SimulatorConfig
from atlas_log.simulator.sim import Simulator


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _fraction(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"{value} must be between 0 and 1")
    return value


def _non_negative(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value < 0:
        raise click.BadParameter(f"{value} must be 0 or more")
    return value


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 = any free port.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same history.")
@click.option("--orgs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--projects-per-org", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--events", type=click.IntRange(min=0), default=1000, show_default=True, help="History size.")
@click.option("--history", default="30d", show_default=True, callback=_duration, help="History span, e.g. 30d.")
@click.option("--rate", type=float, default=0.0, callback=_non_negative, help="Live events per second.")
@click.option("--latency-ms", type=float, default=0.0, callback=_non_negative, help="Added latency (+/- 50%).")
@click.option("--fault-rate", type=float, default=0.0, callback=_fraction, help="Share of API calls that fail.")
@click.option("--rate-limit-scale", type=float, default=1.0, callback=_non_negative, help="0 = no limits.")
@click.option("--burst-second-events", type=click.IntRange(min=0), default=600, show_default=True)
@click.option("--late-fraction", type=float, default=0.0, callback=_fraction, help="Share of live events late.")
@click.option("--late-max", default="120s", show_default=True, callback=_duration, help="How late, at most.")
@click.option("--public-key", default="simulator-public", show_default=True)
@click.option("--private-key", default="simulator-private", show_default=True)
@click.option("--client-id", default="mdb_sa_id_simulator", show_default=True)
@click.option("--client-secret", default="mdb_sa_sk_simulator", show_default=True)
def simulate(
    host: str,
    port: int,
    seed: int,
    orgs: int,
    projects_per_org: int,
    events: int,
    history: float,
    rate: float,
    latency_ms: float,
    fault_rate: float,
    rate_limit_scale: float,
    burst_second_events: int,
    late_fraction: float,
    late_max: float,
    public_key: str,
    private_key: str,
    client_id: str,
    client_secret: str,
) -> None:
    """Serve a simulated MongoDB Atlas Admin API v2 until SIGINT or SIGTERM."""
    config = SimulatorConfig(
        host=host,
        port=port,
        seed=seed,
        orgs=orgs,
        projects_per_org=projects_per_org,
        events=events,
        history_s=history,
        rate=rate,
        latency_ms=latency_ms,
        fault_rate=fault_rate,
        rate_limit_scale=rate_limit_scale,
        burst_second_events=burst_second_events,
        late_fraction=late_fraction,
        late_max_s=late_max,
        public_key=public_key,
        private_key=private_key,
        client_id=client_id,
        client_secret=client_secret,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    sim = Simulator(config)
    try:
        sim.start()
    except OSError as exc:
        raise click.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(sim.base_url)
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    simulate()
