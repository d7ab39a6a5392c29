"""Throughput of the simulator: one client reads a project feed in full 500-event pages.

python -m atlas_log.simulator.bench [--events 1000000] [--projects 20] [--pages 200]
"""

from __future__ import annotations

import argparse
import time

import httpx

from atlas_log.simulator.config import SimulatorConfig
from atlas_log.simulator.sim import Simulator

ACCEPT = "application/vnd.atlas.2023-01-01+json"


def run(events: int, projects: int, max_pages: int) -> dict[str, float]:
    config = SimulatorConfig(events=events, projects_per_org=projects, rate_limit_scale=0.0, burst_second_events=0)
    built = time.perf_counter()
    sim = Simulator(config)
    build_s = time.perf_counter() - built
    with sim:
        group_id = sim.projects()[0]["id"]
        auth = httpx.DigestAuth(config.public_key, config.private_key)
        with httpx.Client(auth=auth, headers={"Accept": ACCEPT}, timeout=30.0) as client:
            url: str | None = f"{sim.base_url}/api/atlas/v2/groups/{group_id}/events?itemsPerPage=500"
            served = pages = 0
            started = time.perf_counter()
            while url and pages < max_pages:
                response = client.get(url)
                response.raise_for_status()
                body = response.json()
                served += len(body["results"])
                pages += 1
                url = next((link["href"] for link in body["links"] if link["rel"] == "next"), None)
            elapsed = time.perf_counter() - started
    return {
        "build_s": build_s,
        "pages": pages,
        "events": served,
        "seconds": elapsed,
        "events_per_s": served / elapsed if elapsed else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="history size (all scopes)")
    parser.add_argument("--projects", type=int, default=20, help="projects in the one organization")
    parser.add_argument("--pages", type=int, default=200, help="stop after this many pages")
    args = parser.parse_args()
    result = run(args.events, args.projects, args.pages)
    print(
        f"history {args.events} events / {args.projects} projects built in {result['build_s']:.1f} s; "
        f"served {result['events']:.0f} events in {result['pages']:.0f} pages of 500 in {result['seconds']:.2f} s "
        f"= {result['events_per_s']:,.0f} events/s"
    )


if __name__ == "__main__":
    main()
