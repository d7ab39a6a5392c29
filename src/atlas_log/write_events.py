"""Sinks: where exported objects and the checkpoint live (an S3 bucket or a local folder), and the object format.

Objects are gzip JSON Lines: one event per line exactly as Atlas returned it, then heartbeat lines. Writes are
create-only (a key is written once, by whoever gets there first) and the checkpoint is saved with compare-and-swap,
which is what the delivery guarantee in ``docs/guarantees.md`` rests on.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import logging
import os
import random
import tempfile
import time
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from atlas_log._time import format_atlas_time
from atlas_log.config import Config, S3Location
from atlas_log.errors import CheckpointConflict, DestinationError

log = logging.getLogger(__name__)

HEARTBEAT_TYPE = "@ATLAS_LOG_TO_S3_HEARTBEAT"
CONTENT_TYPE = "application/x-ndjson"
STATE_DIR = "_state/"


class Sink(Protocol):
    """A destination. Small enough to fake in ten lines; contract-tested against every implementation."""

    def describe(self) -> str: ...

    def put_new(self, key: str, body: bytes) -> bool:
        """Create ``key`` with ``body`` durably; False (and no change) when the key already exists."""
        ...

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        ...

    def load_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The bytes and an opaque version (an ETag), or None when absent."""
        ...

    def save_versioned(self, key: str, body: bytes, expected: str | None) -> str:
        """Compare-and-swap: replace only if the current version is ``expected`` (None: only if absent).

        Returns the new version; raises ``CheckpointConflict`` when someone else changed it first.
        """
        ...

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (relative to the sink's own prefix), in lexical order."""
        ...


# ------------------------------------------------------------------------------------------- the object format
class ObjectWriter:
    """Builds one object: events streamed through gzip as they come, so memory holds compressed bytes only.

    Lines wait in a short list (about 256 KiB) and are joined and compressed in one call: one copy per line (the
    join), no per-line concatenation, and zlib sees large inputs. ``level`` trades CPU for size: at the default 3,
    deflate runs about three times as fast as at 6 on Atlas events, for objects about a quarter larger
    (docs/benchmarks.md).
    """

    FLUSH_BYTES = 256 * 1024

    def __init__(self, level: int = 3) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container
        self._chunks: list[bytes] = []
        self._pending: list[bytes] = []
        self._pending_len = 0
        self.events = 0
        self.raw_bytes = 0

    def _push(self, line: bytes) -> None:
        self._pending.append(line)
        self._pending_len += len(line) + 1
        self.raw_bytes += len(line) + 1
        if self._pending_len >= self.FLUSH_BYTES:
            self._flush_pending()

    def _flush_pending(self) -> None:
        if self._pending:
            self._pending.append(b"")  # the last line's newline
            out = self._compressor.compress(b"\n".join(self._pending))
            if out:
                self._chunks.append(out)
            self._pending.clear()
            self._pending_len = 0

    def add_events(self, lines: list[bytes]) -> None:
        """Many events at once (each serialized, no trailing newline), oldest first."""
        size = sum(map(len, lines)) + len(lines)
        self._pending.extend(lines)
        self._pending_len += size
        self.raw_bytes += size
        self.events += len(lines)
        if self._pending_len >= self.FLUSH_BYTES:
            self._flush_pending()

    def add_json(self, record: dict[str, Any]) -> None:
        self._push(dump_line(record))

    def finish(self) -> bytes:
        self._flush_pending()
        self._chunks.append(self._compressor.flush())
        body = b"".join(self._chunks)
        self._chunks = []
        return body


# One encoder for every line: ``json.dumps`` with options builds a new JSONEncoder on each call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dump_line(record: dict[str, Any]) -> bytes:
    """One JSON line: compact, UTF-8, keys in the order Atlas sent them."""
    try:
        return _encode(record).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800" is valid JSON but has no UTF-8 form): keep it as the escape Atlas sent.
        return json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def append_heartbeat(
    writer: ObjectWriter,
    *,
    now: datetime,
    scope: dict[str, Any],
    watermark: dict[str, Any],
    count: int,
    seq: int,
    exporter: str,
) -> dict[str, Any]:
    """The original's heartbeat record, plus the scope, its new watermark and the number of events in this object.

    Returns the record as written, which is what a commit applies to the checkpoint.
    """
    record = {
        "created": format_atlas_time(now),
        "eventTypeName": HEARTBEAT_TYPE,
        "scope": scope,
        "watermark": watermark,
        "count": count,
        "seq": seq,
        "exporter": exporter,
    }
    writer.add_json(record)
    return record


def read_object_lines(body: bytes) -> Iterator[bytes]:
    """The lines of a gzip JSON Lines object; ``DestinationError`` when it is not readable gzip."""
    try:
        data = gzip.decompress(body)
    except (OSError, EOFError, zlib.error) as exc:
        raise DestinationError(f"object is not readable gzip ({exc})") from None
    for line in data.split(b"\n"):
        if line:
            yield line


def read_heartbeats(body: bytes) -> list[dict[str, Any]]:
    marker = HEARTBEAT_TYPE.encode()
    out = []
    for line in read_object_lines(body):
        if marker in line:
            record = json.loads(line)
            if record.get("eventTypeName") == HEARTBEAT_TYPE:
                out.append(record)
    return out


def iter_objects(sink: Sink) -> Iterator[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
    """Every exported object under the sink, oldest first: (key, events, heartbeat lines)."""
    for key in sink.list_keys("dt="):
        if not key.endswith(".jsonl.gz"):
            continue
        body = sink.get(key)
        if body is None:
            continue
        events: list[dict[str, Any]] = []
        heartbeats: list[dict[str, Any]] = []
        for line in read_object_lines(body):
            record = json.loads(line)
            (heartbeats if record.get("eventTypeName") == HEARTBEAT_TYPE else events).append(record)
        yield key, events, heartbeats


def object_key(seq: int, when: datetime, shard: str = "") -> str:
    """Hive-style date partition, then a name made unique by the object's sequence number (and shard)."""
    return f"dt={when:%Y-%m-%d}/atlas-events-{shard}{seq:012d}.jsonl.gz"


# ------------------------------------------------------------------------------------------------- local folder
class LocalSink:
    """A folder: create-only by write-to-temp + fsync + link (fails if the name exists), CAS under an flock."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise DestinationError(f"refusing a key outside the output folder: {key!r}")
        return path

    def _write_temp(self, directory: Path, body: bytes) -> Path:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(body)
                    fh.flush()
                    os.fsync(fh.fileno())
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise DestinationError(f"cannot write in {directory}: {exc.strerror or exc}") from None
        return Path(tmp)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put_new(self, key: str, body: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path.parent, body)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise DestinationError(f"cannot create {path}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._fsync_dir(path.parent)
        return True

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DestinationError(f"cannot read {key}: {exc.strerror or exc}") from None

    def load_versioned(self, key: str) -> tuple[bytes, str] | None:
        body = self.get(key)
        return None if body is None else (body, hashlib.sha256(body).hexdigest())

    def save_versioned(self, key: str, body: bytes, expected: str | None) -> str:
        path = self._path(key)
        tmp = self._write_temp(path.parent, body)
        try:
            with open(path.parent / ".lock", "a+b") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                current = self.load_versioned(key)
                current_version = None if current is None else current[1]
                if current_version != expected:
                    raise CheckpointConflict(f"{path} was changed by another exporter")
                os.replace(tmp, path)
                self._fsync_dir(path.parent)
        except OSError as exc:
            raise DestinationError(f"cannot save {path}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return hashlib.sha256(body).hexdigest()

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self.root.resolve()
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith("."):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/")
                if rel.startswith(prefix):
                    found.append(rel)
        yield from sorted(found)


# ----------------------------------------------------------------------------------------------------- S3
class S3Sink:
    """An S3 bucket (or S3-compatible server): create-only with If-None-Match, CAS with If-Match on the ETag."""

    def __init__(
        self,
        location: S3Location,
        *,
        client: Any = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        endpoint_url: str | None = None,
        ca_bundle: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.location = location
        if client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                verify=ca_bundle or None,
                config=BotoConfig(
                    retries={"mode": "standard", "max_attempts": 6},
                    connect_timeout=timeout_s,
                    read_timeout=timeout_s,
                ),
            )
        self._s3 = client
        self._extra: dict[str, str] = {}
        if sse:
            self._extra["ServerSideEncryption"] = sse
        if sse_kms_key_id:
            self._extra["SSEKMSKeyId"] = sse_kms_key_id

    def describe(self) -> str:
        return str(self.location)

    def _key(self, key: str) -> str:
        return self.location.prefix + key

    def _fail(self, action: str, key: str, exc: Exception) -> DestinationError:
        code, status = _s3_error(exc)
        hints = {
            "NoSuchBucket": "the bucket does not exist: create it or fix --output",
            "AccessDenied": "the AWS identity lacks permission: see docs/security.md for the policy",
            "InvalidAccessKeyId": "the AWS access key is not valid",
            "SignatureDoesNotMatch": "the AWS secret key does not match the access key",
        }
        hint = hints.get(code or "", "")
        text = f"S3 {action} of s3://{self.location.bucket}/{self._key(key)} failed: {code or type(exc).__name__}"
        if status:
            text += f" (HTTP {status})"
        return DestinationError(f"{text}; {hint}" if hint else text)

    def _put(self, key: str, body: bytes, **conditions: str) -> Any:
        content_type = CONTENT_TYPE if key.endswith(".jsonl.gz") else "application/json"
        for attempt in range(6):
            try:
                return self._s3.put_object(
                    Bucket=self.location.bucket,
                    Key=self._key(key),
                    Body=body,
                    ContentType=content_type,
                    **self._extra,
                    **conditions,
                )
            except Exception as exc:
                code, status = _s3_error(exc)
                if status == 409 or code == "ConditionalRequestConflict":
                    time.sleep(random.uniform(0, 0.2 * 2**attempt))  # a concurrent conditional write: retry
                    continue
                raise
        raise DestinationError(f"S3 kept answering 409 ConditionalRequestConflict for {self._key(key)}")

    def put_new(self, key: str, body: bytes) -> bool:
        try:
            self._put(key, body, IfNoneMatch="*")
        except DestinationError:
            raise
        except Exception as exc:
            code, status = _s3_error(exc)
            if status == 412 or code == "PreconditionFailed":
                return False
            raise self._fail("create", key, exc) from None
        return True

    def get(self, key: str) -> bytes | None:
        loaded = self.load_versioned(key)
        return None if loaded is None else loaded[0]

    def load_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            resp = self._s3.get_object(Bucket=self.location.bucket, Key=self._key(key))
            return resp["Body"].read(), str(resp["ETag"])
        except Exception as exc:
            code, status = _s3_error(exc)
            if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                return None
            raise self._fail("read", key, exc) from None

    def save_versioned(self, key: str, body: bytes, expected: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            resp = self._put(key, body, **condition)
        except DestinationError:
            raise
        except Exception as exc:
            code, status = _s3_error(exc)
            if status == 412 or code == "PreconditionFailed" or (expected is not None and code == "NoSuchKey"):
                raise CheckpointConflict(
                    f"s3://{self.location.bucket}/{self._key(key)} was changed by another exporter"
                ) from None
            raise self._fail("save", key, exc) from None
        return str(resp["ETag"])

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self._s3.get_paginator("list_objects_v2")
        full = self._key(prefix)
        try:
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    yield str(item["Key"])[len(self.location.prefix) :]
        except Exception as exc:
            raise self._fail("list", prefix, exc) from None


def _s3_error(exc: Exception) -> tuple[str | None, int | None]:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None, None
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return (str(code) if code is not None else None), (int(status) if status else None)


def open_sink(config: Config) -> Sink:
    if isinstance(config.output, S3Location):
        return S3Sink(
            config.output,
            sse=config.sse,
            sse_kms_key_id=config.sse_kms_key_id,
            endpoint_url=config.s3_endpoint_url,
            ca_bundle=config.ca_bundle,
            timeout_s=config.timeout_s,
        )
    return LocalSink(config.output)


def write_scope_events(writer: ObjectWriter, lines: list[bytes]) -> None:
    """Append one scope's new events (serialized, oldest first) to the object being built."""
    writer.add_events(lines)


# The seed's names: organization and project events go through the same path into one object per cycle.
write_org_events = write_scope_events
write_group_events = write_scope_events
