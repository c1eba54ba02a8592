"""HTTP routes of signing in, sessions and the signed-in person."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.params import JSONBody

from tenant.auth.schemas import OidcSignIn, PasswordSignIn, RefreshRequest, Session
from tenant.auth.service import auth_service
from tenant.params import Caller, Services
from tenant.people.schemas import InvitationAccept, Me, PasswordChange
from tenant.people.service import people_service


def client_address(request: Request[Any, Any, Any]) -> str | None:
    """The caller's address as the server sees it (behind a proxy: as the proxy forwards it)."""
    return request.client.host if request.client else None


# Routes anyone may call (they are how one gets a token): `[{}]` is OpenAPI for "no
# authentication needed", overriding the app-wide bearer requirement.
_public: dict[str, Any] = {"security": [{}], "tags": ["auth"], "status_code": 200}


@post("/v1/auth/sign-in", **_public)
async def sign_in(
    data: JSONBody[PasswordSignIn], request: Request[Any, Any, Any], runtime: Services
) -> Session:
    """Sign in with email and password. 401 on wrong credentials; 429 with `Retry-After`
    after repeated failures on the account or from the address."""
    return await auth_service.sign_in_with_password(
        runtime, data.email, data.password, client_address(request)
    )


@post("/v1/auth/oidc", **_public)
async def sign_in_oidc(
    data: JSONBody[OidcSignIn], request: Request[Any, Any, Any], runtime: Services
) -> Session:
    """Sign in with an ID token from the configured OpenID Connect issuer (single sign-on)."""
    return await auth_service.sign_in_with_oidc(runtime, data.id_token, client_address(request))


@post("/v1/auth/refresh", **_public)
async def refresh(data: JSONBody[RefreshRequest], runtime: Services) -> Session:
    """Exchange a refresh token for a new access and refresh token (the old one is used up)."""
    return await auth_service.refresh(runtime, data.refresh_token)


@post("/v1/auth/logout", security=[{}], tags=["auth"], status_code=204)
async def logout(data: JSONBody[RefreshRequest], runtime: Services) -> None:
    """End the session of this refresh token (its access tokens expire on their own)."""
    await auth_service.logout(runtime, data.refresh_token)


@post("/v1/invitations/accept", **_public)
async def accept_invitation(
    data: JSONBody[InvitationAccept], request: Request[Any, Any, Any], runtime: Services
) -> Session:
    """Accept an invitation (a new account sets its password) and sign in."""
    return await auth_service.accept_invitation(
        runtime, data.token, data.password, client_address(request)
    )


@get("/v1/me", tags=["auth"])
async def me(principal: Caller, runtime: Services) -> Me:
    """The signed-in person and their tenants, as of now (the token may be older)."""
    async with runtime.pool.acquire() as conn:
        return await people_service.me(conn, principal.user_id)


@post("/v1/me/password", tags=["auth"], status_code=204)
async def change_password(
    data: JSONBody[PasswordChange],
    principal: Caller,
    request: Request[Any, Any, Any],
    runtime: Services,
) -> None:
    """Change one's password; every session of the person ends (sign in again)."""
    await auth_service.change_password(
        runtime, principal, data.current_password, data.new_password, client_address(request)
    )


ROUTES = [sign_in, sign_in_oidc, refresh, logout, accept_invitation, me, change_password]
