"""Fixtures and helpers for the simulator tests: simulators on ephemeral ports and an Atlas spec checker.

The spec checker validates status, headers and bodies with openapi-core against `shared/atlas-api`, and accepts
exactly the deviations that real Atlas shows on the wire (and the recorded samples prove):
  * events whose eventTypeName is in the spec's type lists but that no subtype of the response `oneOf` accepts
    (org GROUP_CREATED/GROUP_DELETED, project TENANT_RESTORE_*_AUDIT...);
  * error bodies whose `parameters` items are strings, where the spec says objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS30Validator

from atlas_log.simulator import Simulator, SimulatorConfig

__all__ = [
    "ACCEPT",
    "MEDIA",
    "PINNED_END",
    "SAMPLES",
    "SHARED",
    "SUBSET",
    "V2",
    "SpecChecker",
    "digest_client",
    "read_sample",
    "shared_sim",
    "small_config",
    "spec_checker",
]

SHARED = Path(__file__).resolve().parents[2] / "shared" / "atlas-api"
SUBSET = SHARED / "events-subset.yaml"
SAMPLES = SHARED / "samples"
MEDIA = "application/vnd.atlas.2023-01-01+json"
ACCEPT = {"Accept": MEDIA}
V2 = "/api/atlas/v2"
PINNED_END = datetime(2026, 8, 10, 3, 6, 47, tzinfo=UTC)


def _load_json(value: bytes, **parameters: str) -> Any:
    """The deserializer openapi-core calls for the versioned media type (parameters such as charset ignored)."""
    return json.loads(value)


def read_sample(name: str) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body) of a recorded response."""
    text = (SAMPLES / name).read_text(encoding="utf-8")
    head, _, body = text.partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


