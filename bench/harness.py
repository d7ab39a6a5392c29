"""Processes for the benchmarks: the simulator, the S3 server, and a measured child process.

Everything listens on 127.0.0.1 only, and every process started here is stopped by the ``with`` block (or
``stop()``) that started it. The tools under test always run as their own child process, so their CPU time and
peak RSS (``os.wait4``) never include the simulator's or the harness's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ACCEPT = "application/vnd.atlas.2023-01-01+json"
PUBLIC_KEY = "simulator-public"
PRIVATE_KEY = "simulator-private"
ATLAS_ENV = {"MONGODB_ATLAS_PUBLIC_API_KEY": PUBLIC_KEY, "MONGODB_ATLAS_PRIVATE_API_KEY": PRIVATE_KEY}


# ------------------------------------------------------------------------------------------------ simulator
class SimulatorProcess:
    """``atlas-log simulate`` as a separate process; the admin routes drive it."""

    def __init__(self, args: Sequence[str], workdir: Path) -> None:
        self.args = list(args)
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout_s: float = 120.0) -> SimulatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        err = (self.workdir / "simulator.err").open("wb")
        self.proc = subprocess.Popen(
            [
                str(BIN / "python"),
                str(REPO / "bench" / "simulator_nodelay.py"),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        err.close()
        assert self.proc.stdout is not None
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0].startswith(b"http://"):
            self.stop()
            raise RuntimeError(f"the simulator did not start: {(self.workdir / 'simulator.err').read_text()[-2000:]}")
        self.url = line[0].decode().strip()
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin and API helpers (none of these spend rate-limit tokens but `projects`, before a run) --------
    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/__sim/stats", timeout=30).json())

    def projects(self) -> list[str]:
        """Every project id, through the API (one `GET /groups` token per 500 projects)."""
        ids: list[str] = []
        auth = httpx.DigestAuth(PUBLIC_KEY, PRIVATE_KEY)
        with httpx.Client(auth=auth, headers={"Accept": ACCEPT}, timeout=60) as client:
            page = 1
            while True:
                body = client.get(
                    f"{self.url}/api/atlas/v2/groups", params={"itemsPerPage": 500, "pageNum": page}
                ).json()
                ids.extend(str(p["id"]) for p in body["results"])
                if len(body["results"]) < 500:
                    return ids
                page += 1

    def add_events(self, scope_ids: Sequence[str], count: int, workers: int = 4) -> None:
        """``count`` new events (created now) in each scope, through ``POST /__sim/events``."""

        def post(chunk: Sequence[str]) -> None:
            with httpx.Client(timeout=60) as client:
                for scope_id in chunk:
                    client.post(f"{self.url}/__sim/events", json={"scope_id": scope_id, "count": count})

        chunks = [scope_ids[i::workers] for i in range(workers)]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(post, chunks))


def requests_total(stats: dict[str, Any]) -> int:
    return int(stats.get("requests_total", 0))


def api_requests(stats: dict[str, Any]) -> tuple[int, int]:
    """(API requests, 429 answers) from a stats snapshot, admin routes left out."""
    total = limited = 0
    for route, by_status in stats.get("requests", {}).items():
        if route == "admin":
            continue
        for status, count in by_status.items():
            total += int(count)
            if str(status) == "429":
                limited += int(count)
    return total, limited


# ----------------------------------------------------------------------------------------------- S3 server
@contextlib.contextmanager
def seaweedfs(workdir: Path) -> Iterator[Any]:
    """SeaweedFS (`weed mini`) on free 127.0.0.1 ports, with the tests' own launcher (tests/s3servers.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from s3servers import start_seaweedfs
    finally:
        sys.path.pop(0)
    server = start_seaweedfs(workdir)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- a measured child
@dataclass
class ChildRun:
    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float  # user + system of the child (and anything it waited for)
    max_rss_mb: float
    stderr_tail: str = ""
    summary: dict[str, int] = field(default_factory=dict)  # the exporter's `cycle done` line, when there is one


_SUMMARY = re.compile(r"cycle done ((?:\w+=\d+ ?)+)")


def run_child(argv: Sequence[str], env: dict[str, str], log_path: Path, timeout_s: float = 3600.0) -> ChildRun:
    """Run ``argv`` to completion; wall time, CPU and peak RSS from ``wait4`` (the child alone)."""
    full_env = {**os.environ, **env}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=err, stderr=err, env=full_env, start_new_session=True)
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(errors="replace")
    summary: dict[str, int] = {}
    for match in _SUMMARY.finditer(text):
        summary = {k: int(v) for k, v in (pair.split("=") for pair in match.group(1).split())}
    return ChildRun(
        argv=list(argv),
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024.0,
        stderr_tail=text[-1500:],
        summary=summary,
    )


def count_objects(output: str, s3: Any | None) -> int:
    """Exported objects (not the checkpoint or state) under a folder or an s3:// URL."""
    if output.startswith("s3://"):
        assert s3 is not None
        bucket, _, prefix = output[5:].partition("/")
        n = 0
        for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            n += sum(1 for item in page.get("Contents", []) if item["Key"].endswith(".gz"))
        return n
    return sum(1 for p in Path(output).rglob("*.gz") if "_state" not in p.parts and "_dlt" not in p.name)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
