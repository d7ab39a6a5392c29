"""The second reference: dlt, the general-purpose incremental loader a user might pick instead of the exporter.

One dlt resource per scope (each organization's and each project's event feed), each with its own
``dlt.sources.incremental("created")`` cursor and ``primary_key="id"`` (dlt keeps the ids on the boundary second,
like our ``last_ids``), ``parallelized=True`` so dlt reads scopes in its thread pool (``--workers``), nesting off so
every event stays one JSON object, written as gzip JSON Lines to dlt's filesystem destination (a local folder).
HTTP is the same httpx client with Digest auth the baseline uses. dlt's telemetry is switched off.
Every page asks for ``minDate = start_value`` (the cursor as the run began): Atlas pages newest first, so
``last_value`` has already moved to the newest event after page 1.

dlt's cursor is per resource, so a single child resource over all projects (rest_api's parent/child) would share
one ``created`` cursor across projects and skip events; one resource per scope is the correct setup.

    python bench/dlt_ref.py --atlas-url http://127.0.0.1:PORT --output DIR --pipelines-dir DIR [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

import importlib

dlt: Any = importlib.import_module("dlt")  # an optional extra (`pip install -e '.[bench]'`), so typed as Any here

from baseline import PAGE, Atlas  # noqa: E402 (after dlt's settings) the same plain client as the baseline


def scope_resource(atlas: Atlas, kind: str, scope_id: str, since: str) -> Any:
    @dlt.resource(  # type: ignore[untyped-decorator]
        name=f"{kind}_{scope_id}",
        table_name="events",
        primary_key="id",
        write_disposition="append",
        max_table_nesting=0,
        parallelized=True,
    )
    def events(
        created: Any = dlt.sources.incremental("created", initial_value=since),  # noqa: B008 (dlt's idiom)
    ) -> Iterator[list[dict[str, Any]]]:
        page = 1
        while True:
            body = atlas.get(
                f"/{kind}/{scope_id}/events",
                {"minDate": created.start_value, "itemsPerPage": PAGE, "pageNum": page},
            )
            results = body["results"]
            if results:
                yield results
            if len(results) < PAGE:
                return
            page += 1

    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atlas-url", required=True)
    parser.add_argument("--output", required=True, help="a local folder")
    parser.add_argument("--pipelines-dir", required=True)
    parser.add_argument("--workers", type=int, default=5, help="dlt extract workers (parallel scopes)")
    parser.add_argument("--since-days", type=float, default=400.0)
    args = parser.parse_args()
    os.environ["EXTRACT__WORKERS"] = str(args.workers)
    os.environ["EXTRACT__MAX_PARALLEL_ITEMS"] = str(args.workers)

    started = time.perf_counter()
    atlas = Atlas(args.atlas_url, max(10, args.workers))
    since = (datetime.now(UTC) - timedelta(days=args.since_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    resources = [scope_resource(atlas, "orgs", o["id"], since) for o in atlas.list_all("/orgs")]
    resources += [scope_resource(atlas, "groups", p["id"], since) for p in atlas.list_all("/groups")]

    @dlt.source(name="atlas", max_table_nesting=0)  # type: ignore[untyped-decorator]
    def atlas_source() -> Any:
        return resources

    output = Path(args.output).resolve()
    pipeline = dlt.pipeline(
        pipeline_name="atlas_bench",
        destination=dlt.destinations.filesystem(bucket_url=output.as_uri()),
        dataset_name="atlas",
        pipelines_dir=args.pipelines_dir,
        progress=None,
    )
    info = pipeline.run(atlas_source(), loader_file_format="jsonl")
    events = 0
    trace = pipeline.last_trace
    if trace is not None and trace.last_normalize_info is not None:
        events = int(trace.last_normalize_info.row_counts.get("events", 0))
    objects = sum(1 for _ in (output / "atlas" / "events").glob("*")) if (output / "atlas" / "events").exists() else 0
    print(
        json.dumps(
            {
                "scopes": len(resources),
                "events": events,
                "objects_total": objects,
                "requests": atlas.requests,
                "rate_limited": atlas.rate_limited,
                "duration_s": time.perf_counter() - started,
                "loads": len(info.loads_ids),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