def _python_patterns(node: Any) -> None:
    """Rewrite the spec's `\\p{L}`/`\\p{N}` classes (Java regex) into what Python's `re` reads (`\\w`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                node[key] = value.replace("\\p{L}", "\\w").replace("\\p{N}", "\\w")
            else:
                _python_patterns(value)
    elif isinstance(node, list):
        for item in node:
            _python_patterns(item)


class SpecChecker:
    """Validates simulator answers against the Atlas spec, allowing only the known wire deviations."""

    def __init__(self, spec_path: Path) -> None:
        config = Config(spec_validator_cls=None, extra_media_type_deserializers={MEDIA: _load_json})
        with spec_path.open(encoding="utf-8") as handle:
            spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
        _python_patterns(spec)
        self.api = OpenAPI.from_dict(spec, config=config)
        self.components = spec["components"]
        self.event_view = {"org": self._validator("EventViewForOrg"), "group": self._validator("EventViewForNdsGroup")}
        self.api_error = self._validator("ApiError")
        self.type_enum = {"org": self._enum("EventTypeForOrg"), "group": self._enum("EventTypeForNdsGroup")}
        self.deviations = {feed: self._deviation_types(feed) for feed in ("org", "group")}

    def _validator(self, name: str) -> OAS30Validator:
        return OAS30Validator({"components": self.components, "allOf": [{"$ref": f"#/components/schemas/{name}"}]})

    def _enum(self, name: str) -> set[str]:
        schema = self.components["schemas"][name]
        out: set[str] = set(schema.get("enum", []))
        for branch in schema.get("oneOf", []):
            out.update(branch.get("enum", []))
        return out

    def _deviation_types(self, feed: str) -> set[str]:
        """Documented types whose name no event subtype of the response oneOf accepts (its eventTypeName schema)."""
        union = "EventViewForOrg" if feed == "org" else "EventViewForNdsGroup"
        name_validators = []
        for branch in self.components["schemas"][union]["oneOf"]:
            view = self.components["schemas"][branch["$ref"].rsplit("/", 1)[-1]]
            name_schema = view["properties"]["eventTypeName"]
            name_validators.append(OAS30Validator({"components": self.components, "allOf": [name_schema]}))
        return {name for name in self.type_enum[feed] if not any(v.is_valid(name) for v in name_validators)}

    def check_event(self, feed: str, event: dict[str, Any]) -> bool:
        """Validate one event; True when it is valid, False when it is exactly a known deviation; else fail."""
        errors = list(self.event_view[feed].iter_errors(event))
        if not errors:
            return True
        name = event.get("eventTypeName")
        assert name in self.deviations[feed], f"{feed} event fails the spec: {errors[0].message[:300]} ({event})"
        # the only failure is the top-level oneOf; the common fields still satisfy the default view
        assert all(list(e.absolute_path) == [] for e in errors), [e.message[:200] for e in errors]
        default = "DefaultEventViewForOrg" if feed == "org" else "DefaultEventViewForNdsGroup"
        relaxed = dict(event, eventTypeName=next(iter(sorted(self.type_enum[feed] - self.deviations[feed]))))
        schema = self.components["schemas"][default]
        props = {k: v for k, v in schema["properties"].items() if k != "eventTypeName"}
        loose = OAS30Validator({"components": self.components, "type": "object", "properties": props})
        assert loose.is_valid(relaxed), event
        return False

    def check(self, method: str, path: str, response: httpx.Response, feed: str | None = None) -> Any:
        """Validate a response (status, headers, body); return the parsed body."""
        content_type = response.headers.get("content-type", "")
        body = response.json()
        status = response.status_code
        headers = dict(response.headers)
        if status >= 400:
            assert content_type == "application/json", content_type
            assert response.headers.get("x-error-code") == body["errorCode"]
            assert set(body) == {"detail", "error", "errorCode", "parameters", "reason"}, body
            assert body["error"] == status
            for err in self.api_error.iter_errors(body):
                # the one wire deviation of error bodies: parameters are strings, the spec says objects
                assert list(err.absolute_path)[:1] == ["parameters"] and err.validator == "type", err.message
                assert isinstance(err.instance, str)
            sent = dict(body, parameters=[])
            if status in (406, 405):  # not declared by the spec's operations: body schema only
                return body
        else:
            assert content_type == f"{MEDIA};charset=utf-8", content_type
            sent = body
            if isinstance(body, dict) and "results" in body and feed is not None:
                for event in body["results"]:
                    self.check_event(feed, event)
                sent = dict(body, results=[])
            elif feed is not None and not self.check_event(feed, body):
                stand_in = "TEAM_CREATED" if feed == "org" else "CLUSTER_CREATED"
                sent = dict(body, eventTypeName=stand_in)
        request = MockRequest("https://cloud.mongodb.com", method.lower(), path)
        mock = MockResponse(json.dumps(sent).encode(), status_code=status, headers=headers, content_type=content_type)
        self.api.validate_response(request, mock)
        return body


@cache
def _checker() -> SpecChecker:
    return SpecChecker(SUBSET)


@pytest.fixture(scope="session")
def spec_checker() -> SpecChecker:
    if not SUBSET.exists():
        pytest.skip(f"Atlas reference material not found at {SHARED}")
    return _checker()


def small_config(**overrides: Any) -> SimulatorConfig:
    values: dict[str, Any] = {"events": 1500, "projects_per_org": 3, "burst_second_events": 600}
    values.update(overrides)
    return SimulatorConfig(**values)


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[Simulator]:
    """A read-only simulator shared by a module (no rate limits, pinned history)."""
    with Simulator(small_config(rate_limit_scale=0.0, history_end=PINNED_END)) as sim:
        yield sim


def digest_client(sim: Simulator, **kwargs: Any) -> httpx.Client:
    cfg = sim.config
    return httpx.Client(
        base_url=sim.base_url,
        auth=httpx.DigestAuth(cfg.public_key, cfg.private_key),
        headers=ACCEPT,
        timeout=10.0,
        **kwargs,
    )
