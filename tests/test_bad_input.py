"""Bad input from Atlas, from the configuration and from the destination: a clear error, nothing lost or corrupted.

Atlas: each case serves the bad answer for one project's events, checks the cycle's outcome (a named failure for that
scope, or a correct export), then lets Atlas answer normally and checks the destination holds every event once.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    StartSim,
    assert_exactly_once,
    exporter_config,
    run_cli,
    s3_env,
    sim_env,
    stored_events,
)
from faultlib import check_destination, fast_backoff
from s3servers import S3Server

from atlas_log import atlas_api
from atlas_log._time import format_atlas_time, parse_atlas_time, utcnow
from atlas_log.config import S3Location
from atlas_log.get_latest import CycleResult, Exporter, load_checkpoint, run
from atlas_log.simulator import Simulator
from atlas_log.write_events import LocalSink, S3Sink

CP = "_state/checkpoint.json"
HTML = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.fixture(autouse=True)
def quick_retries() -> Iterator[None]:
    with fast_backoff(0.01):
        yield


def cycle(sim: Simulator, out: Path, **raw: Any) -> CycleResult:
    exporter = Exporter(exporter_config(sim, out, **raw))
    try:
        return exporter.run_cycle()
    finally:
        exporter.close()


def prepared(start_sim: StartSim, out: Path) -> tuple[Simulator, str]:
    """A simulator whose history is exported; the first project then gets 40 new events. Returns its id."""
    sim = start_sim(projects_per_org=2, events=300)
    assert not cycle(sim, out).failures
    project = sim.projects()[0]["id"]
    sim.add_events(project, 40, created=utcnow() - timedelta(seconds=5))
    return sim, project


def catch_up_and_check(sim: Simulator, out: Path) -> None:
    sim.clear_faults()
    result = cycle(sim, out)
    assert not result.failures, result.failures
    assert_exactly_once(sim, LocalSink(out))
    assert not check_destination(sim, LocalSink(out)).problems


def fails_with(sim: Simulator, out: Path, project: str, text: str) -> None:
    """This cycle fails for that project only, with a message containing ``text``; its watermark stays."""
    before, _ = load_checkpoint(LocalSink(out), CP)
    result = cycle(sim, out)
    assert len(result.failures) == 1, result.failures
    assert project in result.failures[0] and text in result.failures[0], result.failures
    after, _ = load_checkpoint(LocalSink(out), CP)
    key = f"project:{project}"
    assert after.scopes[key].watermark == before.scopes[key].watermark


def events_path(project: str) -> str:
    return f"/groups/{project}/events"


# -------------------------------------------------------------------------------------------------- from Atlas
@pytest.mark.parametrize(
    ("status", "content_type", "expected"),
    [(503, "text/html", "an HTML page"), (200, "text/html; charset=utf-8", "not valid JSON")],
)
def test_an_html_error_page(start_sim: StartSim, tmp_path: Path, status: int, content_type: str, expected: str) -> None:
    sim, project = prepared(start_sim, tmp_path)
    sim.inject_response(status, HTML, content_type=content_type, count=8, path_contains=events_path(project))
    fails_with(sim, tmp_path, project, expected)
    catch_up_and_check(sim, tmp_path)


@pytest.mark.parametrize(
    ("rewrite", "expected"),
    [
        (lambda b: {**b, "results": {"0": b["results"]}}, "'results' is not a list"),
        (lambda b: {**b, "results": None}, "'results' is not a list"),
        (lambda b: [b], "not an object"),
        (lambda b: {**b, "results": [{**e, "created": "yesterday"} for e in b["results"]]}, "'created' is not a date"),
        (lambda b: {**b, "results": [{**e, "created": 1767225600} for e in b["results"]]}, "'created' is not a date"),
        (lambda b: {**b, "results": [{k: v for k, v in e.items() if k != "id"} for e in b["results"]]}, "valid 'id'"),
        (lambda b: {**b, "results": [*b["results"], "event"]}, "not an object"),
        (lambda b: {**b, "results": (b["results"] * 20)[:501]}, "more than the 500 asked for"),
    ],
    ids=["results-object", "results-null", "body-array", "created-text", "created-number", "no-id", "str-event",
         "page-too-large"],
)  # fmt: skip
def test_json_of_the_wrong_shape(start_sim: StartSim, tmp_path: Path, rewrite: Any, expected: str) -> None:
    sim, project = prepared(start_sim, tmp_path)
    sim.inject_rewrite(rewrite, count=1, path_contains=events_path(project))
    fails_with(sim, tmp_path, project, expected)
    catch_up_and_check(sim, tmp_path)


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda b: {**b, "results": (b["results"] + b["results"][:5])[: max(500, len(b["results"]))]},  # same id twice
        lambda b: {**b, "totalCount": 10**9},  # a count that lies upwards (probes find nothing)
        lambda b: {**b, "totalCount": 1},  # ... and downwards
        lambda b: {**b, "totalCount": -7},
        lambda b: {**b, "totalCount": "many"},
    ],
    ids=["duplicate-ids", "count-huge", "count-low", "count-negative", "count-text"],
)
def test_answers_that_are_odd_but_usable_export_exactly_once(start_sim: StartSim, tmp_path: Path, rewrite: Any) -> None:
    sim, project = prepared(start_sim, tmp_path)
    sim.add_events(project, 600, created=utcnow() - timedelta(seconds=3))  # two pages to read
    sim.inject_rewrite(rewrite, count=20, path_contains=events_path(project))
    assert not cycle(sim, tmp_path).failures
    assert_exactly_once(sim, LocalSink(tmp_path))
    catch_up_and_check(sim, tmp_path)


class _Decoy(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Decoy.hits.append(self.path)
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.mark.parametrize("target", ["self", "other-host"])
def test_a_next_link_that_loops_or_points_to_another_host_is_never_followed(
    start_sim: StartSim, tmp_path: Path, target: str
) -> None:
    decoy = ThreadingHTTPServer(("127.0.0.1", 0), _Decoy)
    threading.Thread(target=decoy.serve_forever, daemon=True).start()
    _Decoy.hits = []
    try:
        sim, project = prepared(start_sim, tmp_path)
        sim.add_events(project, 600, created=utcnow() - timedelta(seconds=3))

        def relink(body: dict[str, Any]) -> dict[str, Any]:
            self_href = next(link["href"] for link in body["links"] if link["rel"] == "self")
            host = f"http://127.0.0.1:{decoy.server_address[1]}/api/atlas/v2/groups/x/events?pageNum=2"
            href = self_href if target == "self" else host
            return {**body, "links": [{"href": self_href, "rel": "self"}, {"href": href, "rel": "next"}]}

        sim.inject_rewrite(relink, count=20, path_contains=events_path(project))
        assert not cycle(sim, tmp_path).failures
        catch_up_and_check(sim, tmp_path)
        assert _Decoy.hits == []
    finally:
        decoy.shutdown()
        decoy.server_close()


def test_a_page_of_repeats_is_a_paging_loop_and_fails_the_scope(start_sim: StartSim, tmp_path: Path) -> None:
    sim, project = prepared(start_sim, tmp_path)
    sim.add_events(project, 700, created=utcnow() - timedelta(seconds=3))
    first: list[Any] = []

    def same_page(body: dict[str, Any]) -> dict[str, Any]:
        if not first:
            first.append(body["results"])
        return {**body, "results": first[0]}

    sim.inject_rewrite(same_page, count=30, path_contains=events_path(project))
    fails_with(sim, tmp_path, project, "paging loop")
    catch_up_and_check(sim, tmp_path)


def test_events_older_than_min_date_are_ignored_not_doubled(
    start_sim: StartSim, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim, project = prepared(start_sim, tmp_path)
    old = [e for e in sim.ground_truth() if e.get("groupId") == project][-3:]  # exported in the first cycle

    sim.inject_rewrite(lambda b: {**b, "results": b["results"] + old}, count=1, path_contains=events_path(project))
    with caplog.at_level(logging.WARNING):
        assert not cycle(sim, tmp_path).failures
    assert "outside the requested window" in caplog.text
    catch_up_and_check(sim, tmp_path)


def test_dates_with_offsets_and_fractional_seconds(start_sim: StartSim, tmp_path: Path) -> None:
    """Stored exactly as served; the watermark reads the same instant, so the next cycle stores nothing again."""
    sim, project = prepared(start_sim, tmp_path)

    def shifted(body: dict[str, Any]) -> dict[str, Any]:
        out = []
        for i, event in enumerate(body["results"]):
            moment = parse_atlas_time(event["created"]) + timedelta(milliseconds=250 * (i % 4))
            local = moment.astimezone(timezone(timedelta(hours=5, minutes=30)))
            out.append({**event, "created": local.isoformat(timespec="milliseconds")})
        return {**body, "results": out}

    sim.inject_rewrite(shifted, count=5, path_contains=events_path(project))
    assert not cycle(sim, tmp_path).failures
    assert not cycle(sim, tmp_path).failures
    events, _beats, _keys = stored_events(LocalSink(tmp_path))
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) == len(sim.ground_truth())
    assert any(e["created"].endswith("+05:30") for e in events)


def test_a_one_megabyte_event(start_sim: StartSim, tmp_path: Path) -> None:
    sim, project = prepared(start_sim, tmp_path)
    blob = "x" * 1_048_576

    def big(body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "results": [{**body["results"][0], "blob": blob}, *body["results"][1:]]}

    sim.inject_rewrite(big, count=1, path_contains=events_path(project))
    assert not cycle(sim, tmp_path).failures
    events, _beats, _keys = stored_events(LocalSink(tmp_path))
    assert sum(1 for e in events if e.get("blob") == blob) == 1
    assert len({e["id"] for e in events}) == len(events) == len(sim.ground_truth())


def test_invalid_utf8_is_retried_then_named(start_sim: StartSim, tmp_path: Path) -> None:
    sim, project = prepared(start_sim, tmp_path)

    def broken(body: dict[str, Any]) -> bytes:
        return json.dumps(body).encode().replace(b'"created"', b'"cr\xff\xfeated"', 1)

    sim.inject_rewrite(broken, count=2, path_contains=events_path(project))
    assert not cycle(sim, tmp_path).failures  # retried: the third answer is clean
    sim.add_events(project, 3)
    sim.inject_rewrite(broken, count=50, path_contains=events_path(project))
    fails_with(sim, tmp_path, project, "not valid JSON")
    catch_up_and_check(sim, tmp_path)


def test_a_lone_surrogate_escape_is_stored_as_sent(start_sim: StartSim, tmp_path: Path) -> None:
    """JSON allows "\\ud800" though it has no UTF-8 form: the line keeps the escape, the object stays valid UTF-8."""
    sim, project = prepared(start_sim, tmp_path)

    def surrogate(body: dict[str, Any]) -> bytes:
        first = {**body["results"][0], "username": "PLACEHOLDER"}
        text = json.dumps({**body, "results": [first, *body["results"][1:]]})
        return text.replace("PLACEHOLDER", "bad\\ud800name").encode()

    sim.inject_rewrite(surrogate, count=1, path_contains=events_path(project))
    assert not cycle(sim, tmp_path).failures
    raw = b"".join(gzip.decompress(LocalSink(tmp_path).get(k) or b"") for k in LocalSink(tmp_path).list_keys("dt="))
    raw.decode("utf-8")  # every object is valid UTF-8
    assert b"bad\\ud800name" in raw
    events, _beats, _keys = stored_events(LocalSink(tmp_path))
    assert len({e["id"] for e in events}) == len(events) == len(sim.ground_truth())


@pytest.mark.parametrize("value", ["-30", "Wed, 21 Oct 2099 07:28:00 GMT", "31536000", "soon"])
def test_an_absurd_retry_after_is_bounded(
    start_sim: StartSim, tmp_path: Path, value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Negative, unreadable or far-future Retry-After values never stall or break the export (cap lowered here)."""
    monkeypatch.setattr(atlas_api, "MAX_RETRY_AFTER_S", 0.2)
    sim, project = prepared(start_sim, tmp_path)
    body = json.dumps({"detail": "slow down", "error": 429, "errorCode": "RATE_LIMITED", "parameters": []})
    sim.inject_response(429, body, headers={"Retry-After": value}, count=2, path_contains=events_path(project))
    with caplog.at_level(logging.INFO):
        assert not cycle(sim, tmp_path).failures
    if value in ("Wed, 21 Oct 2099 07:28:00 GMT", "31536000"):
        assert "waiting 0s instead" in caplog.text
    catch_up_and_check(sim, tmp_path)


