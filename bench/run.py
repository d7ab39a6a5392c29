"""The benchmark: the exporter against two references, on the bundled simulator, into a folder and into S3.

    .venv/bin/python bench/run.py --quick     # a few minutes: small sizes, one or two repetitions (`make bench`)
    .venv/bin/python bench/run.py             # the full run behind docs/benchmarks.md (about 35 minutes)

Tools, each run as its own child process (CPU and peak RSS are the child's alone, from ``wait4``):

* ``exporter``: ``atlas-log run --once`` (the CLI, default settings but ``--concurrency``);
* ``baseline``: ``bench/baseline.py``, the original documentation's sequential design;
* ``dlt``: ``bench/dlt_ref.py``, dlt with one incremental resource per scope, JSON Lines to a folder.

The simulator (``bench/simulator_nodelay.py``: ``atlas-log simulate`` with TCP_NODELAY) is a separate process too;
so is SeaweedFS (``weed mini``) for the S3 runs. Scenarios: steady state, backfill at the rate limit, CPU per event
and peak RSS. Results go to ``bench/results/<name>.json`` and, as tables, into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    ATLAS_ENV,
    BIN,
    REPO,
    ChildRun,
    SimulatorProcess,
    api_requests,
    count_objects,
    run_child,
    seaweedfs,
    write_json,
)

CONCURRENCY = 64
TOOLS = ("exporter", "dlt", "baseline")
# Atlas's documented buckets: kind -> (capacity, refill per 60 s); the simulator scales and rounds them.
PROJECT_BUCKET = (300, 100)
ORG_BUCKET = (500, 250)


@dataclass(frozen=True)
class Plan:
    steady_projects: tuple[int, ...]
    steady_reps: dict[str, int]  # tool -> repetitions
    baseline_max_scopes: int  # above this many scopes the baseline reads only this many and is extrapolated
    dlt_max_projects: int  # dlt is skipped above this many projects (explained in the report)
    backfill_events: int
    backfill_scale: float
    reference_cap_factor: float  # references on the backfill are stopped after this times the lower bound
    rss_events: tuple[int, ...]
    rss_reps: dict[str, int]
    s3_steady_projects: int
    s3_events: int


FULL = Plan(
    steady_projects=(1000, 10000),
    steady_reps={"exporter": 5, "dlt": 3, "baseline": 2},
    baseline_max_scopes=1001,
    dlt_max_projects=1000,
    backfill_events=1_000_000,
    backfill_scale=0.3,
    reference_cap_factor=1.0,
    rss_events=(100_000, 1_000_000),
    rss_reps={"exporter": 3, "dlt": 1, "baseline": 1},
    s3_steady_projects=1000,
    s3_events=100_000,
)
QUICK = Plan(
    steady_projects=(200,),
    steady_reps={"exporter": 2, "dlt": 1, "baseline": 1},
    baseline_max_scopes=1001,
    dlt_max_projects=1000,
    backfill_events=100_000,
    backfill_scale=0.05,
    reference_cap_factor=1.5,
    rss_events=(10_000, 50_000),
    rss_reps={"exporter": 1, "dlt": 1, "baseline": 1},
    s3_steady_projects=100,
    s3_events=20_000,
)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- one tool run
class Runner:
    """Builds each tool's command line for a destination and runs it as a measured child."""

    def __init__(self, workdir: Path, s3: Any | None = None) -> None:
        self.workdir = workdir
        self.s3 = s3
        self.counter = 0

    def env(self) -> dict[str, str]:
        env = dict(ATLAS_ENV)
        if self.s3 is not None:
            env.update(self.s3.env())
        return env

    def output(self, name: str) -> str:
        if self.s3 is not None:
            bucket = "bench"
            client = self.s3.client()
            try:
                client.create_bucket(Bucket=bucket)
            except Exception as exc:
                if "BucketAlready" not in type(exc).__name__ and "BucketAlready" not in str(exc):
                    raise
            return f"s3://{bucket}/{name}/"
        path = self.workdir / "out" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return str(path)

    def command(self, tool: str, url: str, output: str, *, extra: list[str] | None = None) -> list[str]:
        py = str(BIN / "python")
        if tool == "exporter":
            cmd = [str(BIN / "atlas-log"), "run", "--once", "--atlas-url", url, "--output", output]
            cmd += ["--concurrency", str(CONCURRENCY), "--log-level", "INFO"]
            if self.s3 is not None:
                cmd += ["--s3-endpoint-url", self.s3.endpoint_url]
        elif tool == "baseline":
            cmd = [py, str(REPO / "bench" / "baseline.py"), "--atlas-url", url, "--output", output]
            cmd += ["--since-days", "30"]
            if self.s3 is not None:
                cmd += ["--s3-endpoint-url", self.s3.endpoint_url]
        elif tool == "dlt":
            pipelines = Path(output).parent / (Path(output).name + "-pipelines")
            cmd = [py, str(REPO / "bench" / "dlt_ref.py"), "--atlas-url", url, "--output", output]
            cmd += ["--pipelines-dir", str(pipelines), "--workers", str(CONCURRENCY), "--since-days", "30"]
        else:
            raise ValueError(tool)
        return cmd + (extra or [])

    def run(
        self, tool: str, sim: SimulatorProcess, output: str, *, extra: list[str] | None = None, timeout_s: float = 3600
    ) -> dict[str, Any]:
        self.counter += 1
        before = sim.stats()
        objects_before = count_objects(output, self.s3)
        child: ChildRun = run_child(
            self.command(tool, sim.url, output, extra=extra),
            self.env(),
            self.workdir / "logs" / f"{self.counter:03d}-{tool}.log",
            timeout_s=timeout_s,
        )
        after = sim.stats()
        req0, lim0 = api_requests(before)
        req1, lim1 = api_requests(after)
        reported: dict[str, Any] = {}
        if tool != "exporter":
            for line in reversed(child.stderr_tail.splitlines()):
                if line.startswith("{"):
                    try:
                        reported = json.loads(line)
                    except ValueError:
                        continue
                    break
        else:
            reported = dict(child.summary)
            if "duration_ms" in reported:
                reported["duration_s"] = reported.pop("duration_ms") / 1000.0
        finished = child.returncode == 0 and bool(reported)
        if not finished:
            log(f"{tool} did not finish cleanly (exit {child.returncode}): {child.stderr_tail[-600:]}")
        return {
            "tool": tool,
            "finished": finished,
            "returncode": child.returncode,
            "wall_s": child.wall_s,
            "cycle_s": reported.get("duration_s"),
            "cpu_s": child.cpu_s,
            "max_rss_mb": child.max_rss_mb,
            "requests": req1 - req0,
            "rate_limited_429": lim1 - lim0,
            "events": reported.get("events"),
            "objects": count_objects(output, self.s3) - objects_before,
        }


