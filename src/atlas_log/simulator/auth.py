"""Authentication as Atlas does it: HTTP Digest (API keys) and OAuth client credentials (service accounts)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
import threading
import time
from dataclasses import dataclass

REALM = "MMS Public API"
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class AuthOutcome:
    """Who the caller is (principal), or why not (failure) and which challenge to send."""

    principal: str | None
    failure: str = ""  # "" when authenticated; otherwise a detail message
    challenge: str | None = None  # WWW-Authenticate value to send with the 401


def parse_auth_params(text: str) -> dict[str, str]:
    return {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(text)}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class DigestVerifier:
    """Issues self-validating nonces (time + HMAC) and checks Digest (MD5, qop=auth) answers."""

    def __init__(self, username: str, password: str, nonce_ttl_s: float) -> None:
        self.username = username
        self.password = password
        self.nonce_ttl_s = nonce_ttl_s
        self._key = secrets.token_bytes(32)
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def new_nonce(self) -> str:
        raw = struct.pack(">d", time.time()) + secrets.token_bytes(8)
        mac = hmac.new(self._key, raw, hashlib.sha256).digest()[:12]
        return base64.b64encode(raw + mac).decode()

    def challenge(self, stale: bool = False) -> str:
        return (
            f'Digest realm="{REALM}", domain="", nonce="{self.new_nonce()}", algorithm=MD5, qop="auth", '
            f"stale={'true' if stale else 'false'}"
        )

    def _nonce_age(self, nonce: str) -> float | None:
        try:
            blob = base64.b64decode(nonce.encode(), validate=True)
        except (ValueError, TypeError):
            return None
        if len(blob) != 28:
            return None
        raw, mac = blob[:16], blob[16:]
        if not hmac.compare_digest(mac, hmac.new(self._key, raw, hashlib.sha256).digest()[:12]):
            return None
        return time.time() - float(struct.unpack(">d", raw[:8])[0])

    def verify(self, header: str, method: str, target: str) -> AuthOutcome:
        params = parse_auth_params(header[len("digest") :])
        bad = AuthOutcome(None, "You are not authorized for this resource.", self.challenge())
        nonce = params.get("nonce", "")
        age = self._nonce_age(nonce)
        if age is None:
            return bad
        if params.get("username") != self.username or params.get("realm") != REALM:
            return bad
        if params.get("uri") != target or params.get("qop") != "auth":
            return bad
        if params.get("algorithm", "MD5").upper() != "MD5":
            return bad
        nc, cnonce = params.get("nc", ""), params.get("cnonce", "")
        if not re.fullmatch(r"[0-9a-fA-F]{8}", nc) or not cnonce:
            return bad
        ha1 = _md5(f"{self.username}:{REALM}:{self.password}")
        ha2 = _md5(f"{method}:{target}")
        expected = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        if not hmac.compare_digest(expected, params.get("response", "")):
            return bad
        if age > self.nonce_ttl_s:
            return AuthOutcome(None, "You are not authorized for this resource.", self.challenge(stale=True))
        with self._lock:
            seen = self._seen.setdefault(nonce, set())
            token = f"{nc.lower()}:{cnonce}"
            if token in seen:  # a replayed answer
                return bad
            seen.add(token)
            if len(self._seen) > 10_000:
                self._purge()
        return AuthOutcome(self.username)

    def _purge(self) -> None:
        for nonce in list(self._seen):
            age = self._nonce_age(nonce)
            if age is None or age > self.nonce_ttl_s:
                del self._seen[nonce]


class TokenIssuer:
    """OAuth 2.0 client credentials for one service account; tokens are random and opaque."""

    def __init__(self, client_id: str, client_secret: str, ttl_s: float) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.ttl_s = ttl_s
        self._tokens: dict[str, float] = {}
        self._issued: list[str] = []
        self._lock = threading.Lock()

    def check_basic(self, header: str) -> str | None:
        """The client id when `Authorization: Basic ...` holds the right id and secret."""
        if not header.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        client_id, _, secret = decoded.partition(":")
        if hmac.compare_digest(client_id, self.client_id) and hmac.compare_digest(secret, self.client_secret):
            return client_id
        return None

    def issue(self) -> tuple[str, int]:
        token = "sim_at_" + secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + self.ttl_s
            self._issued.append(token)
        return token, round(self.ttl_s)

    def issued(self) -> list[str]:
        """Every token ever issued, expired or not (tests search logs and objects for them)."""
        with self._lock:
            return list(self._issued)

    def verify(self, header: str) -> AuthOutcome:
        token = header[7:].strip()
        with self._lock:
            expiry = self._tokens.get(token)
        if expiry is None or expiry <= time.time():
            return AuthOutcome(
                None,
                "The access token is invalid or has expired.",
                'Bearer realm="MMS Public API", error="invalid_token"',
            )
        return AuthOutcome(self.client_id)
