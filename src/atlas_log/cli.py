"""The command line: ``atlas-log run | demo | simulate | status | verify``.

Configuration errors print one line per problem and exit 2; fatal errors print one line and exit 1. No traceback
reaches a user for a user's mistake.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from atlas_log import __version__
from atlas_log.config import Config, build_config
from atlas_log.errors import AtlasLogError, ConfigError
from atlas_log.logs import setup_logging

log = logging.getLogger("atlas_log")

F = Callable[..., Any]


def _load_config_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return value
    try:
        data = tomllib.loads(Path(value).read_text())
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{value} is not valid TOML: {exc}") from None
    table = data.get("atlas-log", data)
    known = {p.name for p in ctx.command.params if p.name}
    defaults: dict[str, Any] = {}
    for raw_key, item in table.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise click.BadParameter(f"{value}: unknown setting {raw_key!r}")
        defaults[key] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def output_option(fn: F) -> F:
    return click.option(
        "--output",
        "-o",
        envvar="ATLAS_LOG_OUTPUT",
        metavar="s3://BUCKET/PREFIX|FOLDER",
        help="Where objects go. Default: s3://$ATLAS_LOG_BUCKET/ if set, else ./atlas-logs",
    )(fn)


def common_options(fn: F) -> F:
    """The options shared by run and the Lambda/one-shot entry points."""
    options: list[Callable[[F], F]] = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            callback=_load_config_file,
            is_eager=True,
            expose_value=True,
            envvar="ATLAS_LOG_CONFIG",
            help="TOML file with any of these options (flags and environment win).",
        ),
        output_option,
        click.option("--atlas-url", envvar="MONGODB_ATLAS_URL", help="Default https://cloud.mongodb.com"),
        click.option("--interval", envvar="ATLAS_LOG_INTERVAL", help="Poll interval, e.g. 60s (default)."),
        click.option(
            "--since",
            envvar="ATLAS_LOG_SINCE",
            help="Where a scope with no watermark starts: ISO-8601 or a duration back (default 30d).",
        ),
        click.option("--settle", envvar="ATLAS_LOG_SETTLE", help="How far behind now a cycle stops (default 0s)."),
        click.option(
            "--lookback",
            envvar="ATLAS_LOG_LOOKBACK",
            help="Window for events that become visible late (default 5m).",
        ),
        click.option(
            "--heartbeat-interval",
            envvar="ATLAS_LOG_HEARTBEAT_INTERVAL",
            help="Longest time a quiet scope goes without a heartbeat line (default 5m).",
        ),
        click.option("--timeout", envvar="ATLAS_LOG_TIMEOUT", help="HTTP timeout (default 30s)."),
        click.option(
            "--concurrency", type=int, envvar="ATLAS_LOG_CONCURRENCY", help="Scopes read at once (default 32)."
        ),
        click.option(
            "--max-events-per-object",
            type=int,
            envvar="ATLAS_LOG_MAX_EVENTS_PER_OBJECT",
            help="Split objects larger than this (default 50000).",
        ),
        click.option(
            "--org-events/--no-org-events",
            default=True,
            envvar="ATLAS_LOG_ORG_EVENTS",
            help="Export organization events (default on).",
        ),
        click.option(
            "--project-events/--no-project-events",
            default=True,
            envvar="ATLAS_LOG_PROJECT_EVENTS",
            help="Export project events (default on).",
        ),
        click.option("--include-org", multiple=True, envvar="ATLAS_LOG_INCLUDE_ORG", help="Org id or name."),
        click.option("--exclude-org", multiple=True, envvar="ATLAS_LOG_EXCLUDE_ORG", help="Org id or name."),
        click.option(
            "--include-project", multiple=True, envvar="ATLAS_LOG_INCLUDE_PROJECT", help="Project id or name."
        ),
        click.option(
            "--exclude-project", multiple=True, envvar="ATLAS_LOG_EXCLUDE_PROJECT", help="Project id or name."
        ),
        click.option(
            "--include-event-type",
            multiple=True,
            envvar="ATLAS_LOG_INCLUDE_EVENT_TYPE",
            help="Only these eventTypeName values.",
        ),
        click.option(
            "--exclude-event-type",
            multiple=True,
            envvar="ATLAS_LOG_EXCLUDE_EVENT_TYPE",
            help="Never these eventTypeName values.",
        ),
        click.option("--sse", envvar="ATLAS_LOG_SSE", help="S3 server-side encryption: none, AES256, aws:kms."),
        click.option("--sse-kms-key-id", envvar="ATLAS_LOG_SSE_KMS_KEY_ID", help="KMS key for --sse aws:kms."),
        click.option("--s3-endpoint-url", envvar="AWS_ENDPOINT_URL_S3", help="S3-compatible endpoint."),
        click.option("--ca-bundle", envvar="ATLAS_LOG_CA_BUNDLE", help="Extra CA bundle for TLS verification."),
        click.option("--shard", envvar="ATLAS_LOG_SHARD", help="i/N: own a stable share of the scopes."),
        click.option(
            "--log-level",
            default="INFO",
            envvar="ATLAS_LOG_LEVEL",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def config_from(params: dict[str, Any]) -> Config:
    return build_config(params)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="atlas-log")
def cli() -> None:
    """Ship the MongoDB Atlas activity feed to S3 or a local folder, exactly once."""


@cli.command()
@common_options
@click.option("--once", is_flag=True, help="Run one cycle and exit (cron, Lambda).")
@click.option(
    "--metrics-port",
    type=int,
    envvar="ATLAS_LOG_METRICS_PORT",
    help="Serve Prometheus metrics here (default 8000; off with --once unless given).",
)
def run(once: bool, config_file: str | None, log_level: str, **params: Any) -> None:
    """Poll Atlas every --interval and export new events."""
    from atlas_log.get_latest import install_signal_handlers
    from atlas_log.get_latest import run as run_loop

    config = config_from(params)
    setup_logging(log_level, secrets=config.secrets)
    log.info(
        "exporting %s events from %s to %s every %ss",
        config.credentials.kind,
        config.atlas_url,
        _where(config),
        int(config.interval_s),
    )
    stop = threading.Event()
    install_signal_handlers(stop)
    sys.exit(run_loop(config, once=once, stop=stop))


def _where(config: Config) -> str:
    return str(config.output)


@cli.command()
@click.option("--output", "-o", default="./atlas-logs-demo", show_default=True, help="Local folder for the demo.")
@click.option("--cycles", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option("--interval", "interval_s", default=2.0, show_default=True, type=click.FloatRange(0.1, 60))
def demo(output: str, cycles: int, interval_s: float) -> None:
    """Run the exporter end to end against the bundled simulator, into a local folder."""
    from atlas_log.demo import run_demo

    setup_logging("INFO", json_lines=False)
    sys.exit(run_demo(Path(output), cycles=cycles, interval_s=interval_s))


def _register_optional_commands() -> None:
    from atlas_log.ops_cli import health, status, verify

    for command in (status, verify, health):
        cli.add_command(command)
    try:
        from atlas_log.simulator.cli import simulate
    except ImportError:  # pragma: no cover - the simulator ships with the package
        return
    cli.add_command(simulate)


_register_optional_commands()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: map errors to exit status and one clear line."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="atlas-log", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        click.echo(f"atlas-log: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"atlas-log: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            click.echo(f"atlas-log: error: {line}", err=True)
        sys.exit(2)
    except AtlasLogError as exc:
        click.echo(f"atlas-log: error: {_scrub(str(exc))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _scrub(text: str) -> str:
    for name in ("MONGODB_ATLAS_PRIVATE_API_KEY", "MONGODB_ATLAS_CLIENT_SECRET"):
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