# --------------------------------------------------------------------------------------------- scenarios
def steady_state(
    plan: Plan, runner: Runner, projects: int, *, tools: tuple[str, ...], reps_cap: int = 99
) -> dict[str, Any]:
    """One cycle with a few new events in every project, 100 ms (+/- 50%) latency per request."""
    args = ["--projects-per-org", str(projects), "--events", str(2 * projects), "--history", "20d"]
    args += ["--latency-ms", "100", "--burst-second-events", "0", "--seed", "7"]
    result: dict[str, Any] = {"projects": projects, "scopes": projects + 1, "latency_ms": 100, "new_events_each": 3}
    with SimulatorProcess(args, runner.workdir / "sim") as sim:
        ids = sim.projects()
        for tool in tools:
            reps = min(reps_cap, plan.steady_reps[tool])
            extra: list[str] = []
            note = ""
            if tool == "dlt" and projects > plan.dlt_max_projects:
                result[tool] = {"skipped": f"dlt not run above {plan.dlt_max_projects} projects (time budget)"}
                continue
            if tool == "baseline" and projects + 1 > plan.baseline_max_scopes:
                extra = ["--max-scopes", str(plan.baseline_max_scopes)]
                note = f"read {plan.baseline_max_scopes} of {projects + 1} scopes; times extrapolated linearly"
                reps = 1
            output = runner.output(f"steady-{projects}-{tool}")
            log(f"steady {projects}: {tool} priming cycle")
            prime = runner.run(tool, sim, output, extra=extra + (["--prime"] if tool == "baseline" else []))
            runs = []
            for rep in range(reps):
                sim.add_events(ids, 3)
                log(f"steady {projects}: {tool} cycle {rep + 1}/{reps}")
                runs.append(runner.run(tool, sim, output, extra=extra))
            entry = summarize(runs)
            entry["priming"] = {"wall_s": prime["wall_s"], "requests": prime["requests"]}
            if note:
                factor = (projects + 1) / plan.baseline_max_scopes
                entry["note"] = note
                entry["extrapolated_from_scopes"] = plan.baseline_max_scopes
                for key in ("wall_s", "cycle_s"):
                    if entry.get(key) is not None:
                        entry[key] = entry[key] * factor
            result[tool] = entry
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in runs if r["finished"]]
    out: dict[str, Any] = {"reps": len(runs), "finished": len(done), "runs": runs}
    for key in ("wall_s", "cycle_s", "cpu_s", "max_rss_mb", "requests", "rate_limited_429", "events", "objects"):
        values = [float(r[key]) for r in done if r.get(key) is not None]
        out[key] = median(values)
    return out


