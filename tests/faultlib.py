"""The fault-injection harness: random schedules drawn from a seed, faulty destinations, kills, and the oracle.

One *schedule* is a small simulator (a few projects, a few hundred events, tiny intervals) and a list of rounds,
every choice drawn from ``random.Random(seed)`` so a failing seed replays (``bench/soak.py --seed S --schedules 1``).
Rounds combine:

* simulator faults: 500/502/503 JSON and HTML, 429 storms with ``Retry-After``, resets, truncated bodies, malformed
  JSON, latency spikes beyond the client timeout, live arrivals shifting pages, late-visible events, same-second
  bursts spanning pages, a project deleted mid-cycle, a key losing access to one project;
* destination faults: failed and timed-out writes (applied or not), S3 503 SlowDown, 409 ConditionalRequestConflict,
  412 on create-only and on the checkpoint compare-and-swap, a full disk, a read-only folder;
* process faults: in-process crashes at a chosen sink operation, SIGKILL of a real CLI process at a random instant or
  right before/after its n-th object or checkpoint write (so also between an object write and the checkpoint save,
  and in the middle of a multi-object cycle), SIGTERM during a cycle, restarts;
* concurrency: two or three exporters started at once on the same destination (threads, or processes).

The oracle (:func:`check_destination`), after a final clean catch-up: every event of the simulator's ground truth is
in the destination exactly once, nothing else is, every object is readable gzip JSON Lines ending in heartbeat lines,
and the checkpoint agrees with the objects (sequence, last object, per-scope counts and watermarks).

Run as a script (``python tests/faultlib.py child PLAN -- run ...``) it is the CLI with fault hooks: what the kill
rounds start in a subprocess.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import gzip
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from atlas_log import atlas_api
from atlas_log._time import utcnow
from atlas_log.config import Config, S3Location, build_config
from atlas_log.errors import (
    AtlasApiError,
    CheckpointConflict,
    CheckpointError,
    DestinationError,
)
from atlas_log.get_latest import Exporter, load_checkpoint
from atlas_log.simulator import Fault, Simulator, SimulatorConfig
from atlas_log.write_events import HEARTBEAT_TYPE, LocalSink, S3Sink, Sink

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
CP_KEY = "_state/checkpoint.json"
SIM_FAULTS = (
    Fault.HTTP_500,
    Fault.HTTP_502,
    Fault.HTTP_503,
    Fault.HTTP_503_HTML,
    Fault.RESET,
    Fault.TRUNCATED,
    Fault.MALFORMED_JSON,
    Fault.LATENCY_SPIKE,
)
ROUNDS = ("inproc", "inproc", "concurrent", "kill", "kill_at_op", "concurrent_procs", "sigterm")


class SimulatedCrash(BaseException):
    """An in-process stand-in for kill -9 at a sink operation: nothing after it runs."""


# ------------------------------------------------------------------------------------------------ figures
@dataclass
class Figures:
    """What a run did and found; added up over schedules."""

    schedules: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    kills: int = 0
    in_process_crashes: int = 0
    sigterms: int = 0
    concurrent_starts: int = 0
    exporter_runs: int = 0
    events: int = 0
    lost: int = 0
    duplicated: int = 0
    extra: int = 0
    unreadable_objects: int = 0
    objects: int = 0
    failed_schedules: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: Figures) -> None:
        for name in vars(self):
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, collections.Counter):
                mine.update(theirs)
            elif isinstance(mine, list):
                mine.extend(theirs)
            else:
                setattr(self, name, mine + theirs)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "faults"}
        out["faults"] = dict(sorted(self.faults.items()))
        out["faults_total"] = sum(self.faults.values())
        out["seconds"] = round(self.seconds, 1)
        return out

    def summary(self) -> str:
        return (
            f"schedules={self.schedules} faults={sum(self.faults.values())} kills={self.kills} "
            f"in_process_crashes={self.in_process_crashes} sigterms={self.sigterms} "
            f"concurrent_starts={self.concurrent_starts} exporter_runs={self.exporter_runs} objects={self.objects} "
            f"events={self.events} lost={self.lost} duplicated={self.duplicated} extra={self.extra} "
            f"unreadable={self.unreadable_objects} failed_schedules={len(self.failed_schedules)} "
            f"seconds={self.seconds:.0f}"
        )


# -------------------------------------------------------------------------------------------- fast retries
@contextlib.contextmanager
def fast_backoff(scale: float = 0.04) -> Iterator[None]:
    """Shrink the client's exponential backoff (not Retry-After) so schedules stay cheap; restored after."""
    original = atlas_api._backoff

    def quick(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
        return original(attempt, base_s * scale, cap_s * scale)

    atlas_api._backoff = quick
    try:
        yield
    finally:
        atlas_api._backoff = original


# -------------------------------------------------------------------------------------- destination faults
class FaultySink:
    """Wraps any Sink: failures before or after an operation is applied, spurious conflicts, and crash points."""

    KINDS = {
        "put_new": ("put_failed", "put_timeout_applied", "put_412_after_applied", "disk_full", "read_only_folder"),
        "save_versioned": ("cas_failed", "cas_timeout_applied", "cas_412", "cas_412_after_applied"),
        "get": ("read_failed",),
        "load_versioned": ("read_failed",),
    }

    def __init__(
        self,
        inner: Sink,
        rng: random.Random,
        faults: collections.Counter[str],
        *,
        rate: float = 0.0,
        crash_at: tuple[int, str] | None = None,
    ) -> None:
        self.inner = inner
        self.rng = rng
        self.faults = faults
        self.rate = rate
        self.crash_at = crash_at  # (n-th write operation, "before" | "after")
        self.writes = 0
        self.crashed = False

    def describe(self) -> str:
        return self.inner.describe()

    def list_keys(self, prefix: str) -> Iterator[str]:
        return self.inner.list_keys(prefix)

    def _draw(self, op: str) -> str | None:
        if self.rate and self.rng.random() < self.rate:
            kind = self.rng.choice(self.KINDS[op])
            self.faults[f"dest:{kind}"] += 1
            return kind
        return None

    def _crash_point(self, when: str) -> None:
        if self.crash_at is not None and self.crash_at == (self.writes, when):
            self.crashed = True
            raise SimulatedCrash(f"crash {when} write operation {self.writes}")

    def put_new(self, key: str, body: bytes) -> bool:
        self.writes += 1
        self._crash_point("before")
        kind = self._draw("put_new")
        if kind == "put_failed":
            raise DestinationError(f"injected: create of {key} failed (HTTP 500)")
        if kind == "disk_full":
            raise DestinationError(f"cannot write in {key}: {os.strerror(errno.ENOSPC)}")
        if kind == "read_only_folder":
            raise DestinationError(f"cannot write in {key}: {os.strerror(errno.EROFS)}")
        created = self.inner.put_new(key, body)
        self._crash_point("after")
        if kind == "put_timeout_applied":
            raise DestinationError(f"injected: create of {key} timed out (it was applied)")
        if kind == "put_412_after_applied":
            return False  # a retried PUT whose first attempt went through meets 412
        return created

    def save_versioned(self, key: str, body: bytes, expected: str | None) -> str:
        self.writes += 1
        self._crash_point("before")
        kind = self._draw("save_versioned")
        if kind == "cas_failed":
            raise DestinationError(f"injected: save of {key} failed (HTTP 500)")
        if kind == "cas_412":
            raise CheckpointConflict(f"injected: 412 on the compare-and-swap of {key}")
        version = self.inner.save_versioned(key, body, expected)
        self._crash_point("after")
        if kind == "cas_timeout_applied":
            raise DestinationError(f"injected: save of {key} timed out (it was applied)")
        if kind == "cas_412_after_applied":
            raise CheckpointConflict(f"injected: a retried compare-and-swap of {key} met 412 (it was applied)")
        return version

    def get(self, key: str) -> bytes | None:
        if self._draw("get"):
            raise DestinationError(f"injected: read of {key} failed")
        return self.inner.get(key)

    def load_versioned(self, key: str) -> tuple[bytes, str] | None:
        if self._draw("load_versioned"):
            raise DestinationError(f"injected: read of {key} failed")
        return self.inner.load_versioned(key)


class FaultyS3Client:
    """Wraps a boto3 S3 client: S3's own error answers, so S3Sink's real error handling runs."""

    def __init__(self, inner: Any, rng: random.Random, faults: collections.Counter[str], *, rate: float = 0.0) -> None:
        self._inner = inner
        self._rng = rng
        self._faults = faults
        self._rate = rate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @staticmethod
    def _error(code: str, status: int, operation: str) -> Exception:
        from botocore.exceptions import ClientError

        response: Any = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        error: Exception = ClientError(response, operation)
        return error

    def put_object(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ReadTimeoutError

        kind = None
        if self._rate and self._rng.random() < self._rate:
            kind = self._rng.choice(
                ("slowdown_503", "conflict_409", "timeout", "timeout_applied", "precondition_412_applied")
            )
            self._faults[f"s3:{kind}"] += 1
        if kind == "slowdown_503":
            raise self._error("SlowDown", 503, "PutObject")
        if kind == "conflict_409":
            raise self._error("ConditionalRequestConflict", 409, "PutObject")
        if kind == "timeout":
            raise ReadTimeoutError(endpoint_url="s3 (injected)")
        result = self._inner.put_object(**kwargs)
        if kind == "timeout_applied":
            raise ReadTimeoutError(endpoint_url="s3 (injected, applied)")
        if kind == "precondition_412_applied":
            raise self._error("PreconditionFailed", 412, "PutObject")
        return result

    def get_object(self, **kwargs: Any) -> Any:
        if self._rate and self._rng.random() < self._rate / 2:
            self._faults["s3:slowdown_503_read"] += 1
            raise self._error("SlowDown", 503, "GetObject")
        return self._inner.get_object(**kwargs)


# ---------------------------------------------------------------------------------------------- the oracle
@dataclass
class Outcome:
    events: int = 0
    objects: int = 0
    lost: int = 0
    duplicated: int = 0
    extra: int = 0
    unreadable: int = 0
    problems: list[str] = field(default_factory=list)


def check_destination(sim: Simulator, sink: Sink, cp_key: str = CP_KEY) -> Outcome:
    """Compare the destination with the simulator's ground truth; every discrepancy is named in ``problems``."""
    out = Outcome()
    truth = {e["id"]: e for e in sim.ground_truth()}
    allowed = {e["id"] for e in sim.all_events()}  # events of deleted or revoked projects may be stored (once)
    counts: collections.Counter[str] = collections.Counter()
    stored: dict[str, dict[str, Any]] = {}
    last_beat: dict[str, dict[str, Any]] = {}
    beat_counts: collections.Counter[str] = collections.Counter()
    seqs: list[tuple[int, str]] = []
    for key in sink.list_keys("dt="):
        if not key.endswith(".jsonl.gz"):
            out.problems.append(f"unexpected object {key}")
            continue
        out.objects += 1
        body = sink.get(key)
        try:
            lines = [json.loads(line) for line in gzip.decompress(body or b"").splitlines() if line]
        except (OSError, EOFError, ValueError) as exc:
            out.unreadable += 1
            out.problems.append(f"object {key} is unreadable: {exc}")
            continue
        beats = [r for r in lines if r.get("eventTypeName") == HEARTBEAT_TYPE]
        events = [r for r in lines if r.get("eventTypeName") != HEARTBEAT_TYPE]
        if not beats:
            out.problems.append(f"object {key} has no heartbeat line")
        if lines and lines[-1].get("eventTypeName") != HEARTBEAT_TYPE:
            out.problems.append(f"object {key} does not end with heartbeat lines")
        seq = int(key.rsplit("-", 1)[-1].split(".")[0])
        seqs.append((seq, key))
        for beat in beats:
            scope_key = f"{beat['scope']['kind']}:{beat['scope']['id']}"
            beat_counts[scope_key] += int(beat["count"])
            if scope_key not in last_beat or last_beat[scope_key]["seq"] < seq:
                last_beat[scope_key] = {"seq": seq, "watermark": beat["watermark"]}
        if sum(int(b["count"]) for b in beats) != len(events):
            out.problems.append(f"object {key}: heartbeat counts do not add up to its {len(events)} events")
        for event in events:
            counts[event["id"]] += 1
            stored[event["id"]] = event
    out.events = sum(counts.values())
    out.duplicated = sum(n - 1 for n in counts.values() if n > 1)
    lost = set(truth) - set(counts)
    extra = set(counts) - allowed
    out.lost, out.extra = len(lost), len(extra)
    if out.duplicated:
        out.problems.append(
            f"{out.duplicated} duplicate event lines, e.g. {[i for i, n in counts.items() if n > 1][:3]}"
        )
    if lost:
        out.problems.append(f"{len(lost)} of {len(truth)} events lost, e.g. {sorted(lost)[:3]}")
    if extra:
        out.problems.append(f"{len(extra)} stored events the simulator never had, e.g. {sorted(extra)[:3]}")
    changed = [i for i, e in truth.items() if i in stored and stored[i] != e]
    if changed:
        out.problems.append(f"{len(changed)} stored events differ from what Atlas served, e.g. {changed[:3]}")
    # The checkpoint agrees with the objects.
    try:
        cp, _version = load_checkpoint(sink, cp_key)
    except (CheckpointError, DestinationError) as exc:
        out.problems.append(f"checkpoint unreadable: {exc}")
        return out
    seqs.sort()
    if [s for s, _ in seqs] != list(range(1, len(seqs) + 1)):
        out.problems.append(f"object sequence numbers are not 1..{len(seqs)}: {[s for s, _ in seqs][:10]}")
    if cp.pending is not None:
        out.problems.append(f"checkpoint still has a pending object {cp.pending.key} after the catch-up")
    if cp.seq != len(seqs):
        out.problems.append(f"checkpoint seq {cp.seq} but {len(seqs)} objects")
    if seqs and cp.last_object != seqs[-1][1]:
        out.problems.append(f"checkpoint last_object {cp.last_object} but the last object is {seqs[-1][1]}")
    for scope_key, state in cp.scopes.items():
        if state.events_total != beat_counts[scope_key]:
            out.problems.append(
                f"{scope_key}: checkpoint counts {state.events_total} events, heartbeats {beat_counts[scope_key]}"
            )
        beat = last_beat.get(scope_key)
        if beat is None or beat["watermark"] != state.watermark.to_json():
            out.problems.append(f"{scope_key}: checkpoint watermark differs from its last heartbeat line")
    if set(beat_counts) - set(cp.scopes):
        out.problems.append(f"scopes in heartbeats but not in the checkpoint: {set(beat_counts) - set(cp.scopes)}")
    return out


# ------------------------------------------------------------------------------------------------ schedules
@dataclass
class Schedule:
    seed: int
    destination: str  # "folder" or "s3"
    projects: int
    events: int
    burst: int
    rate: float
    late_fraction: float
    max_events_per_object: int
    sink_fault_rate: float
    random_fault_rate: float
    rounds: list[str]
    delete_project: bool
    revoke_project: bool

    def describe(self) -> str:
        return (
            f"seed={self.seed} dest={self.destination} projects={self.projects} events={self.events} "
            f"burst={self.burst} rate={self.rate:g} rounds={','.join(self.rounds)}"
        )


def draw_schedule(seed: int, *, processes: bool = True, s3: bool = True) -> Schedule:
    rng = random.Random(seed)
    kinds = [r for r in ROUNDS if processes or r in ("inproc", "concurrent")]
    rounds = [rng.choice(kinds) for _ in range(rng.randint(2, 3))]
    return Schedule(
        seed=seed,
        destination="s3" if s3 and rng.random() < 0.3 else "folder",
        projects=rng.randint(1, 3),
        events=rng.choice((0, 50, 200, 400)),
        burst=rng.choice((0, 0, 520)),
        rate=rng.choice((0.0, 0.0, 20.0, 60.0)),
        late_fraction=rng.choice((0.0, 0.2)),
        max_events_per_object=rng.choice((100, 150, 50_000)),
        sink_fault_rate=rng.choice((0.0, 0.1, 0.2)),
        random_fault_rate=rng.choice((0.0, 0.0, 0.03)),
        rounds=rounds,
        delete_project=rng.random() < 0.15,
        revoke_project=rng.random() < 0.15,
    )


CHILD_ENV = "ATLAS_LOG_FAULT_PLAN"


class Harness:
    """Runs schedules in a work folder; ``s3`` is an S3 server (tests/s3servers.py) or None for folders only."""

    def __init__(self, workdir: Path, *, s3: Any = None, processes: bool = True) -> None:
        self.workdir = workdir
        self.s3 = s3
        self.processes = processes
        self.self_exits: list[str] = []

    # -- one schedule -----------------------------------------------------------------------------------------
    def run(self, seed: int) -> tuple[Figures, list[str]]:
        """Run one schedule; (figures, problems). Problems name what broke; an empty list is a pass."""
        sched = draw_schedule(seed, processes=self.processes, s3=self.s3 is not None)
        started = time.monotonic()
        figures = Figures(schedules=1)
        rng = random.Random(seed ^ 0x5EED)
        sim = Simulator(
            SimulatorConfig(
                seed=seed,
                orgs=1,
                projects_per_org=sched.projects,
                events=sched.events,
                history_s=86400.0,
                burst_second_events=sched.burst if sched.projects else 0,
                rate=sched.rate,
                late_fraction=sched.late_fraction,
                late_max_s=30.0,
                rate_limit_scale=0.0,
                spike_s=1.3,
                fault_rate=sched.random_fault_rate,
            )
        ).start()
        problems: list[str] = []
        try:
            output, sink_factory, env = self._destination(sched)
            for index, kind in enumerate(sched.rounds):
                self._perturb_sim(sim, sched, rng, figures, index)
                round_problems = getattr(self, f"_round_{kind}")(sim, sched, rng, figures, output, sink_factory, env)
                problems.extend(f"round {index} ({kind}): {p}" for p in round_problems)
            problems.extend(self.self_exits)
            self.self_exits.clear()
            problems.extend(self._catch_up(sim, sched, output, sink_factory))
            outcome = check_destination(sim, sink_factory(None))
        finally:
            sim.stop()
        problems.extend(outcome.problems)
        figures.events += outcome.events
        figures.objects += outcome.objects
        figures.lost += outcome.lost
        figures.duplicated += outcome.duplicated
        figures.extra += outcome.extra
        figures.unreadable_objects += outcome.unreadable
        for name, n in sim.stats()["faults"].items():
            figures.faults[f"sim:{name}"] += n
        figures.seconds = time.monotonic() - started
        if problems:
            figures.failed_schedules.append(f"{sched.describe()}: {problems[0]}")
        return figures, problems

    def _destination(self, sched: Schedule) -> tuple[str, Any, dict[str, str]]:
        if sched.destination == "s3":
            assert self.s3 is not None
            bucket = f"faults-{uuid.uuid4().hex[:16]}"
            client = self.s3.client(max_attempts=1)
            client.create_bucket(Bucket=bucket)
            location = S3Location(bucket, "atlas/")

            def s3_sink(wrap: Any) -> Sink:
                return S3Sink(location, client=wrap(client) if wrap else client)

            env = {
                "AWS_ACCESS_KEY_ID": self.s3.access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
                "AWS_DEFAULT_REGION": self.s3.region,
                "AWS_ENDPOINT_URL_S3": self.s3.endpoint_url,
            }
            return f"s3://{bucket}/atlas/", s3_sink, env
        folder = self.workdir / f"out-{sched.seed}-{uuid.uuid4().hex[:6]}"

        def local_sink(_wrap: Any) -> Sink:
            return LocalSink(folder)

        return str(folder), local_sink, {}

    def _config(self, sim: Simulator, sched: Schedule, output: str, env: dict[str, str] | None = None) -> Config:
        raw: dict[str, Any] = {
            "atlas_url": sim.base_url,
            "output": output,
            "since": "30d",
            "lookback": "2m",
            "timeout": "1s",
            "heartbeat_interval": "1s",
            "interval": "300ms",
            "concurrency": 4,
            "max_events_per_object": sched.max_events_per_object,
            "s3_endpoint_url": (env or {}).get("AWS_ENDPOINT_URL_S3"),
        }
        return build_config(raw, env=sim_env(sim, service_account=sched.seed % 2 == 1))

    def _sink(self, sched: Schedule, rng: random.Random, figures: Figures, factory: Any, **kw: Any) -> FaultySink:
        def wrap(client: Any) -> Any:
            return FaultyS3Client(client, rng, figures.faults, rate=sched.sink_fault_rate)

        inner = factory(wrap if sched.destination == "s3" else None)
        return FaultySink(inner, rng, figures.faults, rate=sched.sink_fault_rate, **kw)

    # -- between rounds: what Atlas does ---------------------------------------------------------------------
    def _perturb_sim(self, sim: Simulator, sched: Schedule, rng: random.Random, figures: Figures, index: int) -> None:
        scopes = [o["id"] for o in sim.orgs()] + [p["id"] for p in sim.projects()]
        for _ in range(rng.randint(0, 4)):
            fault = rng.choice(SIM_FAULTS)
            sim.inject(fault, count=rng.randint(1, 2))
        if rng.random() < 0.3:  # a 429 storm, each answer with Retry-After: 1
            sim.inject(Fault.RATE_LIMITED, count=rng.randint(2, 4), path_contains="/events")
        if rng.random() < 0.2:  # a token endpoint hiccup (service accounts)
            sim.inject(rng.choice((Fault.HTTP_503, Fault.RESET)), path_contains="/api/oauth/token")
        if scopes and rng.random() < 0.5:
            target = rng.choice(scopes)
            sim.add_events(target, rng.randint(1, 40))
            figures.faults["sim:new_events"] += 1
        if scopes and rng.random() < 0.4:  # late-visible: created inside the look-back, before what was read
            sim.add_events(
                rng.choice(scopes), rng.randint(1, 20), created=utcnow() - timedelta(seconds=rng.randint(1, 60))
            )
            figures.faults["sim:late_visible_events"] += 1
        if scopes and rng.random() < 0.2:  # a same-second burst spanning pages
            sim.add_events(rng.choice(scopes), rng.randint(501, 620), created=utcnow() - timedelta(seconds=2))
            figures.faults["sim:same_second_burst"] += 1

    def _mid_cycle(self, sim: Simulator, sched: Schedule, rng: random.Random, figures: Figures) -> threading.Thread:
        """A thread that deletes a project or revokes access to one while a cycle runs."""

        def act() -> None:
            time.sleep(rng.uniform(0.0, 0.3))
            projects = [p["id"] for p in sim.projects()]
            if len(projects) < 2:
                return
            if sched.delete_project:
                sim.delete_project(projects[-1])
                figures.faults["sim:project_deleted_mid_cycle"] += 1
                sched.delete_project = False
            elif sched.revoke_project:
                sim.revoke_access(projects[0])
                figures.faults["sim:access_revoked_mid_cycle"] += 1
                sched.revoke_project = False

        thread = threading.Thread(target=act, daemon=True)
        thread.start()
        return thread

    # -- rounds ----------------------------------------------------------------------------------------------------
    def _cycles(
        self,
        sim: Simulator,
        sched: Schedule,
        rng: random.Random,
        figures: Figures,
        output: str,
        factory: Any,
        env: dict[str, str],
        *,
        crash: bool,
    ) -> list[str]:
        """One in-process exporter, 1-3 cycles, a faulty sink, maybe a crash at a chosen write operation."""
        problems: list[str] = []
        crash_at = (rng.randint(1, 6), rng.choice(("before", "after"))) if crash else None
        sink = self._sink(sched, rng, figures, factory, crash_at=crash_at)
        exporter = Exporter(self._config(sim, sched, output, env), sink=sink)
        exporter.chunk_events = rng.choice((300, 10_000))
        figures.exporter_runs += 1
        try:
            for _ in range(rng.randint(1, 3)):
                try:
                    exporter.run_cycle()
                except (CheckpointError, DestinationError, AtlasApiError):
                    pass  # what run() logs and survives
                except SimulatedCrash:
                    figures.in_process_crashes += 1
                    break
                except Exception as exc:  # a bug: run() would die with a traceback
                    problems.append(f"unexpected {type(exc).__name__} from run_cycle: {exc}")
                    break
        finally:
            exporter.close()
        return problems

    def _round_inproc(
        self,
        sim: Simulator,
        sched: Schedule,
        rng: random.Random,
        figures: Figures,
        output: str,
        factory: Any,
        env: dict[str, str],
    ) -> list[str]:
        mid = self._mid_cycle(sim, sched, rng, figures)
        problems = self._cycles(sim, sched, rng, figures, output, factory, env, crash=rng.random() < 0.5)
        mid.join()
        return problems

    def _round_concurrent(
        self,
        sim: Simulator,
        sched: Schedule,
        rng: random.Random,
        figures: Figures,
        output: str,
        factory: Any,
        env: dict[str, str],
    ) -> list[str]:
        count = rng.randint(2, 3)
        figures.concurrent_starts += 1
        problems: list[str] = []
        seeds = [rng.getrandbits(32) for _ in range(count)]
        lock = threading.Lock()

        def worker(seed: int) -> None:
            found = self._cycles(sim, sched, random.Random(seed), figures, output, factory, env, crash=seed % 3 == 0)
            with lock:
                problems.extend(found)

        threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return problems

    def _spawn(
        self, sim: Simulator, sched: Schedule, output: str, env: dict[str, str], plan: dict[str, Any]
    ) -> subprocess.Popen[bytes]:
        args = [
            "run",
            "--output",
            output,
            "--atlas-url",
            sim.base_url,
            "--since",
            "30d",
            "--lookback",
            "2m",
            "--timeout",
            "1s",
            "--interval",
            "300ms",
            "--heartbeat-interval",
            "1s",
            "--max-events-per-object",
            str(sched.max_events_per_object),
            "--log-level",
            "INFO",
            "--metrics-port",
            "0",
        ]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_ATLAS_", "ATLAS_LOG_", "AWS_"))}
        full_env = {**base, **sim_env(sim, service_account=sched.seed % 2 == 1), **env, CHILD_ENV: json.dumps(plan)}
        return subprocess.Popen(
            [sys.executable, str(HERE), "child", *args],
            env=full_env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def _reap(self, proc: subprocess.Popen[bytes], figures: Figures, *, timeout: float) -> tuple[int, str]:
        try:
            _out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            figures.kills += 1
        text = err.decode("utf-8", "replace")
        if proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM) and "Traceback" not in text:
            # `run` polls forever: exiting by itself (not killed, not asked to stop) means it gave up.
            last = text.strip().splitlines()[-1:] or [""]
            self.self_exits.append(f"the exporter exited by itself with status {proc.returncode}: {last[0][:300]}")
        return proc.returncode, text

    def _round_kill(
        self,
        sim: Simulator,
        sched: Schedule,
        rng: random.Random,
        figures: Figures,
        output: str,
        factory: Any,
        env: dict[str, str],
    ) -> list[str]:
        """A real CLI process killed with SIGKILL at a random instant (or by the round's end), then restarted."""
        figures.exporter_runs += 1
        proc = self._spawn(sim, sched, output, env, {})
        time.sleep(rng.uniform(0.2, 2.0))
        proc.send_signal(signal.SIGKILL)
        return self._check_child(*self._reap(proc, figures, timeout=10), expect_kill=True)

    def _round_kill_at_op(
        self,
        sim: Simulator,
        sched: Schedule,
        rng: random.Random,
        figures: Figures,
        output: str,
        factory: Any,
        env: dict[str, str],
    ) -> list[str]:
        """SIGKILL right before or after the n-th object/checkpoint write (between object and commit, mid-cycle)."""
        figures.exporter_runs += 1
        plan = {"kill_at": [rng.randint(1, 6), rng.choice(("before", "after"))]}
        proc = self._spawn(sim, sched, output, env, plan)
        returncode, err = self._reap(proc, figures, timeout=4)
        return self._check_child(returncode, err, expect_kill=True)

    def _round_concurrent_procs(
        self,
        sim: Simulator,
        sched: Schedule,
        rng: random.Random,
        figures: Figures,
        output: str,
        factory: Any,
        env: dict[str, str],
    ) -> list[str]:
        """Two or three CLI processes started at once on one destination; each killed or stopped at some point."""
        figures.concurrent_starts += 1
        procs = []
        for _ in range(rng.randint(2, 3)):
            plan = {"kill_at": [rng.randint(1, 8), rng.choice(("before", "after"))]} if rng.random() < 0.5 else {}
            procs.append((self._spawn(sim, sched, output, env, plan), rng.uniform(0.3, 2.5)))
            figures.exporter_runs += 1
        problems: list[str] = []
        started = time.monotonic()
        for proc, lifetime in sorted(procs, key=lambda p: p[1]):
            time.sleep(max(0.0, lifetime - (time.monotonic() - started)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            problems.extend(self._check_child(*self._reap(proc, figures, timeout=10), expect_kill=True))
        return problems

    def _round_sigterm(
        self,
        sim: Simulator,
        sched: Schedule,
        rng: random.Random,
        figures: Figures,
        output: str,
        factory: Any,
        env: dict[str, str],
    ) -> list[str]:
        """SIGTERM during a cycle: the process finishes the object being committed and exits 0 within seconds."""
        figures.exporter_runs += 1
        proc = self._spawn(sim, sched, output, env, {})
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGTERM)
        figures.sigterms += 1
        returncode, err = self._reap(proc, figures, timeout=20)
        problems = self._check_child(returncode, err, expect_kill=False)
        if returncode == -signal.SIGKILL:
            problems.append("did not stop within 20 s of SIGTERM")
        elif returncode not in (0, -signal.SIGTERM):
            problems.append(f"exited {returncode} after SIGTERM: {err.strip().splitlines()[-1:]}")
        return problems

    @staticmethod
    def _check_child(returncode: int, err: str, *, expect_kill: bool) -> list[str]:
        if "Traceback" in err:
            tail = err[err.index("Traceback") :].strip().splitlines()
            return [f"traceback in the exporter's output (exit {returncode}): {' | '.join(tail[-4:])[:600]}"]
        return []

    # -- the end: a clean catch-up -----------------------------------------------------------------------------
    def _catch_up(self, sim: Simulator, sched: Schedule, output: str, factory: Any) -> list[str]:
        sim.clear_faults()
        sim.set_rate(0.0)
        time.sleep(1.05 - time.time() % 1.0)  # the current second closes: one more cycle reads everything
        exporter = Exporter(self._config(sim, sched, output), sink=factory(None))
        try:
            for _ in range(4):
                try:
                    result = exporter.run_cycle()
                except (CheckpointError, DestinationError, AtlasApiError) as exc:
                    return [f"catch-up cycle failed: {exc}"]
                if not result.failures and not result.conflict:
                    return []
            return [f"catch-up cycles kept failing: {result.failures}"]
        finally:
            exporter.close()


def sim_env(sim: Simulator, *, service_account: bool) -> dict[str, str]:
    return sim.credentials_env(service_account=service_account)


def run_schedules(
    seeds: list[int], workdir: Path, *, s3: Any = None, processes: bool = True, progress: bool = False
) -> Figures:
    """Run every seed's schedule; the figures add up, ``failed_schedules`` names each failing seed."""
    total = Figures()
    harness = Harness(workdir, s3=s3, processes=processes)
    quiet = logging.getLogger("atlas_log")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with fast_backoff():
            for n, seed in enumerate(seeds, 1):
                figures, problems = harness.run(seed)
                total.add(figures)
                if problems and progress:
                    print(f"FAILED seed={seed}: {problems[:3]}", file=sys.stderr, flush=True)
                if progress and n % 10 == 0:
                    print(f"[{n}/{len(seeds)}] {total.summary()}", file=sys.stderr, flush=True)
    finally:
        quiet.setLevel(level)
    return total


# ------------------------------------------------------------------------------------- the child process
def _child(argv: list[str]) -> None:
    """The CLI with fault hooks from $ATLAS_LOG_FAULT_PLAN: fast backoff, and SIGKILL at the n-th write."""
    plan = json.loads(os.environ.get(CHILD_ENV) or "{}")
    atlas_api._backoff = lambda attempt, base_s=0.5, cap_s=30.0: random.uniform(0, min(1.2, 0.02 * 2**attempt))
    kill_at = plan.get("kill_at")
    if kill_at:
        from atlas_log import write_events

        target, when = int(kill_at[0]), str(kill_at[1])
        counter = [0]
        lock = threading.Lock()

        def hook(method: Any) -> Any:
            def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
                with lock:
                    counter[0] += 1
                    n = counter[0]
                if n == target and when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                result = method(self, *args, **kwargs)
                if n == target and when == "after":
                    os.kill(os.getpid(), signal.SIGKILL)
                return result

            return wrapped

        for cls in (write_events.LocalSink, write_events.S3Sink):
            cls.put_new = hook(cls.put_new)  # type: ignore[method-assign]
            cls.save_versioned = hook(cls.save_versioned)  # type: ignore[method-assign]
    from atlas_log.cli import main

    main(argv)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "child":
        sys.path.insert(0, str(REPO / "src"))
        _child(sys.argv[2:])
