"""Contract test: the S3 behaviour the exporter relies on, through boto3, on every S3 we test against.

Targets: ``moto`` (in-process ``mock_aws``), ``moto-server`` (``ThreadedMotoServer`` on an ephemeral
port) and ``seaweedfs`` (``weed mini`` 4.48, started by ``tests/s3servers.py``).  Each assertion pins
the exact HTTP status and error ``Code`` that boto3 surfaces (``ClientError.response``).

Observed behaviour (moto 5.2.5, SeaweedFS 4.48, boto3 1.44)::

    case                                         moto / moto-server          seaweedfs
    -------------------------------------------  --------------------------  --------------------------
    PUT If-None-Match:* on a new key             200, ETag "<md5>"           200, ETag "<md5>"
    PUT If-None-Match:* on an existing key       412 PreconditionFailed      412 PreconditionFailed
    PUT If-Match:<current etag>                  200, new ETag               200, new ETag
    PUT If-Match:<etag without quotes>           200                         200
    PUT If-Match:<stale etag>                    412 PreconditionFailed      412 PreconditionFailed
    PUT If-Match:<etag> on a missing key     (*) 404 NoSuchKey               412 PreconditionFailed
    PUT If-Match:* on an existing key        (*) 412 PreconditionFailed      200 (overwrites)
    PUT If-Match:* on a missing key          (*) 404 NoSuchKey               412 PreconditionFailed
    GetObject on a missing key                   404 NoSuchKey               404 NoSuchKey
    HeadObject on a missing key                  404 "404" (no body)         404 "404" (no body)
    HeadBucket on a missing bucket               404 "404" (no body)         404 "404" (no body)
    PutObject / PUT If-None-Match:* / GetObject
      / ListObjectsV2 on a missing bucket        404 NoSuchBucket            404 NoSuchBucket
    ListObjectsV2 Prefix + MaxKeys=2 paging      same pages, KeyCount, IsTruncated, tokens
    ListObjectsV2 Delimiter / StartAfter         same                        same
    PUT ServerSideEncryption=AES256              200, echoes AES256;         200, echoes AES256;
                                                 HeadObject shows AES256     HeadObject shows AES256
    8 threads race If-None-Match:* on one key    exactly 1 wins, the rest 412 PreconditionFailed
    8 threads race If-Match:<same etag>          exactly 1 wins, the rest 412 PreconditionFailed
    wrong secret key                         (*) accepted (moto-server)  403 SignatureDoesNotMatch

Differences (*):
  * If-Match on a missing key: moto answers 404 NoSuchKey, SeaweedFS 412 PreconditionFailed.  The
    exporter must treat both as "precondition not met" (re-read, then decide).
  * If-Match:* (wildcard): SeaweedFS treats it as "the key exists" (200 on an existing key, 412 on a
    missing one); moto compares "*" literally with the ETag (412 on an existing key, 404 on a missing
    one).  Do not rely on If-Match:* for PutObject.
  * Credentials: moto accepts any access/secret key; SeaweedFS checks them (s3.config identity).
  * None of the servers ever answered 409 ConditionalRequestConflict (AWS documents it for concurrent
    conditional writes; the exporter must still handle it, these tests cannot produce it).
  * Latency under contention: when several conditional PUTs hit one key at once, SeaweedFS answers
    some losers only after ~1 s or ~2 s (it looks like a per-key lock retried once a second); moto
    answers at once.  Uncontended conditional PUTs take ~3 ms on SeaweedFS.
  * ServerSideEncryption=AES256 is accepted by all three, so no xfail was needed.
  * Entering moto's in-process mock (``mock_aws``) resets moto's global backends, which a
    ThreadedMotoServer in the same process shares: it wipes that server's buckets too (checked).
    Every test here therefore makes its own bucket and keeps no state across tests.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from s3servers import DEFAULT_REGION, S3Server, start_moto_server, start_seaweedfs

MOTO, MOTO_SERVER, SEAWEEDFS = "moto", "moto-server", "seaweedfs"
PRECONDITION_FAILED = (412, "PreconditionFailed")
NO_SUCH_KEY = (404, "NoSuchKey")
NO_SUCH_BUCKET = (404, "NoSuchBucket")
HEAD_NOT_FOUND = (404, "404")  # HEAD responses have no body, so botocore uses the status as the code

RACERS = 8
RACE_KEYS = 5


@dataclass
class Target:
    name: str
    client: Any  # a boto3 S3 client

    def new_bucket(self) -> str:
        bucket = f"contract-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=bucket)
        return bucket


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[S3Server]:
    with start_moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def seaweedfs_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(
    params=[
        pytest.param(MOTO, id=MOTO),
        pytest.param(MOTO_SERVER, id=MOTO_SERVER),
        pytest.param(SEAWEEDFS, id=SEAWEEDFS, marks=pytest.mark.seaweedfs),
    ]
)
def s3(request: pytest.FixtureRequest) -> Iterator[Target]:
    name: str = request.param
    if name == MOTO:
        with mock_aws():
            client = boto3.session.Session().client(
                "s3",
                region_name=DEFAULT_REGION,
                aws_access_key_id="mock-access",
                aws_secret_access_key="mock-secret",
            )
            yield Target(name, client)
        return
    server: S3Server = request.getfixturevalue("moto_s3" if name == MOTO_SERVER else "seaweedfs_s3")
    yield Target(name, server.client(max_pool_connections=RACERS * RACE_KEYS))


@pytest.fixture
def bucket(s3: Target) -> str:
    return s3.new_bucket()


# ------------------------------------------------------------------------------------------ helpers


def failure(call: Callable[[], Any]) -> tuple[int, str]:
    """(HTTP status, error Code) of a call that must fail with a ClientError."""
    with pytest.raises(ClientError) as info:
        call()
    response = info.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def quoted_md5(body: bytes) -> str:
    return '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'


def body_of(s3: Target, bucket: str, key: str) -> bytes:
    data: bytes = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def exists(s3: Target, bucket: str, key: str) -> bool:
    try:
        s3.client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise
    return True


def by_server(s3: Target, *, moto: Any, seaweedfs: Any) -> Any:
    return seaweedfs if s3.name == SEAWEEDFS else moto


# ------------------------------------------------------------------------------------------ If-None-Match


def test_if_none_match_creates_a_new_key(s3: Target, bucket: str) -> None:
    response = s3.client.put_object(Bucket=bucket, Key="a/new", Body=b"first", IfNoneMatch="*")

    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["ETag"] == quoted_md5(b"first")
    assert body_of(s3, bucket, "a/new") == b"first"


def test_if_none_match_on_an_existing_key_fails_412_and_keeps_the_object(s3: Target, bucket: str) -> None:
    s3.client.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")

    assert failure(lambda: s3.client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")) == (
        PRECONDITION_FAILED
    )
    assert body_of(s3, bucket, "k") == b"first"


def test_if_none_match_also_fails_on_a_key_written_without_condition(s3: Target, bucket: str) -> None:
    s3.client.put_object(Bucket=bucket, Key="k", Body=b"plain")

    assert failure(lambda: s3.client.put_object(Bucket=bucket, Key="k", Body=b"x", IfNoneMatch="*")) == (
        PRECONDITION_FAILED
    )


# ------------------------------------------------------------------------------------------ If-Match


def test_if_match_with_the_current_etag_replaces_the_object(s3: Target, bucket: str) -> None:
    etag = s3.client.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    assert s3.client.head_object(Bucket=bucket, Key="k")["ETag"] == etag

    response = s3.client.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=etag)

    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["ETag"] == quoted_md5(b"v2") != etag
    assert body_of(s3, bucket, "k") == b"v2"


def test_if_match_accepts_the_etag_without_quotes(s3: Target, bucket: str) -> None:
    etag = s3.client.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]

    s3.client.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=etag.strip('"'))

    assert body_of(s3, bucket, "k") == b"v2"


def test_if_match_with_a_stale_etag_fails_412_and_keeps_the_object(s3: Target, bucket: str) -> None:
    stale = s3.client.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    s3.client.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=stale)

    assert failure(lambda: s3.client.put_object(Bucket=bucket, Key="k", Body=b"v3", IfMatch=stale)) == (
        PRECONDITION_FAILED
    )
    assert body_of(s3, bucket, "k") == b"v2"


def test_if_match_on_a_missing_key(s3: Target, bucket: str) -> None:
    """moto: 404 NoSuchKey; SeaweedFS: 412 PreconditionFailed.  Either way nothing is written."""
    some_etag = quoted_md5(b"whatever")

    observed = failure(lambda: s3.client.put_object(Bucket=bucket, Key="missing", Body=b"x", IfMatch=some_etag))

    assert observed == by_server(s3, moto=NO_SUCH_KEY, seaweedfs=PRECONDITION_FAILED)
    assert not exists(s3, bucket, "missing")


def test_if_match_wildcard_differs_between_servers(s3: Target, bucket: str) -> None:
    """If-Match:* on PutObject: SeaweedFS means "exists", moto compares "*" with the ETag literally."""
    s3.client.put_object(Bucket=bucket, Key="there", Body=b"v1")

    def put_existing() -> Any:
        return s3.client.put_object(Bucket=bucket, Key="there", Body=b"v2", IfMatch="*")

    def put_missing() -> Any:
        return s3.client.put_object(Bucket=bucket, Key="missing", Body=b"v2", IfMatch="*")

    if s3.name == SEAWEEDFS:
        assert put_existing()["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert body_of(s3, bucket, "there") == b"v2"
        assert failure(put_missing) == PRECONDITION_FAILED
    else:
        assert failure(put_existing) == PRECONDITION_FAILED
        assert body_of(s3, bucket, "there") == b"v1"
        assert failure(put_missing) == NO_SUCH_KEY
    assert not exists(s3, bucket, "missing")


# ------------------------------------------------------------------------------------------ missing things


def test_get_and_head_of_a_missing_key(s3: Target, bucket: str) -> None:
    assert failure(lambda: s3.client.get_object(Bucket=bucket, Key="nope")) == NO_SUCH_KEY
    assert failure(lambda: s3.client.head_object(Bucket=bucket, Key="nope")) == HEAD_NOT_FOUND


def test_missing_bucket(s3: Target) -> None:
    missing = f"missing-{uuid.uuid4().hex[:16]}"
    client = s3.client

    assert failure(lambda: client.head_bucket(Bucket=missing)) == HEAD_NOT_FOUND
    assert failure(lambda: client.put_object(Bucket=missing, Key="k", Body=b"x")) == NO_SUCH_BUCKET
    assert failure(lambda: client.put_object(Bucket=missing, Key="k", Body=b"x", IfNoneMatch="*")) == (NO_SUCH_BUCKET)
    assert failure(lambda: client.get_object(Bucket=missing, Key="k")) == NO_SUCH_BUCKET
    assert failure(lambda: client.list_objects_v2(Bucket=missing)) == NO_SUCH_BUCKET
    # ...and the failed writes did not create it (SeaweedFS runs with -s3.autoCreateBucket=false).
    assert failure(lambda: client.head_bucket(Bucket=missing)) == HEAD_NOT_FOUND


def test_head_bucket_of_an_existing_bucket(s3: Target, bucket: str) -> None:
    assert s3.client.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


# ------------------------------------------------------------------------------------------ listing


def test_list_objects_v2_prefix_and_pagination(s3: Target, bucket: str) -> None:
    for key in ("p/a/1", "p/a/2", "p/b/3", "p/c", "q/1", "pz"):
        s3.client.put_object(Bucket=bucket, Key=key, Body=b"x")

    pages: list[tuple[list[str], int, bool, bool]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": "p/", "MaxKeys": 2}
    while True:
        page = s3.client.list_objects_v2(**kwargs)
        token = page.get("NextContinuationToken")
        pages.append(([o["Key"] for o in page.get("Contents", [])], page["KeyCount"], page["IsTruncated"], bool(token)))
        if not page["IsTruncated"]:
            break
        kwargs["ContinuationToken"] = token

    assert pages == [(["p/a/1", "p/a/2"], 2, True, True), (["p/b/3", "p/c"], 2, False, False)]

    paginator = s3.client.get_paginator("list_objects_v2")
    keys = [o["Key"] for page in paginator.paginate(Bucket=bucket, Prefix="p/", PaginationConfig={"PageSize": 2})
            for o in page.get("Contents", [])]  # fmt: skip
    assert keys == ["p/a/1", "p/a/2", "p/b/3", "p/c"]


def test_list_objects_v2_delimiter_start_after_and_empty(s3: Target, bucket: str) -> None:
    for key in ("p/a/1", "p/a/2", "p/b/3", "p/c"):
        s3.client.put_object(Bucket=bucket, Key=key, Body=b"x")

    grouped = s3.client.list_objects_v2(Bucket=bucket, Prefix="p/", Delimiter="/")
    assert [o["Key"] for o in grouped["Contents"]] == ["p/c"]
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["p/a/", "p/b/"]

    after = s3.client.list_objects_v2(Bucket=bucket, Prefix="p/a/", StartAfter="p/a/1")
    assert [o["Key"] for o in after["Contents"]] == ["p/a/2"]

    empty = s3.client.list_objects_v2(Bucket=bucket, Prefix="nothing/")
    assert "Contents" not in empty
    assert empty["KeyCount"] == 0
    assert empty["IsTruncated"] is False


# ------------------------------------------------------------------------------------------ SSE


def test_server_side_encryption_aes256_is_accepted(s3: Target, bucket: str) -> None:
    put = s3.client.put_object(Bucket=bucket, Key="enc", Body=b"secret", ServerSideEncryption="AES256")
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert put["ServerSideEncryption"] == "AES256"
    assert s3.client.head_object(Bucket=bucket, Key="enc")["ServerSideEncryption"] == "AES256"
    assert body_of(s3, bucket, "enc") == b"secret"

    conditional = s3.client.put_object(
        Bucket=bucket, Key="enc2", Body=b"secret", ServerSideEncryption="AES256", IfNoneMatch="*"
    )
    assert conditional["ServerSideEncryption"] == "AES256"
    assert (
        failure(
            lambda: s3.client.put_object(
                Bucket=bucket, Key="enc2", Body=b"again", ServerSideEncryption="AES256", IfNoneMatch="*"
            )
        )
        == PRECONDITION_FAILED
    )


# ------------------------------------------------------------------------------------------ races


Outcome = tuple[int, str] | None  # None: the put succeeded; else (status, error code)


def race_puts(s3: Target, bucket: str, puts: dict[str, list[dict[str, Any]]]) -> dict[str, list[Outcome]]:
    """Run every put_object (key -> list of extra kwargs) in its own thread, all released at once.

    All keys race at the same time, so a slow loser on one key does not add up across keys.
    """
    jobs = [(key, index, extra) for key, extras in puts.items() for index, extra in enumerate(extras)]
    outcomes: dict[str, list[Outcome]] = {key: [None] * len(extras) for key, extras in puts.items()}
    barrier = threading.Barrier(len(jobs))

    def run(key: str, index: int, extra: dict[str, Any]) -> None:
        barrier.wait(timeout=30)
        try:
            s3.client.put_object(Bucket=bucket, Key=key, **extra)
        except ClientError as exc:
            error = exc.response
            outcomes[key][index] = (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"])

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racing put_object hung"
    return outcomes


def assert_one_winner(s3: Target, bucket: str, key: str, outcomes: list[Outcome], bodies: list[bytes]) -> None:
    winners = [i for i, outcome in enumerate(outcomes) if outcome is None]
    assert len(winners) == 1, f"{key}: {len(winners)} of {len(outcomes)} writers won"
    # Real S3 may also answer 409 ConditionalRequestConflict to a loser; none of these servers does.
    assert [o for o in outcomes if o is not None] == [PRECONDITION_FAILED] * (len(outcomes) - 1)
    assert body_of(s3, bucket, key) == bodies[winners[0]]


def test_racing_if_none_match_exactly_one_wins(s3: Target, bucket: str) -> None:
    bodies = [f"writer {i}".encode() for i in range(RACERS)]
    keys = [f"race/{n}" for n in range(RACE_KEYS)]

    outcomes = race_puts(s3, bucket, {key: [{"Body": b, "IfNoneMatch": "*"} for b in bodies] for key in keys})

    for key in keys:
        assert_one_winner(s3, bucket, key, outcomes[key], bodies)


def test_racing_if_match_on_the_same_etag_exactly_one_wins(s3: Target, bucket: str) -> None:
    bodies = [f"update {i}".encode() for i in range(RACERS)]
    keys = [f"cas/{n}" for n in range(RACE_KEYS)]
    etags = {key: s3.client.put_object(Bucket=bucket, Key=key, Body=b"base")["ETag"] for key in keys}

    outcomes = race_puts(s3, bucket, {key: [{"Body": b, "IfMatch": etags[key]} for b in bodies] for key in keys})

    for key in keys:
        assert_one_winner(s3, bucket, key, outcomes[key], bodies)


# ------------------------------------------------------------------------------------------ the helpers


@pytest.mark.parametrize("which", [MOTO_SERVER, pytest.param(SEAWEEDFS, marks=pytest.mark.seaweedfs)])
def test_credentials(which: str, request: pytest.FixtureRequest) -> None:
    """SeaweedFS enforces the configured identity; moto accepts anything."""
    server: S3Server = request.getfixturevalue("moto_s3" if which == MOTO_SERVER else "seaweedfs_s3")
    assert server.endpoint_url.startswith("http://127.0.0.1:")
    wrong = boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key + "-wrong",
    )
    if which == SEAWEEDFS:
        assert failure(wrong.list_buckets) == (403, "SignatureDoesNotMatch")
    else:
        assert wrong.list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200


@pytest.mark.seaweedfs
def test_a_second_seaweedfs_runs_side_by_side_and_stops_cleanly(seaweedfs_s3: S3Server, tmp_path: Path) -> None:
    """Free ports everywhere: a second instance starts while the first runs, and leaves nothing behind."""
    first = seaweedfs_s3.client()
    first.create_bucket(Bucket="only-in-first")
    started = time.monotonic()

    with start_seaweedfs(tmp_path) as second:
        assert time.monotonic() - started < 30
        assert second.endpoint_url != seaweedfs_s3.endpoint_url
        assert "only-in-first" not in [b["Name"] for b in second.client().list_buckets()["Buckets"]]
        pid = second.pid
        assert pid is not None

    assert not second.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "only-in-first" in [b["Name"] for b in first.list_buckets()["Buckets"]]
    second.stop()  # idempotent