def lower_bound_s(event_counts: dict[str, int], scale: float) -> tuple[float, int]:
    """What the buckets allow: the slowest scope's full pages beyond its burst, at its refill rate."""
    worst, pages_total = 0.0, 0
    for key, n in event_counts.items():
        pages = max(1, math.ceil(n / 500))
        pages_total += pages
        capacity, refill = ORG_BUCKET if key.startswith("org:") else PROJECT_BUCKET
        cap, per_minute = max(1, round(capacity * scale)), max(1, round(refill * scale))
        worst = max(worst, max(0, pages - cap) * 60.0 / per_minute)
    return worst, pages_total


def backfill(plan: Plan, runner: Runner, *, tools: tuple[str, ...]) -> dict[str, Any]:
    """One org, 20 projects, the whole history, against the simulator's rate limits scaled down."""
    events, scale = plan.backfill_events, plan.backfill_scale
    args = ["--projects-per-org", "20", "--events", str(events), "--history", "20d", "--seed", "11"]
    args += ["--rate-limit-scale", str(scale), "--burst-second-events", "0"]
    result: dict[str, Any] = {"events": events, "projects": 20, "rate_limit_scale": scale}
    bound: float | None = None
    for tool in tools:  # a fresh simulator (full buckets) per tool
        with SimulatorProcess(args, runner.workdir / "sim") as sim:
            output = runner.output(f"backfill-{tool}")
            timeout = 3600.0 if tool == "exporter" or bound is None else max(60.0, plan.reference_cap_factor * bound)
            log(f"backfill {events}: {tool} (timeout {timeout:.0f}s)")
            run = runner.run(tool, sim, output, timeout_s=timeout)
            if tool == "exporter":
                counts = exported_counts(Path(output))
                bound, pages = lower_bound_s(counts, scale)
                result["lower_bound_s"] = bound
                result["min_requests"] = pages + 2  # + GET /orgs and GET /groups
                result["exported_by_scope"] = counts
            if not run["finished"]:
                run["note"] = f"stopped after {timeout:.0f} s (the cap for references)"
            result[tool] = run
    return result


def exported_counts(output: Path) -> dict[str, int]:
    checkpoint = json.loads((output / "_state" / "checkpoint.json").read_text())
    return {key: int(state["events_total"]) for key, state in checkpoint["scopes"].items()}


