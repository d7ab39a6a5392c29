"""The Lambda handler: one cycle per invocation, configuration from the environment, checkpoint in S3 (moto)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from conftest import StartSim, assert_exactly_once, sim_env
from moto import mock_aws

from atlas_log import lambda_handler
from atlas_log.config import S3Location
from atlas_log.errors import ConfigError
from atlas_log.simulator import Simulator
from atlas_log.verify import verify_destination
from atlas_log.write_events import S3Sink

BUCKET = "atlas-audit-lambda"


class Context:
    def __init__(self, remaining_ms: int = 900_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A clean environment as Lambda would have it, and moto's in-process AWS with the output bucket."""
    for name in list(os.environ):
        if name.startswith(("MONGODB_ATLAS_", "ATLAS_LOG_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("ATLAS_LOG_OUTPUT", f"s3://{BUCKET}/atlas/")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        yield s3


def point_at(sim: Simulator, monkeypatch: pytest.MonkeyPatch, *, credentials: bool = True) -> None:
    monkeypatch.setenv("MONGODB_ATLAS_URL", sim.base_url)
    monkeypatch.setenv("ATLAS_LOG_SINCE", "7d")
    if credentials:
        for name, value in sim_env(sim).items():
            monkeypatch.setenv(name, value)


def test_each_invocation_runs_one_cycle_exactly_once(
    aws: Any, start_sim: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = start_sim(projects_per_org=2, events=600)
    point_at(sim, monkeypatch)
    first = lambda_handler.handler({"source": "aws.events"}, Context())
    assert first["ok"] and first["objects"] == 1 and first["events"] == len(sim.ground_truth())
    sim.add_events(sim.projects()[0]["id"], 12)
    second = lambda_handler.handler({}, Context())
    assert second["ok"] and second["events"] == 12 and not second["stopped_early"]
    sink = S3Sink(S3Location(BUCKET, "atlas/"), client=aws)
    assert_exactly_once(sim, sink)
    assert verify_destination(sink).ok
    assert aws.get_object(Bucket=BUCKET, Key="atlas/_state/checkpoint.json")["Body"].read()


@pytest.mark.parametrize("fields", ["variables", "managed-rotation"])
def test_credentials_from_secrets_manager(
    aws: Any, start_sim: StartSim, monkeypatch: pytest.MonkeyPatch, fields: str
) -> None:
    sim = start_sim(projects_per_org=1, events=100)
    point_at(sim, monkeypatch, credentials=False)
    secret: dict[str, str] = sim_env(sim, service_account=True)
    if fields == "managed-rotation":  # Secrets Manager's MongoDBAtlasServiceAccount rotation writes these names
        secret = {"clientId": sim.config.client_id, "clientSecret": sim.config.client_secret, "orgId": "x"}
    secrets = boto3.client("secretsmanager")
    arn = secrets.create_secret(Name="atlas-log/credentials", SecretString=json.dumps(secret))["ARN"]
    monkeypatch.setenv("ATLAS_LOG_SECRET_ARN", arn)
    for name in lambda_handler.SECRET_NAMES:  # recorded as absent, so what the handler sets is removed afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    result = lambda_handler.handler({}, Context())
    assert result["ok"] and result["events"] == len(sim.ground_truth())


def test_a_failing_scope_fails_the_invocation(aws: Any, start_sim: StartSim, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = start_sim(projects_per_org=2, events=100)
    point_at(sim, monkeypatch)
    revoked = sim.projects()[1]["id"]
    body = {"detail": "Forbidden", "error": 403, "errorCode": "IP_ADDRESS_NOT_ON_ACCESS_LIST", "reason": "Forbidden"}
    sim.inject_response(403, json.dumps(body), count=50, path_contains=f"/groups/{revoked}/events")
    with pytest.raises(lambda_handler.CycleFailed, match=revoked):
        lambda_handler.handler({}, Context())
    sink = S3Sink(S3Location(BUCKET, "atlas/"), client=aws)
    assert verify_destination(sink).ok  # what the other scopes exported is committed


def test_configuration_errors_name_the_problem(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_LOG_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="no Atlas credentials") as caught:
        lambda_handler.handler({}, Context())
    assert "--interval: 'soon' is not a duration" in str(caught.value)
