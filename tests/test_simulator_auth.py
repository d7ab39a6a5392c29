"""Authentication and access as Atlas does it: Digest, service-account tokens, revoked and deleted projects."""

from __future__ import annotations

import base64
import hashlib
import time

import httpx
from conftest_simulator import ACCEPT, V2, SpecChecker, digest_client, small_config, spec_checker

from atlas_log.simulator import Simulator
from atlas_log.simulator.auth import parse_auth_params

__all__ = ["spec_checker"]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _digest_header(challenge: str, user: str, password: str, uri: str, nc: int = 1) -> str:
    params = parse_auth_params(challenge[len("Digest") :])
    ha1 = _md5(f"{user}:{params['realm']}:{password}")
    ha2 = _md5(f"GET:{uri}")
    cnonce = "0a4f113b"
    response = _md5(f"{ha1}:{params['nonce']}:{nc:08x}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", uri="{uri}", '
        f'response="{response}", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce="{cnonce}"'
    )


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def test_digest_challenge_and_httpx_digest_auth() -> None:
    with Simulator(small_config(events=20)) as sim:
        anonymous = httpx.get(f"{sim.base_url}{V2}/orgs", headers=ACCEPT)
        assert anonymous.status_code == 401
        challenge = anonymous.headers["WWW-Authenticate"]
        assert challenge.startswith('Digest realm="MMS Public API", domain="", nonce="')
        assert challenge.endswith('algorithm=MD5, qop="auth", stale=false')
        with digest_client(sim) as client:
            assert client.get(f"{V2}/orgs").status_code == 200
            assert client.get(f"{V2}/groups").status_code == 200


def test_wrong_password_is_401_user_unauthorized(spec_checker: SpecChecker) -> None:
    with Simulator(small_config(events=20)) as sim:
        auth = httpx.DigestAuth(sim.config.public_key, "wrong")
        response = httpx.get(f"{sim.base_url}{V2}/orgs", headers=ACCEPT, auth=auth)
        assert response.status_code == 401
        assert "WWW-Authenticate" in response.headers
        assert spec_checker.check("GET", f"{V2}/orgs", response)["errorCode"] == "USER_UNAUTHORIZED"


def test_expired_nonce_gets_a_stale_challenge_and_replays_are_refused() -> None:
    with Simulator(small_config(events=20, nonce_ttl_s=0.3)) as sim:
        uri = f"{V2}/orgs"
        url = sim.base_url + uri
        challenge = httpx.get(url, headers=ACCEPT).headers["WWW-Authenticate"]
        header = _digest_header(challenge, sim.config.public_key, sim.config.private_key, uri)
        assert httpx.get(url, headers={**ACCEPT, "Authorization": header}).status_code == 200
        replay = httpx.get(url, headers={**ACCEPT, "Authorization": header})
        assert replay.status_code == 401
        time.sleep(0.4)
        later = _digest_header(challenge, sim.config.public_key, sim.config.private_key, uri, nc=2)
        stale = httpx.get(url, headers={**ACCEPT, "Authorization": later})
        assert stale.status_code == 401
        assert stale.headers["WWW-Authenticate"].endswith("stale=true")
        with digest_client(sim) as client:  # httpx answers the fresh challenge by itself
            assert client.get(uri).status_code == 200
            time.sleep(0.4)
            assert client.get(uri).status_code == 200


def test_service_account_token_flow_and_token_rate_limit() -> None:
    with Simulator(small_config(events=20, token_ttl_s=1.0)) as sim:
        cfg = sim.config
        token_url = f"{sim.base_url}/api/oauth/token"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        answer = httpx.post(
            token_url,
            headers={**form, "Authorization": _basic(cfg.client_id, cfg.client_secret)},
            content="grant_type=client_credentials",
        )
        assert answer.status_code == 200
        body = answer.json()
        assert set(body) == {"access_token", "expires_in", "token_type"} and body["token_type"] == "Bearer"
        assert body["expires_in"] == 1
        token = body["access_token"]
        assert cfg.client_secret not in token and cfg.client_id not in token
        bearer = {**ACCEPT, "Authorization": f"Bearer {token}"}
        assert httpx.get(f"{sim.base_url}{V2}/orgs", headers=bearer).status_code == 200
        unknown = httpx.get(f"{sim.base_url}{V2}/orgs", headers={**ACCEPT, "Authorization": "Bearer nope"})
        assert unknown.status_code == 401 and unknown.json()["errorCode"] == "USER_UNAUTHORIZED"
        time.sleep(1.1)
        assert httpx.get(f"{sim.base_url}{V2}/orgs", headers=bearer).status_code == 401
        wrong = httpx.post(
            token_url,
            headers={**form, "Authorization": _basic(cfg.client_id, "bad")},
            content="grant_type=client_credentials",
        )
        assert wrong.status_code == 401
        statuses = [
            httpx.post(
                token_url,
                headers={**form, "Authorization": _basic(cfg.client_id, cfg.client_secret)},
                content="grant_type=client_credentials",
            ).status_code
            for _ in range(10)
        ]
        assert statuses[:9] == [200] * 9 and statuses[9] == 429  # 10 per minute, one already used
        assert sim.stats()["tokens_issued"] == 10


def test_revoked_and_deleted_projects(spec_checker: SpecChecker) -> None:
    with Simulator(small_config(events=200, rate_limit_scale=0)) as sim:
        org_id = sim.orgs()[0]["id"]
        revoked, deleted, kept = (p["id"] for p in sim.projects())
        sim.revoke_access(revoked)
        sim.delete_project(deleted)
        assert [p["id"] for p in sim.projects()] == [kept]
        with digest_client(sim) as client:
            listed = client.get(f"{V2}/groups").json()
            assert [g["id"] for g in listed["results"]] == [kept] and listed["totalCount"] == 1
            in_org = client.get(f"{V2}/orgs/{org_id}/groups").json()
            assert [g["id"] for g in in_org["results"]] == [kept]
            path = f"{V2}/groups/{revoked}/events"
            response = client.get(path)
            assert response.status_code == 401
            assert spec_checker.check("GET", path, response)["errorCode"] == "NOT_IN_GROUP"
            path = f"{V2}/groups/{deleted}/events"
            response = client.get(path)
            assert response.status_code == 404
            assert spec_checker.check("GET", path, response)["errorCode"] == "GROUP_NOT_FOUND"
            org_feed = client.get(f"{V2}/orgs/{org_id}/events", params={"eventType": "GROUP_DELETED"}).json()
            assert deleted in {e.get("groupId") for e in org_feed["results"]}
        truth_groups = {e.get("groupId") for e in sim.ground_truth() if "orgId" not in e}
        assert truth_groups == {kept}
