"""Single sign-on: verify an OpenID Connect ID token from the configured issuer.

The issuer's signing keys come from its JWKS, found through
`{issuer}/.well-known/openid-configuration` and cached for `TALLY_OIDC_JWKS_TTL_SECONDS`. A token
signed under a `kid` the cache does not know triggers a refetch (the issuer rotated its keys),
but at most once per `TALLY_OIDC_JWKS_REFRESH_MIN_SECONDS`, so a stream of forged tokens with
random `kid`s cannot turn Tally into a load generator against the issuer.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
import jwt
import msgspec

from tally.config import Settings
from tally.errors import ServiceUnavailable, Unauthorized
from tally.log import get_logger

log = get_logger(__name__)

# Asymmetric algorithms only: `none` and HMAC (whose "key" would be public) are never accepted.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_MAX_DOCUMENT_BYTES = 1 << 20
# Clock difference tolerated between the issuer and us, for `exp`, `iat` and `nbf`.
LEEWAY_SECONDS = 30


class OidcError(Unauthorized):
    code = "invalid_id_token"


class OidcIdentity(msgspec.Struct, frozen=True):
    """Who the issuer says signed in."""

    issuer: str
    subject: str
    email: str


class OidcVerifier:
    """Verifies ID tokens of one issuer for one client id, with a cached, refreshing JWKS."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_client_id
        self._ttl = settings.oidc_jwks_ttl_seconds
        self._min_refresh = settings.oidc_jwks_refresh_min_seconds
        self._timeout = aiohttp.ClientTimeout(total=10)
        self._http = http
        self._jwks_uri: str | None = None
        # kid -> (key, the `alg` the JWKS published for it, if any)
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        self._fetched_at = -math.inf
        self._lock = asyncio.Lock()
        self.fetches = 0  # JWKS downloads so far; visible for tests and metrics

    async def verify(self, id_token: str) -> OidcIdentity:
        """The identity in a valid ID token; 401 for anything else."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise OidcError("malformed ID token") from None
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise OidcError("ID token uses a disallowed algorithm")
        kid = header.get("kid")
        key, published_alg = await self._signing_key(kid if isinstance(kid, str) else None)
        # A key published for one algorithm must not verify tokens claiming another.
        if published_alg is not None and published_alg != algorithm:
            raise OidcError("ID token algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key.key,
                algorithms=[algorithm],
                audience=self.client_id,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise OidcError("ID token expired") from None
        except jwt.PyJWTError as exc:
            raise OidcError(f"invalid ID token: {exc}") from None
        audience = claims["aud"]
        # With several audiences the token must name us as its authorized party (OIDC Core 3.1.3.7).
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.client_id:
            raise OidcError("ID token was issued to another client")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise OidcError("ID token carries no email")
        if claims.get("email_verified") is False:
            raise OidcError("the identity provider has not verified this email")
        return OidcIdentity(issuer=self.issuer, subject=str(claims["sub"]), email=email.lower())

    async def _signing_key(self, kid: str | None) -> tuple[jwt.PyJWK, str | None]:
        if time.monotonic() - self._fetched_at > self._ttl:
            await self._refresh(since=self._fetched_at)
        key = self._lookup(kid)
        if key is None and time.monotonic() - self._fetched_at >= self._min_refresh:
            # Unknown kid: the issuer may have rotated its keys since our last fetch.
            await self._refresh(since=self._fetched_at)
            key = self._lookup(kid)
        if key is None:
            raise OidcError("ID token signed by an unknown key")
        return key

    def _lookup(self, kid: str | None) -> tuple[jwt.PyJWK, str | None] | None:
        if kid is not None:
            return self._keys.get(kid)
        # Issuers with a single key may omit `kid`.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh(self, *, since: float) -> None:
        async with self._lock:
            if self._fetched_at != since:
                return  # another request refreshed while this one waited for the lock
            try:
                if self._jwks_uri is None:
                    config = await self._get_json(
                        self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                    )
                    if config.get("issuer") != self.issuer:
                        raise ServiceUnavailable("the OIDC discovery document names another issuer")
                    jwks_uri = config.get("jwks_uri")
                    if not isinstance(jwks_uri, str):
                        raise ServiceUnavailable("the OIDC discovery document has no jwks_uri")
                    self._jwks_uri = jwks_uri
                jwks = await self._get_json(self._jwks_uri)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # DecodeError too
                log.warning("OIDC issuer unreachable", issuer=self.issuer, error=repr(exc))
                # Discover again next time: the issuer may have moved its JWKS.
                self._jwks_uri = None
                raise ServiceUnavailable("the identity provider is unreachable") from None
            self.fetches += 1
            self._keys = self._parse_keys(jwks)
            self._fetched_at = time.monotonic()
            log.info("OIDC signing keys loaded", issuer=self.issuer, kids=sorted(self._keys))

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with self._http.get(url, timeout=self._timeout) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered {response.status}")
            body = await response.content.read(_MAX_DOCUMENT_BYTES + 1)
        if len(body) > _MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url} sent more than {_MAX_DOCUMENT_BYTES} bytes")
        document = msgspec.json.decode(body)
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not send a JSON object")
        return document

    @staticmethod
    def _parse_keys(jwks: dict[str, Any]) -> dict[str, tuple[jwt.PyJWK, str | None]]:
        keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for data in jwks.get("keys", []) if isinstance(jwks.get("keys"), list) else []:
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(data)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue  # a key type we cannot use; the others still work
            published_alg = data.get("alg")
            keys[str(data.get("kid", ""))] = (
                key,
                published_alg if isinstance(published_alg, str) else None,
            )
        return keys
