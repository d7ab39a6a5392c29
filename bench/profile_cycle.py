"""Profile one exporter cycle (a backfill with no latency and no rate limits) with cProfile.

    .venv/bin/python bench/profile_cycle.py [--events 100000] [--top 30]

The simulator runs as its own process, so the profile holds the exporter's work only: request handling, parsing,
checks, watermark, serialization, gzip and the write. Reader threads are profiled too (``threading.setprofile``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ATLAS_ENV, SimulatorProcess

from atlas_log.config import build_config
from atlas_log.get_latest import Exporter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime")
    args = parser.parse_args()
    os.environ.update(ATLAS_ENV)
    work = Path(tempfile.mkdtemp(prefix="atlas-profile-"))
    sim_args = ["--projects-per-org", "20", "--events", str(args.events), "--history", "20d"]
    sim_args += ["--rate-limit-scale", "0", "--burst-second-events", "0", "--seed", "13"]
    with SimulatorProcess(sim_args, work / "sim") as sim:
        config = build_config(
            {"atlas_url": sim.url, "output": str(work / "out"), "concurrency": args.concurrency, "since": "30d"}
        )
        exporter = Exporter(config)
        profiles: list[cProfile.Profile] = []
        lock = threading.Lock()

        def thread_profile(*_: object) -> None:
            profile = cProfile.Profile()
            with lock:
                profiles.append(profile)
            threading.setprofile(None)
            profile.enable()

        main_profile = cProfile.Profile()
        threading.setprofile(thread_profile)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        main_profile.enable()
        result = exporter.run_cycle()
        main_profile.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        threading.setprofile(None)
        exporter.close()
    for profile in profiles:
        profile.disable()
    stream = io.StringIO()
    stats = pstats.Stats(main_profile, stream=stream)
    for profile in profiles:
        stats.add(profile)
    stats.sort_stats(args.sort).print_stats(args.top)
    print(result.summary())
    print(f"cpu {cpu:.2f} s wall {wall:.2f} s: {cpu / max(1, result.events) * 1e6:.1f} us/event (profiled)")
    print(stream.getvalue())


if __name__ == "__main__":
    main()