def cpu_and_rss(plan: Plan, runner: Runner, *, tools: tuple[str, ...], sizes: tuple[int, ...]) -> dict[str, Any]:
    """A backfill with no latency and no rate limits: CPU per event and peak RSS of the tool's process.

    Each repetition is a first cycle into an empty destination (measured), then a second cycle with nothing new
    (the fixed cost: start-up, discovery, one request per scope); ``net_us_per_event`` subtracts it.
    """
    result: dict[str, Any] = {}
    for events in sizes:
        args = ["--projects-per-org", "20", "--events", str(events), "--history", "20d", "--seed", "13"]
        args += ["--rate-limit-scale", "0", "--burst-second-events", "0"]
        entry: dict[str, Any] = {"events": events}
        with SimulatorProcess(args, runner.workdir / "sim") as sim:
            for tool in tools:
                runs, fixed = [], []
                for rep in range(plan.rss_reps[tool]):
                    output = runner.output(f"cpu-{events}-{tool}-{rep}")
                    log(f"cpu/rss {events}: {tool} {rep + 1}/{plan.rss_reps[tool]}")
                    runs.append(runner.run(tool, sim, output))
                    fixed.append(runner.run(tool, sim, output))
                summary = summarize(runs)
                summary["fixed_cpu_s"] = median([r["cpu_s"] for r in fixed])
                n = summary.get("events") or events
                if summary.get("cpu_s") is not None and n:
                    summary["us_per_event"] = summary["cpu_s"] / n * 1e6
                    summary["net_us_per_event"] = (summary["cpu_s"] - (summary["fixed_cpu_s"] or 0.0)) / n * 1e6
                    if summary.get("wall_s"):
                        summary["events_per_s"] = n / summary["wall_s"]
                entry[tool] = summary
        result[str(events)] = entry
    return result


# --------------------------------------------------------------------------------------------- the report
def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def ratio(a: Any, b: Any) -> str:
    if not a or not b:
        return "n/a"
    return f"{float(b) / float(a):,.1f}x"


