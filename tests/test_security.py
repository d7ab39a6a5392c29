"""Security: secrets never leak, TLS is always verified, and the documented IAM policy is exactly what is used."""

from __future__ import annotations

import datetime as dt
import fnmatch
import gzip
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, StartSim, exporter_config, run_cli, sim_env
from faultlib import CHILD_ENV, HERE
from s3servers import S3Server

from atlas_log.config import S3Location
from atlas_log.errors import AtlasLogError
from atlas_log.get_latest import Exporter
from atlas_log.simulator import Fault, Simulator, SimulatorConfig
from atlas_log.simulator.server import SimulatorServer
from atlas_log.write_events import LocalSink, S3Sink

SECRETS = {
    "private_key": "privkey-RECOGNISABLE-5f2e9d01",
    "client_secret": "mdb_sa_sk_RECOGNISABLE-77c1b3e4",
}
DOCS = REPO / "docs" / "security.md"


# ----------------------------------------------------------------------------------------------- no secret leaks
def _faulty_sim(start_sim: StartSim) -> Simulator:
    sim = start_sim(
        projects_per_org=3,
        events=400,
        rate=20.0,
        public_key="pubkey-recognisable",
        private_key=SECRETS["private_key"],
        client_id="mdb_sa_id_recognisable",
        client_secret=SECRETS["client_secret"],
    )
    # A 401 on a valid token makes the client renew it: several tokens get issued.
    sim.inject_response(401, '{"detail": "expired", "errorCode": "USER_UNAUTHORIZED"}', path_contains="/groups/")
    sim.inject(Fault.HTTP_503, path_contains="/api/oauth/token")
    sim.inject(Fault.RESET, path_contains="/api/oauth/token")
    for fault in (Fault.HTTP_503_HTML, Fault.MALFORMED_JSON, Fault.TRUNCATED, Fault.HTTP_500, Fault.RATE_LIMITED):
        sim.inject(fault)
    sim.revoke_access(sim.projects()[2]["id"])  # one scope answers 401 NOT_IN_GROUP every cycle
    return sim