# ------------------------------------------------------------------------------------------ from configuration
@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, "no Atlas credentials"),
        ([], {"MONGODB_ATLAS_CLIENT_ID": "mdb_sa_id_x"}, "MONGODB_ATLAS_CLIENT_SECRET is not set"),
        ([], {"MONGODB_ATLAS_CLIENT_SECRET": "s3cr3t-value"}, "MONGODB_ATLAS_CLIENT_ID is not set"),
        ([], {"MONGODB_ATLAS_PUBLIC_API_KEY": "pub"}, "MONGODB_ATLAS_PRIVATE_API_KEY is not set"),
        (
            [],
            {"MONGODB_ATLAS_PUBLIC_API_KEY": "pub", "MONGODB_ATLAS_PRIVATE_API_KEY": "s3cr3t-value",
             "MONGODB_ATLAS_CLIENT_ID": "id", "MONGODB_ATLAS_CLIENT_SECRET": "s3cr3t-value"},
            "keep one of them",
        ),
        (["--output", "s3://ab/x"], None, "not a valid S3 bucket name"),
        (["--output", "s3://my..bucket/"], None, "not a valid S3 bucket name"),
        (["--output", "s3://-bucket-/"], None, "not a valid S3 bucket name"),
        (["--output", "gs://bucket/x"], None, "only s3:// URLs and local folder paths"),
        (["--output", "{tmp}/a-file/atlas"], None, "is a file, not a folder"),
        (["--atlas-url", "http://10.1.2.3"], None, "plain http to a remote host"),
        (["--atlas-url", "https://cloud.mongodb.com/api/atlas/v2"], None, "must be just scheme and host"),
        (["--atlas-url", "ftp://cloud.mongodb.com"], None, "is not an http(s) URL"),
        (["--timeout", "0s"], None, "--timeout: '0s' must be greater than zero"),
        (["--heartbeat-interval", "0ms"], None, "--heartbeat-interval: '0ms' must be greater than zero"),
        (["--interval", "-5s"], None, "--interval: '-5s' must be greater than zero"),
        (["--lookback", "-1m"], None, "--lookback: '-1m' must be zero or more"),
        (["--since", "2999-01-01"], None, "is in the future"),
        (["--concurrency", "0"], None, "--concurrency 0 must be a whole number from 1 to 256"),
        (["--max-events-per-object", "5"], None, "must be a whole number from 100"),
        (["--shard", "3/3"], None, "--shard '3/3' must be i/N"),
        (["--ca-bundle", "/nonexistent/ca.pem"], None, "is not a readable file"),
        (["--no-org-events", "--no-project-events"], None, "leave nothing to export"),
        (["--insecure"], None, "No such option '--insecure'"),
        (["--sse", "rot13"], None, "--sse 'rot13' must be one of"),
    ],
)  # fmt: skip
def test_configuration_mistakes_exit_2_with_one_line_that_says_what_to_fix(
    args: list[str], env: dict[str, str] | None, expected: str, tmp_path: Path
) -> None:
    creds = {"MONGODB_ATLAS_PUBLIC_API_KEY": "pub", "MONGODB_ATLAS_PRIVATE_API_KEY": "s3cr3t-value"}
    (tmp_path / "a-file").write_text("not a folder")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    output = [] if "--output" in args else ["--output", str(tmp_path / "out")]
    proc = run_cli("run", "--once", *output, *args, env=creds if env is None else env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("atlas-log: error:") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "s3cr3t-value" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_config_file_with_an_unknown_setting(tmp_path: Path) -> None:
    config = tmp_path / "atlas-log.toml"
    config.write_text('[atlas-log]\noutput = "/tmp/x"\nintervall = "60s"\n')
    proc = run_cli("run", "--once", "--config", str(config), env={"MONGODB_ATLAS_PUBLIC_API_KEY": "p"})
    assert proc.returncode == 2, proc.stderr
    assert "unknown setting 'intervall'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_relative_folder_is_taken_from_the_working_directory(start_sim: StartSim, tmp_path: Path) -> None:
    """A relative --output is resolved once, against the directory the exporter starts in (the default is one)."""
    sim = start_sim(projects_per_org=1, events=50)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_ATLAS_", "ATLAS_LOG_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "atlas_log", "run", "--once", "--output", "rel/atlas", "--atlas-url", sim.base_url],
        env={**base, **sim_env(sim)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert_exactly_once(sim, LocalSink(tmp_path / "rel" / "atlas"))


# -------------------------------------------------------------------------------------------- from the destination
def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    errors = [e for e in errors if e["level"] == "error"]
    assert len(errors) == 1, stderr
    return str(errors[0]["message"])


def test_a_missing_bucket(start_sim: StartSim, moto_server: S3Server) -> None:
    sim = start_sim(projects_per_org=1, events=10)
    args = ["run", "--once", "--output", "s3://no-such-bucket-atlas-x/p", "--atlas-url", sim.base_url]
    proc = run_cli(*args, env={**sim_env(sim), **s3_env(moto_server)})
    assert proc.returncode == 1, proc.stderr
    assert "the bucket does not exist: create it or fix --output" in _one_error_line(proc.stderr)


class _Denied:
    """An S3 client whose identity may do nothing (what AWS answers without the policy in docs/security.md)."""

    def __getattr__(self, name: str) -> Any:
        from botocore.exceptions import ClientError

        def denied(*_args: Any, **_kwargs: Any) -> Any:
            raise ClientError(
                {
                    "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                    "ResponseMetadata": {"HTTPStatusCode": 403},
                },
                name,
            )

        return denied


def test_access_denied(start_sim: StartSim, caplog: pytest.LogCaptureFixture) -> None:
    sim = start_sim(projects_per_org=1, events=10)
    config = exporter_config(sim, "s3://atlas-audit/x")
    exporter = Exporter(config, sink=S3Sink(S3Location("atlas-audit", "x/"), client=_Denied()))
    with caplog.at_level(logging.ERROR):
        assert run(config, once=True, exporter=exporter) == 1
    assert "the AWS identity lacks permission: see docs/security.md" in caplog.text


def _checkpoint_of(sim: Simulator, out: Path) -> dict[str, Any]:
    assert not cycle(sim, out).failures
    data: dict[str, Any] = json.loads((out / CP).read_text())
    return data


def _future(data: dict[str, Any]) -> str:
    scope = next(iter(data["scopes"].values()))
    scope["watermark"]["min_date"] = format_atlas_time(utcnow() + timedelta(days=400))
    return json.dumps(data)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: '{"format": "atlas-log-exporter/checkpoint/1", "seq": 3,', "is damaged"),
        (lambda d: b"\xff\xfe" + json.dumps(d).encode(), "is damaged"),
        (lambda d: json.dumps({**d, "seq": "3"}), "seq should be int"),
        (lambda d: json.dumps({**d, "seq": -1}), "seq is negative"),
        (lambda d: json.dumps({**d, "scopes": []}), "scopes is not an object"),
        (lambda d: json.dumps({**d, "format": "something/else"}), "not a checkpoint of this tool"),
        (lambda d: json.dumps([d]), "not a checkpoint of this tool"),
        (lambda d: json.dumps({**d, "pending": {"seq": 99, "key": "x"}}), "does not follow seq"),
        (_future, "is in the future"),
        (
            lambda d: json.dumps({**d, "scopes": {k: {**v, "watermark": {"min_date": "last tuesday"}}
                                                  for k, v in d["scopes"].items()}}),
            "is damaged",
        ),
    ],
    ids=["truncated", "not-utf8", "seq-text", "seq-negative", "scopes-list", "format", "array", "pending",
         "future", "watermark-text"],
)  # fmt: skip
def test_a_damaged_checkpoint_stops_the_exporter(
    start_sim: StartSim, tmp_path: Path, damage: Any, expected: str
) -> None:
    """Exit 1, one line naming the problem; the checkpoint is left as found and nothing is exported again."""
    sim = start_sim(projects_per_org=1, events=60)
    out = tmp_path / "out"
    data = _checkpoint_of(sim, out)
    bad = damage(data)
    (out / CP).write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    before = (out / CP).read_bytes()
    objects_before = list(LocalSink(out).list_keys("dt="))
    sim.add_events(sim.projects()[0]["id"], 5)
    proc = run_cli("run", "--once", "--output", str(out), "--atlas-url", sim.base_url, env=sim_env(sim))
    assert proc.returncode == 1, proc.stderr
    message = _one_error_line(proc.stderr)
    assert expected in message and "checkpoint" in message, message
    assert (out / CP).read_bytes() == before
    assert list(LocalSink(out).list_keys("dt=")) == objects_before


def test_a_lost_checkpoint_is_never_silently_restarted_from_scratch(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=1, events=60)
    out = tmp_path / "out"
    _checkpoint_of(sim, out)
    (out / CP).unlink()
    proc = run_cli("run", "--once", "--output", str(out), "--atlas-url", sim.base_url, env=sim_env(sim))
    assert proc.returncode == 1, proc.stderr
    assert "exporting again would duplicate them" in _one_error_line(proc.stderr)
    assert not (out / CP).exists()
    assert len(list(LocalSink(out).list_keys("dt="))) == 1
