"""Signing in and sessions: passwords, single sign-on, invitations, refresh-token rotation.

Password checks run before any transaction opens (argon2 takes tens of milliseconds, and a
failed guess must write nothing but its Redis counters); the session itself — refresh token row
and `UserSignedIn` event — is written in one unit of work.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import asyncpg

from tally.auth import Principal, issue_access_token
from tally.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from tally.events.tenant import (
    Actor,
    PasswordChanged,
    SessionRevoked,
    UserSignedIn,
)
from tally.log import get_logger
from tenant.auth import repository
from tenant.auth.passwords import (
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from tenant.auth.schemas import Session
from tenant.auth.throttle import SignInThrottle
from tenant.people import repository as people_repository
from tenant.people.service import people_service, user_from_row
from tenant.runtime import Runtime
from tenant.unit_of_work import UnitOfWork

log = get_logger(__name__)

REFRESH_PREFIX = "rt_"
SignInMethod = Literal["password", "oidc", "invitation"]


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"


class InvalidRefreshToken(Unauthorized):
    code = "invalid_refresh_token"


def _hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _user_actor(user_id: UUID) -> Actor:
    return Actor(kind="user", id=str(user_id))


class AuthService:
    async def sign_in_with_password(
        self, runtime: Runtime, email: str, password: str, address: str | None
    ) -> Session:
        """A new session for the right email and password.

        Wrong credentials are 401 with one message whether or not the email has an account;
        past the free failures the account and the address are locked out (429).
        """
        throttle = self._throttle(runtime)
        await throttle.check(email, address)
        async with runtime.pool.acquire() as conn:
            user = await people_repository.fetch_user_by_email(conn, email)
        password_hash = user["password_hash"] if user is not None else None
        if not await verify_password(password_hash, password):
            await throttle.record_failure(email, address)
            log.info("sign-in failed", reason="bad credentials", address=address)
            raise InvalidCredentials("wrong email or password")
        assert user is not None
        assert password_hash is not None
        await throttle.record_success(email)
        if user["status"] != "active":
            raise Forbidden("this account is disabled", code="account_disabled")
        async with runtime.unit(_user_actor(user["id"])) as uow:
            if needs_rehash(password_hash):
                # The hashing parameters were raised since this hash was made.
                await people_repository.set_password_hash(
                    uow.conn, user["id"], await hash_password(password)
                )
            return await self._open_session(uow, runtime, user, "password", address)

    async def sign_in_with_oidc(
        self, runtime: Runtime, id_token: str, address: str | None
    ) -> Session:
        """A new session for a valid ID token of the configured issuer.

        The token's email must belong to an account, or have a pending invitation (which this
        sign-in accepts). The first SSO sign-in links the account to the token's subject; after
        that, only that subject can sign in to it.
        """
        if runtime.oidc is None:
            raise NotFound("single sign-on is not configured", code="sso_not_configured")
        identity = await runtime.oidc.verify(id_token)
        async with runtime.unit(Actor(kind="system", id="oidc")) as uow:
            conn = uow.conn
            user = await people_repository.fetch_user_by_oidc(
                conn, identity.issuer, identity.subject
            )
            if user is None:
                user = await people_repository.fetch_user_by_email(
                    conn, identity.email, for_update=True
                )
                if user is not None:
                    if user["oidc_subject"] is not None:
                        raise Unauthorized(
                            "this account is linked to another single sign-on identity",
                            code="sso_identity_mismatch",
                        )
                    user = await people_repository.link_oidc(
                        conn, user["id"], identity.issuer, identity.subject
                    )
            invitations = await people_service.pending_invitations_for(conn, identity.email)
            if user is None:
                if not invitations:
                    raise Unauthorized(
                        "no account uses this email; ask an administrator for an invitation",
                        code="no_account",
                    )
                user = await people_service.create_user(
                    uow,
                    email=identity.email,
                    password=None,
                    platform_roles=[],
                    via="oidc",
                    oidc=(identity.issuer, identity.subject),
                )
            assert user is not None
            uow.actor = _user_actor(user["id"])
            if user["status"] != "active":
                raise Forbidden("this account is disabled", code="account_disabled")
            for invitation in invitations:
                await people_service.apply_invitation(uow, invitation, user)
            user = await people_repository.fetch_user(conn, user["id"])
            return await self._open_session(uow, runtime, user, "oidc", address)

    async def accept_invitation(
        self, runtime: Runtime, token: str, password: str | None, address: str | None
    ) -> Session:
        """Accept an invitation and sign in.

        A new account sets its password here. An existing account confirms with its current
        password (throttled like sign-in); an SSO-only account accepts by signing in through
        single sign-on instead.
        """
        async with runtime.unit(Actor(kind="system", id="invitation")) as uow:
            invitation = await people_service.pending_invitation(uow.conn, token)
            email = invitation["email"]
            user = await people_repository.fetch_user_by_email(uow.conn, email, for_update=True)
            if user is None:
                if password is None:
                    raise InvalidRequest("choose a password for the new account", param="password")
                platform_roles = [invitation["role"]] if invitation["tenant_id"] is None else []
                user = await people_service.create_user(
                    uow,
                    email=email,
                    password=password,
                    platform_roles=platform_roles,
                    via="invitation",
                )
            else:
                await self._confirm_existing_account(runtime, user, password, address)
            uow.actor = _user_actor(user["id"])
            await people_service.apply_invitation(uow, invitation, user)
            user = await people_repository.fetch_user(uow.conn, user["id"])
            return await self._open_session(uow, runtime, user, "invitation", address)

    async def _confirm_existing_account(
        self,
        runtime: Runtime,
        user: asyncpg.Record,
        password: str | None,
        address: str | None,
    ) -> None:
        if user["status"] != "active":
            raise Forbidden("this account is disabled", code="account_disabled")
        if user["password_hash"] is None:
            raise InvalidRequest(
                "this account signs in through single sign-on: sign in there to accept",
                code="sso_account",
            )
        if password is None:
            raise InvalidRequest(
                "an account with this email exists: confirm with its password",
                param="password",
            )
        throttle = self._throttle(runtime)
        await throttle.check(user["email"], address)
        if not await verify_password(user["password_hash"], password):
            await throttle.record_failure(user["email"], address)
            raise InvalidCredentials("wrong password for the existing account")
        await throttle.record_success(user["email"])

    async def refresh(self, runtime: Runtime, token: str) -> Session:
        """Exchange a refresh token for a new pair; the old one is used up.

        Presenting a token that was already exchanged means two parties hold it (it was
        stolen, or a client replayed it): the whole session is revoked, and both must sign in
        again. The revocation commits even though the request fails.
        """
        session: Session | None = None
        async with runtime.unit(Actor(kind="system", id="refresh")) as uow:
            session = await self._rotate(uow, runtime, token)
        assert session is not None  # _rotate either returns one or the unit raised
        return session

    async def _rotate(self, uow: UnitOfWork, runtime: Runtime, token: str) -> Session | None:
        row = await repository.refresh_token_by_hash(uow.conn, _hash_token(token))
        if row is None or row["revoked_at"] is not None:
            raise InvalidRefreshToken("refresh token is invalid or revoked")
        if row["rotated_at"] is not None:
            await repository.revoke_family(uow.conn, row["family_id"])
            await uow.record(
                SessionRevoked(
                    user_id=row["user_id"],
                    family_id=row["family_id"],
                    reason="reuse_detected",
                    actor=Actor(kind="system", id="refresh"),
                )
            )
            log.warning("refresh token reused; session revoked", user_id=str(row["user_id"]))
            uow.fail_after_commit(InvalidRefreshToken("refresh token was already used"))
            return None
        if row["expires_at"] <= datetime.now(UTC):
            raise InvalidRefreshToken("refresh token expired")
        user = await people_repository.fetch_user(uow.conn, row["user_id"])
        if user is None or user["status"] != "active":
            raise InvalidRefreshToken("the account is disabled")
        await repository.mark_rotated(uow.conn, row["id"])
        principal = await people_service.principal_for(uow.conn, user)
        refresh_token = await self._new_refresh_token(uow, runtime, user["id"], row["family_id"])
        return self._session(runtime, principal, user, refresh_token)

    async def logout(self, runtime: Runtime, token: str) -> None:
        """End the session the refresh token belongs to. Unknown tokens are ignored."""
        async with runtime.unit(Actor(kind="system", id="logout")) as uow:
            row = await repository.refresh_token_by_hash(uow.conn, _hash_token(token))
            if row is None or row["revoked_at"] is not None:
                return
            await repository.revoke_family(uow.conn, row["family_id"])
            await uow.record(
                SessionRevoked(
                    user_id=row["user_id"],
                    family_id=row["family_id"],
                    reason="logout",
                    actor=_user_actor(row["user_id"]),
                )
            )

    async def change_password(
        self,
        runtime: Runtime,
        principal: Principal,
        current_password: str,
        new_password: str,
        address: str | None,
    ) -> None:
        """Set a new password after checking the current one; ends every session."""
        async with runtime.pool.acquire() as conn:
            user = await people_repository.fetch_user(conn, principal.user_id)
        if user is None:
            raise NotFound("user not found")
        throttle = self._throttle(runtime)
        await throttle.check(user["email"], address)
        if user["password_hash"] is None:
            raise InvalidRequest("this account signs in through single sign-on", code="sso_account")
        if not await verify_password(user["password_hash"], current_password):
            await throttle.record_failure(user["email"], address)
            raise InvalidRequest(
                "the current password is wrong", param="current_password", code="wrong_password"
            )
        check_password_policy(new_password, email=user["email"])
        new_hash = await hash_password(new_password)
        async with runtime.unit(principal) as uow:
            await people_repository.set_password_hash(uow.conn, user["id"], new_hash)
            await uow.record(PasswordChanged(user_id=user["id"], actor=uow.actor))
            await self.revoke_all_sessions(uow, user["id"], reason="password_changed")

    async def set_password(self, uow: UnitOfWork, user_id: UUID, email: str, password: str) -> None:
        """Set a password without the current one (operators, the CLI); ends every session."""
        check_password_policy(password, email=email)
        await people_repository.set_password_hash(uow.conn, user_id, await hash_password(password))
        await uow.record(PasswordChanged(user_id=user_id, actor=uow.actor))
        await self.revoke_all_sessions(uow, user_id, reason="password_changed")

    async def revoke_all_sessions(
        self,
        uow: UnitOfWork,
        user_id: UUID,
        *,
        reason: Literal["password_changed", "user_disabled"],
    ) -> None:
        """Revoke every refresh token of the person (access tokens run out within minutes)."""
        await repository.revoke_all_of_user(uow.conn, user_id)
        await uow.record(
            SessionRevoked(user_id=user_id, family_id=None, reason=reason, actor=uow.actor)
        )

    # --- internals ---------------------------------------------------------------------------

    def _throttle(self, runtime: Runtime) -> SignInThrottle:
        if runtime.redis is None:
            raise RuntimeError("sign-in needs Redis (TALLY_REDIS_URL) for its attempt counters")
        return SignInThrottle(runtime.redis, runtime.settings)

    async def _open_session(
        self,
        uow: UnitOfWork,
        runtime: Runtime,
        user: asyncpg.Record,
        method: SignInMethod,
        address: str | None,
    ) -> Session:
        principal = await people_service.principal_for(uow.conn, user)
        refresh_token = await self._new_refresh_token(uow, runtime, user["id"], uuid.uuid4())
        await uow.record(
            UserSignedIn(
                user_id=user["id"], method=method, actor=_user_actor(user["id"]), address=address
            )
        )
        return self._session(runtime, principal, user, refresh_token)

    async def _new_refresh_token(
        self, uow: UnitOfWork, runtime: Runtime, user_id: UUID, family_id: UUID
    ) -> str:
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        await repository.insert_refresh_token(
            uow.conn,
            token_id=uuid.uuid4(),
            user_id=user_id,
            family_id=family_id,
            token_hash=_hash_token(token),
            expires_at=datetime.now(UTC)
            + timedelta(seconds=runtime.settings.refresh_token_ttl_seconds),
        )
        return token

    def _session(
        self, runtime: Runtime, principal: Principal, user: asyncpg.Record, refresh_token: str
    ) -> Session:
        settings = runtime.settings
        return Session(
            access_token=issue_access_token(runtime.signing_keys, settings, principal),
            expires_in=settings.access_token_ttl_seconds,
            refresh_token=refresh_token,
            refresh_expires_in=settings.refresh_token_ttl_seconds,
            user=user_from_row(user),
        )


auth_service = AuthService()