def _run_loop_and_scrape(sim: Simulator, out: Path, env: dict[str, str], seconds: float) -> tuple[str, str]:
    """`atlas-log run` (DEBUG logs, metrics on an ephemeral port) for a while, then SIGTERM. (stderr, /metrics)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_ATLAS_", "ATLAS_LOG_", "AWS_"))}
    args = ["run", "--output", str(out), "--atlas-url", sim.base_url, "--interval", "400ms", "--log-level", "DEBUG"]
    args += ["--heartbeat-interval", "1s", "--metrics-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "child", *args],
        env={**base, **env, CHILD_ENV: "{}"},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    metrics = ""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.3)
        found = [m for line in list(lines) for m in re.findall(r"metrics on http://[^:]+:(\d+)/metrics", line)]
        if found and sum("cycle done" in line for line in list(lines)) >= 2:
            with urllib.request.urlopen(f"http://127.0.0.1:{found[0]}/metrics", timeout=5) as resp:
                metrics = resp.read().decode()
            break
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)
    reader.join(timeout=5)
    return "".join(lines) + stdout, metrics


def _every_object(out: Path) -> str:
    sink = LocalSink(out)
    text = [gzip.decompress(sink.get(k) or b"").decode() for k in sink.list_keys("dt=")]
    return "\n".join([*text, (out / "_state" / "checkpoint.json").read_text()])


def test_secrets_and_tokens_never_appear_in_logs_errors_metrics_or_objects(start_sim: StartSim, tmp_path: Path) -> None:
    sim = _faulty_sim(start_sim)
    found: list[str] = []
    sa_logs, metrics = _run_loop_and_scrape(sim, tmp_path / "sa", sim_env(sim, service_account=True), 15)
    found += [sa_logs, metrics, _every_object(tmp_path / "sa")]
    for fault in (Fault.HTTP_503_HTML, Fault.RESET, Fault.RATE_LIMITED):
        sim.inject(fault)
    key = run_cli("run", "--once", "--output", str(tmp_path / "key"), "--atlas-url", sim.base_url, "--log-level",
                  "DEBUG", env=sim_env(sim))  # fmt: skip
    found += [key.stdout, key.stderr, _every_object(tmp_path / "key")]
    # Wrong secrets: the error messages (CLI and exceptions) name the variables, never the values.
    for env in (
        {**sim_env(sim, service_account=True), "MONGODB_ATLAS_CLIENT_SECRET": SECRETS["client_secret"] + "-old"},
        {**sim_env(sim), "MONGODB_ATLAS_PRIVATE_API_KEY": SECRETS["private_key"] + "-old"},
    ):
        bad = run_cli("run", "--once", "--output", str(tmp_path / "bad"), "--atlas-url", sim.base_url, env=env)
        assert bad.returncode == 1, bad.stderr
        found += [bad.stdout, bad.stderr]
    for service_account in (True, False):
        config = exporter_config(sim, tmp_path / "inproc", service_account=service_account)
        exporter = Exporter(config)
        try:
            sim.inject_response(401, '{"detail": "no", "errorCode": "USER_UNAUTHORIZED"}', count=20)
            exporter.run_cycle()
        except AtlasLogError as exc:
            found += [str(exc), repr(exc)]
        finally:
            exporter.close()
        found += [repr(config), str(config), repr(exporter.client.__dict__)]
    tokens = sim.issued_tokens()
    assert len(tokens) >= 2 and "cycle done" in sa_logs and "cycle done" in key.stderr
    haystack = "\n".join(found)
    for name, secret in [*SECRETS.items(), *(("token", t) for t in tokens)]:
        assert secret not in haystack, f"the {name} leaked"
        assert secret[4:-4] not in haystack, f"part of the {name} leaked"
    if not metrics:
        pytest.skip("no /metrics endpoint answered; logs, errors and objects were checked")


# ---------------------------------------------------------------------------------------------------------- TLS
def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atlas-log test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
def tls_sim(tmp_path: Path) -> Any:
    """The simulator behind https on 127.0.0.1 with a certificate from a private CA."""
    ca, cert, key = _certificates(tmp_path)
    sim = Simulator(SimulatorConfig(seed=5, projects_per_org=1, events=60, burst_second_events=0, history_s=86400.0))
    server = SimulatorServer(("127.0.0.1", 0), sim.app)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    sim.app.base_url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield sim, ca
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("service_account", [False, True])
def test_tls_is_verified_by_default_and_ca_bundle_adds_a_private_ca(
    tls_sim: Any, tmp_path: Path, service_account: bool
) -> None:
    sim, ca = tls_sim
    env = sim_env(sim, service_account=service_account)
    args = ["run", "--once", "--output", str(tmp_path / "out"), "--atlas-url", sim.app.base_url]
    started = time.monotonic()
    refused = run_cli(*args, env=env)
    assert refused.returncode == 1, refused.stderr
    assert time.monotonic() - started < 20  # not retried as if it were a network hiccup
    assert "Traceback" not in refused.stderr
    assert "TLS certificate verification failed" in refused.stderr and "--ca-bundle" in refused.stderr
    assert not list(LocalSink(tmp_path / "out").list_keys("dt="))
    trusted = run_cli(*args, "--ca-bundle", str(ca), env=env)
    assert trusted.returncode == 0, trusted.stderr
    stored = [
        json.loads(line)["id"]
        for k in LocalSink(tmp_path / "out").list_keys("dt=")
        for line in gzip.decompress(LocalSink(tmp_path / "out").get(k) or b"").splitlines()
        if b"HEARTBEAT" not in line
    ]
    assert sorted(stored) == sorted(e["id"] for e in sim.ground_truth())


def test_no_option_or_setting_turns_tls_verification_off() -> None:
    help_text = run_cli("run", "--help").stdout.lower()
    for word in ("insecure", "no-verify", "skip-verify", "tls-verify", "verify-ssl", "ssl-verify"):
        assert word not in help_text
    for path in (REPO / "src" / "atlas_log").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"verify\s*=\s*False", text), path
        assert "CERT_NONE" not in text and "_create_unverified_context" not in text, path
    assert run_cli("run", "--once", "--atlas-url", "http://atlas.example.com", env={}).returncode == 2


# --------------------------------------------------------------------------------------------------- IAM policy
def documented_policy() -> dict[str, Any]:
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    policies = [json.loads(b) for b in blocks if '"Statement"' in b]
    assert len(policies) == 1, "docs/security.md holds exactly one IAM policy"
    policy: dict[str, Any] = policies[0]
    return policy


IAM_ACTION = {"PutObject": "s3:PutObject", "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject",
              "ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket"}  # fmt: skip


def _allowed(policy: dict[str, Any], action: str, arn: str, prefix: str | None, bucket: str, base: str) -> bool:
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        resources = [r.replace("BUCKET", bucket).replace("PREFIX/", base) for r in resources]
        if (
            statement["Effect"] != "Allow"
            or action not in actions
            or not any(fnmatch.fnmatch(arn, r) for r in resources)
        ):
            continue
        condition = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if condition is None or (
            prefix is not None and any(fnmatch.fnmatch(prefix, c.replace("PREFIX/", base)) for c in condition)
        ):
            return True
    return False


def test_the_documented_iam_policy_is_exactly_what_an_end_to_end_run_uses(
    start_sim: StartSim, moto_server: S3Server, tmp_path: Path
) -> None:
    """Every S3 call of a run (first run, crash and adoption, concurrent losers) is allowed, and nothing more is."""
    from test_exporter import CrashAfterWrite

    policy = documented_policy()
    sim = start_sim(projects_per_org=2, events=900, rate=50.0)
    bucket, base = f"iam-{os.urandom(6).hex()}", "audit/atlas/"
    calls: list[tuple[str, str, str | None]] = []
    lock = threading.Lock()

    def record(params: dict[str, Any], model: Any, **_kw: Any) -> None:
        arn = f"arn:aws:s3:::{params['Bucket']}" + (f"/{params['Key']}" if "Key" in params else "")
        with lock:
            calls.append((IAM_ACTION.get(model.name, f"s3:{model.name}"), arn, params.get("Prefix")))

    setup = moto_server.client()
    setup.create_bucket(Bucket=bucket)

    def sink() -> S3Sink:
        client = moto_server.client()
        client.meta.events.register("provide-client-params.s3", record)
        return S3Sink(S3Location(bucket, base), client=client)

    config = exporter_config(sim, f"s3://{bucket}/{base}", max_events_per_object=200)
    crashing = Exporter(config, sink=CrashAfterWrite(sink()))
    with pytest.raises(SystemExit):
        crashing.run_cycle()
    crashing.close()

    def worker() -> None:
        exporter = Exporter(config, sink=sink())
        try:
            for _ in range(3):
                exporter.run_cycle()
        finally:
            exporter.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    used = {action for action, _arn, _prefix in calls}
    documented = {
        a for s in policy["Statement"] for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    assert used == documented, f"used {sorted(used)}, documented {sorted(documented)}"
    refused = [(a, arn, p) for a, arn, p in calls if not _allowed(policy, a, arn, p, bucket, base)]
    assert not refused, refused[:5]
    assert any(arn.endswith("_state/checkpoint.json") for _a, arn, _p in calls)
