"""Operations commands: ``atlas-log status``, ``verify`` and ``health``. None of them needs Atlas credentials.

``status`` and ``verify`` read the destination (``--output``, the same as ``run``; S3 credentials from the standard
AWS chain); ``health`` reads the local health file the exporter writes. Errors reach ``cli.main`` as
``AtlasLogError`` and become one line and exit status 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from atlas_log._time import parse_duration
from atlas_log.config import S3Location, parse_output, parse_shard
from atlas_log.errors import ConfigError, DestinationError
from atlas_log.write_events import LocalSink, S3Sink, Sink


def open_destination(
    output: str | None, *, s3_endpoint_url: str | None = None, ca_bundle: str | None = None, timeout_s: float = 30.0
) -> Sink:
    """The sink ``--output`` names, for reading: a local folder must exist (it is never created here)."""
    value = output
    if not value or value.startswith("s3://") or "://" in value:
        try:
            location = parse_output(value, os.environ)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if isinstance(location, S3Location):
            return S3Sink(location, endpoint_url=s3_endpoint_url, ca_bundle=ca_bundle, timeout_s=timeout_s)
        value = str(location)
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise DestinationError(f"{path} is not a folder: is --output right?")
    return LocalSink(path)


def _shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_output = click.option(
    "--output",
    "-o",
    envvar="ATLAS_LOG_OUTPUT",
    metavar="s3://BUCKET/PREFIX|FOLDER",
    help="The destination `run` writes to. Default: s3://$ATLAS_LOG_BUCKET/ if set, else ./atlas-logs",
)
_shard_option = click.option(
    "--shard",
    envvar="ATLAS_LOG_SHARD",
    help="i/N: only that shard's checkpoint. Default: every checkpoint in the destination.",
)
_endpoint = click.option("--s3-endpoint-url", envvar="AWS_ENDPOINT_URL_S3", help="S3-compatible endpoint.")
_ca_bundle = click.option("--ca-bundle", envvar="ATLAS_LOG_CA_BUNDLE", help="Extra CA bundle for TLS verification.")
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")


@click.command()
@_output
@_shard_option
@_endpoint
@_ca_bundle
@_json
def status(
    output: str | None, shard: str | None, s3_endpoint_url: str | None, ca_bundle: str | None, as_json: bool
) -> None:
    """Show each scope's watermark, lag, events exported and last heartbeat, from the destination's checkpoint."""
    from atlas_log.status import build_status, render_json, render_table

    sink = open_destination(output, s3_endpoint_url=s3_endpoint_url, ca_bundle=ca_bundle)
    report = build_status(sink, _shard(shard))
    if as_json:
        click.echo(render_json(report))
    else:
        click.echo(render_table(report, terminal=sys.stdout.isatty()), nl=False)


@click.command()
@_output
@_shard_option
@_endpoint
@_ca_bundle
@_json
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 64), help="Objects read at once.")
def verify(
    output: str | None,
    shard: str | None,
    s3_endpoint_url: str | None,
    ca_bundle: str | None,
    as_json: bool,
    workers: int,
) -> None:
    """Audit the destination: every object readable, no event twice, no gap, checkpoint consistent. Exit 1 on
    any problem."""
    import json

    from atlas_log.verify import verify_destination

    sink = open_destination(output, s3_endpoint_url=s3_endpoint_url, ca_bundle=ca_bundle)
    report = verify_destination(sink, _shard(shard), workers=workers)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.render(), nl=False)
    if not report.ok:
        sys.exit(1)


@click.command()
@click.option(
    "--file",
    "health_file",
    envvar="ATLAS_LOG_HEALTH_FILE",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The health file the exporter writes ($ATLAS_LOG_HEALTH_FILE).",
)
@click.option("--max-age", default="5m", show_default=True, help="Unhealthy when the last good cycle is older.")
def health(health_file: Path, max_age: str) -> None:
    """Exit 0 when the exporter's last successful cycle is recent enough, 1 otherwise (for HEALTHCHECK/probes)."""
    from atlas_log.health import check_health

    try:
        max_age_s = parse_duration(max_age)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-age") from None
    result = check_health(health_file, max_age_s)
    click.echo(result.message, err=not result.ok)
    if not result.ok:
        sys.exit(1)
