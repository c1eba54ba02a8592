"""A fake OpenID Connect issuer: a real HTTP server with discovery, a JWKS and ID tokens.

It serves `/.well-known/openid-configuration` and `/jwks` like a real identity provider, signs
ID tokens with RS256 keys named by `kid`, and can rotate those keys, so tests exercise the
service's discovery, caching and refresh-on-unknown-kid for real.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.fakes.background_server import BackgroundServer

CLIENT_ID = "tally-console"


class FakeIssuer:
    def __init__(self) -> None:
        self._server: BackgroundServer | None = None
        self.url = ""
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []  # kids in the JWKS, newest first
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.rotate_keys()

    def start(self) -> FakeIssuer:
        """Serve on 127.0.0.1 (a free port) from a thread of its own."""
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self._server = BackgroundServer(app)
        self.url = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def rotate_keys(self, *, keep_old: bool = False) -> str:
        """A new signing key becomes current; the old ones leave the JWKS unless kept."""
        kid = f"key-{uuid.uuid4().hex[:8]}"
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published = [kid, *self.published] if keep_old else [kid]
        return kid

    @property
    def current_kid(self) -> str:
        return self.published[0]

    def id_token(
        self,
        email: str,
        *,
        subject: str | None = None,
        audience: str | list[str] = CLIENT_ID,
        issuer: str | None = None,
        expires_in: int = 300,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        **claims: Any,
    ) -> str:
        """An ID token as the issuer would sign it; override anything to forge a bad one."""
        now = int(time.time())
        kid = kid or self.current_kid
        payload: dict[str, Any] = {
            "iss": issuer or self.url,
            "aud": audience,
            "sub": subject or f"sub-{email}",
            "email": email,
            "email_verified": True,
            "iat": now,
            "exp": now + expires_in,
            **claims,
        }
        signing_key = key or self.keys[kid]
        return jwt.encode(payload, signing_key, algorithm="RS256", headers={"kid": kid})

    async def _discovery(self, _request: web.Request) -> web.Response:
        self.discovery_requests += 1
        return web.json_response(
            {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/jwks",
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "id_token_signing_alg_values_supported": ["RS256"],
                "subject_types_supported": ["public"],
                "response_types_supported": ["code"],
            }
        )

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.jwks_requests += 1
        keys = []
        for kid in self.published:
            jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys})
