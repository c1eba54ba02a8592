"""Who is calling the admin APIs, and what they may do.

People sign in at the tenant service and get a short-lived access token: a JWT signed with
Ed25519 (EdDSA) under a key named by its `kid`. Every service verifies tokens with the public
halves of `TALLY_JWT_KEYS` (the first key signs, all verify, so keys rotate without logging
anyone out). Verification pins the algorithm, issuer, audience and expiry: `alg: none`, a
foreign key, a wrong audience or issuer, or an expired token are all 401.

Roles: platform roles `operator` and `finance`; per-tenant roles `owner` > `admin` > `member`.
Handlers get a `Principal` through the `principal` dependency and check access with
`require_platform_role` (a guard) or `Principal.require_tenant` (tenant-scoped routes).
"""

from __future__ import annotations

import base64
import binascii
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler

from tally.config import Settings
from tally.errors import Forbidden, NotFound, Unauthorized

PlatformRole = Literal["operator", "finance"]
TenantRole = Literal["owner", "admin", "member"]
_TENANT_RANK = {"member": 1, "admin": 2, "owner": 3}
ALGORITHM = "EdDSA"


class AuthError(Unauthorized):
    code = "invalid_token"


class Principal(msgspec.Struct, frozen=True):
    """The authenticated person behind a request."""

    user_id: UUID
    email: str
    platform_roles: frozenset[str] = frozenset()
    # tenant id -> role in that tenant
    tenants: dict[UUID, str] = msgspec.field(default_factory=dict)

    def has_platform_role(self, *roles: PlatformRole) -> bool:
        return bool(self.platform_roles.intersection(roles))

    def require_tenant(self, tenant_id: UUID, min_role: TenantRole = "member") -> None:
        """Allow operators (and finance for reads: pass min_role='member') or tenant members.

        A person with no access to the tenant gets 404, not 403: existence does not leak.
        """
        if "operator" in self.platform_roles:
            return
        if min_role == "member" and "finance" in self.platform_roles:
            return
        role = self.tenants.get(tenant_id)
        if role is None:
            raise NotFound("tenant not found", param="tenant_id")
        if _TENANT_RANK[role] < _TENANT_RANK[min_role]:
            raise Forbidden(f"this action needs the {min_role} role in the tenant")


class SigningKeys:
    """The Ed25519 key ring for access tokens."""

    def __init__(self, keys: list[tuple[str, Ed25519PrivateKey]]) -> None:
        if not keys:
            raise AuthError("no signing keys configured")
        self.current_kid, self._signing = keys[0]
        self._public: dict[str, Ed25519PublicKey] = {kid: k.public_key() for kid, k in keys}

    @classmethod
    def parse(cls, text: str) -> SigningKeys:
        keys: list[tuple[str, Ed25519PrivateKey]] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            kid, _, encoded = part.partition(":")
            try:
                seed = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                seed = b""
            if not kid or len(seed) != 32:
                raise ValueError("TALLY_JWT_KEYS: expected KID:BASE64 entries of 32-byte seeds")
            keys.append((kid, Ed25519PrivateKey.from_private_bytes(seed)))
        return cls(keys)

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self._signing, algorithm=ALGORITHM, headers={"kid": self.current_kid}
        )

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        return self._public.get(kid)


def new_signing_key_entry(kid: str) -> str:
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode()}"


def load_signing_keys(settings: Settings) -> SigningKeys:
    if settings.jwt_keys:
        return SigningKeys.parse(settings.jwt_keys)
    if settings.production:
        raise ValueError("TALLY_JWT_KEYS: required when TALLY_ENV=production")
    path = Path(settings.data_dir) / "jwt.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(new_signing_key_entry("dev1"))
    return SigningKeys.parse(path.read_text().strip())


def issue_access_token(keys: SigningKeys, settings: Settings, principal: Principal) -> str:
    now = int(time.time())
    return keys.sign(
        {
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
            "sub": str(principal.user_id),
            "email": principal.email,
            "roles": sorted(principal.platform_roles),
            "tenants": {str(t): r for t, r in principal.tenants.items()},
            "iat": now,
            "exp": now + settings.access_token_ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
    )


def verify_access_token(keys: SigningKeys, settings: Settings, token: str) -> Principal:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("malformed access token") from None
    if header.get("alg") != ALGORITHM:
        raise AuthError("access token uses a disallowed algorithm")
    public = keys.public_key(str(header.get("kid", "")))
    if public is None:
        raise AuthError("access token signed by an unknown key")
    try:
        claims = jwt.decode(
            token,
            public,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
        return Principal(
            user_id=UUID(claims["sub"]),
            email=str(claims.get("email", "")),
            platform_roles=frozenset(claims.get("roles", [])),
            tenants={UUID(t): str(r) for t, r in dict(claims.get("tenants", {})).items()},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("access token expired") from None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise AuthError("invalid access token") from None


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing bearer token", code="missing_token")
    return token.strip()


async def provide_principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """Litestar dependency: the verified caller of this request (401 otherwise).

    Every service app registers it (`tally.http.create_service_app`); the app state must
    hold `signing_keys` (see `load_signing_keys`) and `settings`.
    """
    cached = request.scope.get("state", {}).get("principal")
    if isinstance(cached, Principal):
        return cached
    state = request.app.state
    principal = verify_access_token(state.signing_keys, state.settings, bearer_token(request))
    request.scope.setdefault("state", {})["principal"] = principal
    return principal


# Registered once, app-wide, by `tally.http.create_service_app`.
PRINCIPAL_DEPENDENCY = Provide(provide_principal)


def require_platform_role(*roles: PlatformRole) -> Any:
    """A route guard: only people holding one of `roles` may call the route (403 otherwise)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = await provide_principal(connection)
        if not principal.has_platform_role(*roles):
            raise Forbidden(f"this action needs the {' or '.join(roles)} role")

    return guard
