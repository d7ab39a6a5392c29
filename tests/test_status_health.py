"""The health file and `atlas-log health`: healthy while the last successful cycle is recent."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from conftest import run_cli

from atlas_log._time import utcnow
from atlas_log.health import check_health, record_success, write_health


def test_write_then_check(tmp_path: Path) -> None:
    path = tmp_path / "run" / "health.json"
    now = utcnow()
    write_health(path, now - timedelta(minutes=2))
    assert json.loads(path.read_text())["format"] == "atlas-log-exporter/health/1"
    assert check_health(path, 300, now=now).ok
    stale = check_health(path, 60, now=now)
    assert not stale.ok and "more than --max-age 1m" in stale.message
    assert [p.name for p in path.parent.iterdir()] == ["health.json"]  # no temporary file left behind


def test_record_success_only_when_the_variable_is_set(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    record_success(utcnow(), env={})
    assert not path.exists()
    record_success(utcnow(), env={"ATLAS_LOG_HEALTH_FILE": str(path)})
    assert check_health(path, 60).ok


def test_missing_or_damaged_file_is_unhealthy(tmp_path: Path) -> None:
    assert "no cycle has succeeded yet" in check_health(tmp_path / "none.json", 60).message
    (tmp_path / "bad.json").write_text("{")
    assert not check_health(tmp_path / "bad.json", 60).ok


def test_the_command_exit_status(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    write_health(path, utcnow() - timedelta(minutes=3))
    healthy = run_cli("health", "--max-age", "5m", env={"ATLAS_LOG_HEALTH_FILE": str(path)})
    assert healthy.returncode == 0 and healthy.stdout.startswith("healthy"), healthy.stderr
    unhealthy = run_cli("health", "--file", str(path), "--max-age", "90s")
    assert unhealthy.returncode == 1 and unhealthy.stderr.startswith("unhealthy"), unhealthy.stderr
    missing = run_cli("health", "--file", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "no health file" in missing.stderr
    bad_age = run_cli("health", "--file", str(path), "--max-age", "soon")
    assert bad_age.returncode == 2 and "is not a duration" in bad_age.stderr
