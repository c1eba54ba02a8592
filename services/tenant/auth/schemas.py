"""Requests and responses of signing in and sessions."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from tenant.fields import Email, Password
from tenant.people.schemas import User

# Refresh tokens are "rt_" and 43 url-safe characters.
RefreshToken = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
IdToken = Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]


class PasswordSignIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    email: Email
    password: Password


class OidcSignIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An ID token the configured OpenID Connect issuer gave the person."""

    id_token: IdToken


class RefreshRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    refresh_token: RefreshToken


class Session(msgspec.Struct, frozen=True):
    """A new session: a short-lived access token and the refresh token that renews it.

    The refresh token is single use: `POST /v1/auth/refresh` returns a new pair, and presenting
    an old refresh token again ends the whole session.
    """

    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user: User
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 (a scheme name)