def render_markdown(data: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    add(f"Command: `{data['command']}` ({'quick' if data['quick'] else 'full'} run, {data['finished_at']}).")
    add(f"Machine: {data['machine']}. Exporter `--concurrency {CONCURRENCY}`; dlt with {CONCURRENCY} extract workers.")
    add("")
    add("### 1. Steady state: one cycle, 3 new events in every project, 100 ms +/- 50% latency per request")
    add("")
    add(
        "| destination | projects | tool | reps | wall s (median) | cycle s | requests | objects | events "
        "| exporter speed-up |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for dest, block in data["steady"].items():
        for scenario in block:
            exp = scenario.get("exporter", {})
            for tool in TOOLS:
                r = scenario.get(tool)
                if r is None:
                    continue
                if "skipped" in r:
                    add(f"| {dest} | {scenario['projects']:,} | {tool} | - | {r['skipped']} | | | | | |")
                    continue
                speed = "" if tool == "exporter" else ratio(exp.get("wall_s"), r.get("wall_s"))
                note = " (est.)" if r.get("note") else ""
                add(
                    f"| {dest} | {scenario['projects']:,} | {tool} | {r['reps']} | {fmt(r['wall_s'], 2)}{note} | "
                    f"{fmt(r['cycle_s'], 2)}{note} | {fmt(r['requests'], 0)} | {fmt(r['objects'], 0)} | "
                    f"{fmt(r['events'], 0)} | {speed} |"
                )
    add("")
    bf = data.get("backfill")
    if bf:
        add(
            f"### 2. Backfill: 1 org, {bf['projects']} projects, {bf['events']:,} events, "
            f"rate limits x{bf['rate_limit_scale']}"
        )
        add("")
        add(
            f"Lower bound the buckets allow: **{fmt(bf.get('lower_bound_s'))} s** (the slowest scope's pages beyond "
            f"its burst at its refill rate); at least {fmt(bf.get('min_requests'))} requests."
        )
        add("")
        add("| tool | finished | wall s | / lower bound | requests | 429s | events | objects | peak RSS MB |")
        add("|---|---|---|---|---|---|---|---|---|")
        for tool in TOOLS:
            r = bf.get(tool)
            if not r:
                continue
            over = (
                ratio(bf.get("lower_bound_s"), r["wall_s"])
                if r["finished"]
                else f">{ratio(bf.get('lower_bound_s'), r['wall_s'])}"
            )
            add(
                f"| {tool} | {'yes' if r['finished'] else 'no: ' + r.get('note', '')} | {fmt(r['wall_s'])} | {over} | "
                f"{fmt(r['requests'])} | {fmt(r['rate_limited_429'])} | {fmt(r['events'])} | {fmt(r['objects'])} | "
                f"{fmt(r['max_rss_mb'])} |"
            )
        add("")
    add("### 3 and 4. CPU per event and peak RSS: a backfill with no latency and no rate limits")
    add("")
    add(
        "| destination | events | tool | reps | wall s | events/s | CPU s | us/event | net us/event | "
        "peak RSS MB | exporter CPU advantage |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for dest, block in data["cpu"].items():
        for size, entry in block.items():
            exp = entry.get("exporter", {})
            for tool in TOOLS:
                r = entry.get(tool)
                if not r:
                    continue
                adv = "" if tool == "exporter" else ratio(exp.get("us_per_event"), r.get("us_per_event"))
                add(
                    f"| {dest} | {int(size):,} | {tool} | {r['reps']} | {fmt(r['wall_s'])} | "
                    f"{fmt(r.get('events_per_s'), 0)} | {fmt(r['cpu_s'], 2)} | {fmt(r.get('us_per_event'))} | "
                    f"{fmt(r.get('net_us_per_event'))} | {fmt(r['max_rss_mb'])} | {adv} |"
                )
    add("")
    return "\n".join(lines)


MARK_BEGIN = "<!-- bench:begin -->"
MARK_END = "<!-- bench:end -->"


def update_doc(doc: Path, table: str) -> None:
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{MARK_BEGIN}\n{MARK_END}\n"
    if MARK_BEGIN not in text:
        text += f"\n{MARK_BEGIN}\n{MARK_END}\n"
    head, _, rest = text.partition(MARK_BEGIN)
    _, _, tail = rest.partition(MARK_END)
    doc.write_text(f"{head}{MARK_BEGIN}\n{table}\n{MARK_END}{tail}")


# --------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repetitions (minutes)")
    parser.add_argument("--only", default="steady,backfill,cpu", help="comma list of scenarios")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma list of tools")
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS runs")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    tools = tuple(t for t in TOOLS if t in args.tools.split(","))
    if "dlt" in tools and importlib.util.find_spec("dlt") is None:
        log("dlt is not installed (pip install -e '.[bench]'): running without the dlt reference")
        tools = tuple(t for t in tools if t != "dlt")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    command = "bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    log(f"workdir {workdir}")
    data: dict[str, Any] = {
        "command": command.strip(),
        "quick": args.quick,
        "machine": f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}",
        "concurrency": CONCURRENCY,
        "steady": {},
        "cpu": {},
    }
    started = time.monotonic()
    local = Runner(workdir / "local")
    steps: list[tuple[str, Callable[[], None]]] = []
    if "steady" in only:

        def steady_local() -> None:
            data["steady"]["folder"] = [steady_state(plan, local, n, tools=tools) for n in plan.steady_projects]

        steps.append(("steady", steady_local))
    if "backfill" in only:
        steps.append(("backfill", lambda: data.__setitem__("backfill", backfill(plan, local, tools=tools))))
    if "cpu" in only:
        steps.append(
            (
                "cpu",
                lambda: data["cpu"].__setitem__("folder", cpu_and_rss(plan, local, tools=tools, sizes=plan.rss_events)),
            )
        )
    for name, step in steps:
        log(f"scenario {name}")
        step()
    if not args.no_s3 and ("steady" in only or "cpu" in only):
        s3_tools = tuple(t for t in tools if t != "dlt")  # dlt's S3 needs s3fs, whose botocore pin breaks boto3
        with seaweedfs(workdir / "seaweed") as server:
            s3 = Runner(workdir / "s3", server)
            if "steady" in only:
                log("scenario steady (S3)")
                data["steady"]["s3"] = [steady_state(plan, s3, plan.s3_steady_projects, tools=s3_tools, reps_cap=3)]
            if "cpu" in only:
                log("scenario cpu (S3)")
                data["cpu"]["s3"] = cpu_and_rss(plan, s3, tools=s3_tools, sizes=(plan.s3_events,))
    data["elapsed_s"] = time.monotonic() - started
    data["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    name = "quick" if args.quick else "full"
    write_json(REPO / "bench" / "results" / f"{name}.json", data)
    table = render_markdown(data)
    (REPO / "bench" / "results" / f"{name}.md").write_text(table + "\n")
    if not args.no_doc:
        update_doc(REPO / "docs" / "benchmarks.md", table)
    print(table)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
