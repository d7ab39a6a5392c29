"""The long fault-injection run: many random schedules, each replayable from its seed (tests/faultlib.py).

    .venv/bin/python bench/soak.py --schedules 1000 --workers 2 --seed 20261204 --json soak.json
    .venv/bin/python bench/soak.py --hours 8                       # soak: new seeds until the time is up
    .venv/bin/python bench/soak.py --seed 1234567 --schedules 1    # replay one failing schedule

Schedule ``i`` of a run uses seed ``--seed + i``. Every worker process starts its own moto S3 server on
127.0.0.1 (an ephemeral port), so about 30% of the schedules write to S3 and the rest to a local folder.
Prints the figures (schedules, faults injected by kind, kills, concurrent starts, events, lost, duplicated) and
exits 1 if any schedule lost, duplicated or corrupted anything.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import faultlib  # noqa: E402  (lives in tests/, shared with the test suite)


def _worker(args: tuple[list[int], bool, bool]) -> dict[str, Any]:
    seeds, use_s3, progress = args
    import logging

    from s3servers import start_moto_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = start_moto_server() if use_s3 else None
    try:
        with tempfile.TemporaryDirectory(prefix="atlas-soak-") as workdir:
            figures = faultlib.run_schedules(seeds, Path(workdir), s3=server, progress=progress)
    finally:
        if server is not None:
            server.stop()
    result: dict[str, Any] = figures.to_json()
    result["faults_counter"] = dict(figures.faults)
    return result


def _merge(parts: list[dict[str, Any]]) -> faultlib.Figures:
    total = faultlib.Figures()
    for part in parts:
        figures = faultlib.Figures()
        for name in vars(figures):
            if name == "faults":
                figures.faults.update(part["faults_counter"])
            elif name in part:
                setattr(figures, name, part[name])
        total.add(figures)
    return total


def render(report: dict[str, Any]) -> str:
    """The figures as the Markdown table in docs/guarantees.md."""
    rows = [
        ("schedules", report["schedules"]),
        ("faults injected", report["faults_total"]),
        ("SIGKILLs of exporter processes", report["kills"]),
        ("in-process crashes at a sink write", report["in_process_crashes"]),
        ("SIGTERMs during a cycle", report["sigterms"]),
        ("concurrent starts (2-3 exporters at once)", report["concurrent_starts"]),
        ("exporter runs (threads and processes)", report["exporter_runs"]),
        ("objects checked", report["objects"]),
        ("events checked", report["events"]),
        ("**lost**", f"**{report['lost']}**"),
        ("**duplicated**", f"**{report['duplicated']}**"),
        ("stored but never in Atlas", report["extra"]),
        ("unreadable objects", report["unreadable_objects"]),
        ("failed schedules", len(report["failed_schedules"])),
        ("wall time", f"{report['seconds'] / 60:.0f} min ({report['workers']} workers)"),
    ]
    lines = ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    lines += ["| fault kind | injected |", "|---|---|"]
    lines += [f"| `{kind}` | {n} |" for kind, n in sorted(report["faults"].items())]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock, printed)")
    parser.add_argument("--workers", type=int, default=2, help="processes running schedules side by side")
    parser.add_argument("--hours", type=float, default=None, help="soak: keep drawing schedules this long")
    parser.add_argument("--batch", type=int, default=50, help="schedules per worker task (with --hours)")
    parser.add_argument("--no-s3", action="store_true", help="local folders only (no moto server)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--render", type=Path, default=None, help="print a saved --json report as Markdown")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    first = args.seed if args.seed is not None else int(time.time())
    print(f"soak: first seed {first}; replay one schedule with --seed N --schedules 1", flush=True)
    started = time.monotonic()
    parts: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(max(1, args.workers)) as pool:
        if args.hours is None:
            seeds = list(range(first, first + args.schedules))
            slices = [seeds[i :: args.workers] for i in range(args.workers)]
            tasks = [(s, not args.no_s3, not args.quiet) for s in slices if s]
            parts = pool.map(_worker, tasks)
        else:
            deadline = started + args.hours * 3600
            next_seed = first
            pending: list[Any] = []
            while time.monotonic() < deadline or pending:
                while time.monotonic() < deadline and len(pending) < args.workers:
                    batch = list(range(next_seed, next_seed + args.batch))
                    next_seed += args.batch
                    pending.append(pool.apply_async(_worker, ((batch, not args.no_s3, not args.quiet),)))
                done = [p for p in pending if p.ready()]
                for p in done:
                    parts.append(p.get())
                    pending.remove(p)
                    print(f"soak: {_merge(parts).summary()}", flush=True)
                time.sleep(1.0)
    total = _merge(parts)
    total.seconds = time.monotonic() - started
    report = total.to_json() | {"first_seed": first, "workers": args.workers, "command": " ".join(sys.argv)}
    print(total.summary())
    print(json.dumps(report["faults"], indent=1))
    for failure in total.failed_schedules[:20]:
        print(f"FAILED {failure}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if not args.quiet:
        print(render(report))
    return 1 if (total.lost or total.duplicated or total.extra or total.failed_schedules) else 0


if __name__ == "__main__":
    sys.exit(main())
