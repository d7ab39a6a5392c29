"""The reference the exporter is measured against: what the original documentation describes, done plainly.

One cycle, sequential, one request after another:

* list the organizations (``GET /orgs``) and the projects (``GET /groups``), 500 per page;
* for each scope in turn, read its events after the watermark's ``minDate``, 500 per page, until a short page;
* write one gzip JSON Lines object per scope per poll (its new events oldest first, then a heartbeat line);
* the watermark is ``min_date`` plus ``last_ids`` (the ids exported at exactly ``min_date``), saved once per cycle.

It is honest, not sabotaged: one keep-alive HTTP connection (httpx, Digest auth), ``Retry-After`` honoured on a 429,
the standard library's ``json`` and ``gzip``. It is not exactly-once (no pending key, no compare-and-swap) and keeps a
scope's whole window in memory, as the original did.

    python bench/baseline.py --atlas-url http://127.0.0.1:PORT --output DIR|s3://BUCKET/PREFIX [--prime]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ACCEPT = "application/vnd.atlas.2023-01-01+json"
PAGE = 500


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


class Destination:
    """A local folder or an S3 bucket (boto3, the original's library)."""

    def __init__(self, output: str, endpoint_url: str | None) -> None:
        self.s3: Any = None
        if output.startswith("s3://"):
            import boto3

            self.bucket, _, prefix = output[5:].partition("/")
            self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
            self.s3 = boto3.client("s3", endpoint_url=endpoint_url)
        else:
            self.root = Path(output)

    def put(self, key: str, body: bytes) -> None:
        if self.s3 is not None:
            self.s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body)
        else:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)

    def get(self, key: str) -> bytes | None:
        if self.s3 is not None:
            try:
                return bytes(self.s3.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read())
            except self.s3.exceptions.NoSuchKey:
                return None
        path = self.root / key
        return path.read_bytes() if path.exists() else None


class Atlas:
    """A plain client, as a user would write one: Digest, the versioned header, Retry-After. dlt_ref.py shares it."""

    def __init__(self, url: str, connections: int = 1) -> None:
        auth = httpx.DigestAuth(os.environ["MONGODB_ATLAS_PUBLIC_API_KEY"], os.environ["MONGODB_ATLAS_PRIVATE_API_KEY"])
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.Client(
            base_url=url + "/api/atlas/v2", auth=auth, headers={"Accept": ACCEPT}, timeout=60, limits=limits
        )
        self.requests = 0
        self.rate_limited = 0

    def get(self, path: str, params: dict[str, Any]) -> Any:
        for attempt in range(10):
            self.requests += 1
            resp = self.http.get(path, params=params)
            if resp.status_code == 200:
                return resp.json()
            if resp.status_code == 429:
                self.rate_limited += 1
                time.sleep(float(resp.headers.get("Retry-After", "1")))
                continue
            if resp.status_code >= 500:
                time.sleep(min(30.0, 0.5 * 2**attempt))
                continue
            resp.raise_for_status()
        raise RuntimeError(f"gave up on {path}")

    def list_all(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            results = self.get(path, {"itemsPerPage": PAGE, "pageNum": page})["results"]
            items.extend(results)
            if len(results) < PAGE:
                return items
            page += 1


def run_cycle(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    atlas = Atlas(args.atlas_url)
    dest = Destination(args.output, args.s3_endpoint_url)
    raw_state = dest.get("_state/baseline.json")
    state: dict[str, dict[str, Any]] = json.loads(raw_state) if raw_state else {}
    scopes = [("orgs", o["id"]) for o in atlas.list_all("/orgs")]
    scopes += [("groups", p["id"]) for p in atlas.list_all("/groups")]
    if args.max_scopes:
        scopes = scopes[: args.max_scopes]
    now = datetime.now(UTC)
    since = iso(now - timedelta(days=args.since_days))
    events_total = objects = 0
    for kind, scope_id in scopes:
        key = f"{kind}:{scope_id}"
        if args.prime:  # start "now", as a previous cycle would have left it
            state[key] = {"min_date": iso(now - timedelta(seconds=1)), "last_ids": []}
            continue
        wm = state.get(key, {"min_date": since, "last_ids": []})
        min_date, last_ids = wm["min_date"], set(wm["last_ids"])
        events: list[dict[str, Any]] = []
        page = 1
        while True:
            body = atlas.get(f"/{kind}/{scope_id}/events", {"minDate": min_date, "itemsPerPage": PAGE, "pageNum": page})
            results = body["results"]
            events.extend(e for e in results if not (e["created"] == min_date and e["id"] in last_ids))
            if len(results) < PAGE:
                break
            page += 1
        events.reverse()  # oldest first
        lines = [json.dumps(e, separators=(",", ":")) for e in events]
        if events:
            newest = max(e["created"] for e in events)
            ids = [e["id"] for e in events if e["created"] == newest]
            wm = {"min_date": newest, "last_ids": ids if newest != min_date else sorted(last_ids | set(ids))}
        state[key] = wm
        heartbeat = {"created": iso(datetime.now(UTC)), "eventTypeName": "@ATLAS_LOG_TO_S3_HEARTBEAT", **wm}
        lines.append(json.dumps(heartbeat, separators=(",", ":")))
        body_gz = gzip.compress(("\n".join(lines) + "\n").encode())
        dest.put(f"dt={now:%Y-%m-%d}/{kind}-{scope_id}-{int(now.timestamp())}.jsonl.gz", body_gz)
        objects += 1
        events_total += len(events)
    dest.put("_state/baseline.json", json.dumps(state).encode())
    return {
        "scopes": len(scopes),
        "events": events_total,
        "objects": objects,
        "requests": atlas.requests,
        "rate_limited": atlas.rate_limited,
        "duration_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atlas-url", required=True)
    parser.add_argument("--output", required=True, help="a folder or s3://bucket/prefix")
    parser.add_argument("--s3-endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL_S3"))
    parser.add_argument("--since-days", type=float, default=400.0, help="where a scope with no watermark starts")
    parser.add_argument("--max-scopes", type=int, default=0, help="read only the first N scopes (0: all)")
    parser.add_argument("--prime", action="store_true", help="only set every scope's watermark to now")
    result = run_cycle(parser.parse_args())
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
