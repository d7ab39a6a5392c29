"""AWS Lambda entry point: one cycle per invocation (an EventBridge schedule invokes it), checkpoint in S3.

Handler: ``atlas_log.lambda_handler.handler``. Configuration is read exactly as ``atlas-log run --once`` reads it
from the environment (``ATLAS_LOG_OUTPUT=s3://bucket/prefix``, ``ATLAS_LOG_SINCE``, ``ATLAS_LOG_INCLUDE_PROJECT``,
... and ``ATLAS_LOG_CONFIG`` for a TOML file in the package). Atlas credentials come from the environment, or from
a Secrets Manager secret named by ``ATLAS_LOG_SECRET_ARN`` (read at every invocation, so a rotation takes effect at
once) whose value is a JSON object with the same variable names (``MONGODB_ATLAS_CLIENT_ID`` and
``MONGODB_ATLAS_CLIENT_SECRET``, or the API key pair), or the fields ``clientId`` and ``clientSecret`` of Secrets
Manager's managed rotation for MongoDB Atlas service accounts.

The invocation fails (raises) when the cycle did, as ``--once`` exits 1: a scope that failed, a checkpoint or
destination error. That makes the function's ``Errors`` metric the alarm. A retried or overlapping invocation is
safe: the destination's compare-and-swap protocol keeps every event exactly once. Before the Lambda deadline the
cycle is asked to stop; what was read by then is committed, the rest is read by the next invocation.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Protocol

import click

from atlas_log.config import (
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_PRIVATE_KEY,
    ENV_PUBLIC_KEY,
    Config,
    build_config,
)
from atlas_log.errors import AtlasLogError, ConfigError
from atlas_log.logs import setup_logging

log = logging.getLogger("atlas_log")

ENV_SECRET_ARN = "ATLAS_LOG_SECRET_ARN"  # noqa: S105 (a variable name)
SECRET_NAMES = (ENV_CLIENT_ID, ENV_CLIENT_SECRET, ENV_PUBLIC_KEY, ENV_PRIVATE_KEY)
# The fields of Secrets Manager's managed-rotation secret type "MongoDBAtlasServiceAccount".
ROTATED_FIELDS = {"clientId": ENV_CLIENT_ID, "clientSecret": ENV_CLIENT_SECRET}
DEADLINE_MARGIN_S = 30.0


class LambdaContext(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class CycleFailed(AtlasLogError):
    """The cycle ran but did not fully succeed; the message is its summary and the failing scopes."""


def load_secret_into_env(env: dict[str, str] | None = None, *, client: Any = None) -> None:
    """Copy the Atlas credentials from ``$ATLAS_LOG_SECRET_ARN`` into the environment.

    Read at every invocation (one cheap API call), so a rotated secret is used from the next invocation on, also
    by warm execution environments.
    """
    target: Any = os.environ if env is None else env
    arn = target.get(ENV_SECRET_ARN)
    if not arn:
        return
    if client is None:
        import boto3

        client = boto3.client("secretsmanager")
    try:
        value = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{ENV_SECRET_ARN}: the secret is not a JSON object of credentials ({exc})") from None
    except Exception as exc:  # botocore's ClientError and friends: name the secret, not the stack
        raise ConfigError(f"{ENV_SECRET_ARN}: cannot read the secret {arn}: {exc}") from None
    if isinstance(value, dict):
        value = {ROTATED_FIELDS.get(k, k): v for k, v in value.items()}
    if not isinstance(value, dict) or not any(value.get(name) for name in SECRET_NAMES):
        raise ConfigError(f"{ENV_SECRET_ARN}: the secret holds none of {', '.join(SECRET_NAMES)}")
    for name in SECRET_NAMES:
        if value.get(name):
            target[name] = str(value[name])
        else:
            target.pop(name, None)  # a rotation from an API key to a service account leaves no stale pair


def config_from_env() -> tuple[Config, str]:
    """The configuration ``atlas-log run --once`` would build from this environment, and the log level."""
    from atlas_log.cli import run as run_command

    try:
        ctx = run_command.make_context("run", ["--once"], resilient_parsing=False)
    except click.ClickException as exc:
        raise ConfigError(exc.format_message()) from None
    params = dict(ctx.params)
    level = str(params.pop("log_level", None) or "INFO")
    for name in ("once", "config_file"):
        params.pop(name, None)
    return build_config(params), level


def handler(event: dict[str, Any] | None, context: LambdaContext | None) -> dict[str, Any]:
    """Run one export cycle. Returns its summary; raises when it failed (as ``--once`` exits 1)."""
    from atlas_log.get_latest import Exporter

    load_secret_into_env()
    config, level = config_from_env()
    setup_logging(level, secrets=config.secrets, json_lines=True)
    stop = threading.Event()
    timer = None
    if context is not None:
        budget_s = context.get_remaining_time_in_millis() / 1000.0
        timer = threading.Timer(max(1.0, budget_s - min(DEADLINE_MARGIN_S, budget_s * 0.2)), stop.set)
        timer.daemon = True
        timer.start()
    exporter = Exporter(config, stop=stop)
    try:
        result = exporter.run_cycle()
    finally:
        if timer is not None:
            timer.cancel()
        exporter.close()
    log.info(result.summary())
    summary = {
        "ok": not (result.failures or result.conflict),
        "scopes": result.scopes,
        "scopes_failed": result.scopes_failed,
        "events": result.events,
        "objects": result.objects,
        "bytes": result.bytes,
        "requests": result.requests,
        "duration_ms": int(result.duration_s * 1000),
        "stopped_early": stop.is_set(),
        "failures": result.failures,
    }
    if result.failures:
        raise CycleFailed(f"{result.summary()}; failing: {'; '.join(result.failures)}")
    return summary
