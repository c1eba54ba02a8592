"""Provider-credential logic: add, change, enable/disable, test, and re-seal the secrets.

Secrets are sealed with AES-256-GCM under the current key of `TALLY_SECRET_KEY`, with the
credential's id as associated data, so a ciphertext copied onto another credential's row does
not open. Only `last4` of a secret is ever shown, logged or put in an event.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import aiohttp
import asyncpg
import msgspec

from tally.crypto import KeyRing, SecretKeyError
from tally.db import Connection
from tally.errors import Conflict, InvalidRequest, NotFound, TallyError
from tally.events.tenant import (
    CredentialAdded,
    CredentialDisabled,
    CredentialEnabled,
    CredentialsReencrypted,
    CredentialUpdated,
)
from tally.log import get_logger
from tenant.providers import repository
from tenant.providers.probe import probe_credential
from tenant.providers.schemas import (
    ConnectionTest,
    Credential,
    CredentialCreate,
    CredentialList,
    CredentialUpdate,
    SecretsRotated,
)
from tenant.unit_of_work import UnitOfWork

log = get_logger(__name__)

# Secrets shorter than this show no last four: four characters of a short key are too much.
_MIN_LENGTH_TO_SHOW_LAST4 = 12


class SecretUnreadable(TallyError):
    """A sealed secret does not open with TALLY_SECRET_KEY (a key was dropped too early)."""

    status_code = 500
    error_type = "server_error"
    code = "secret_unreadable"


def _open(key_ring: KeyRing, key_id: str, ciphertext: bytes, context: bytes) -> bytes:
    try:
        return key_ring.decrypt(key_id, ciphertext, context=context)
    except SecretKeyError as exc:  # the message names the key id, never the secret
        raise SecretUnreadable(str(exc)) from None


def credential_from_row(row: asyncpg.Record) -> Credential:
    return Credential(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        base_url=row["base_url"],
        options=dict(row["options"] or {}),
        weight=row["weight"],
        enabled=row["enabled"],
        disabled_reason=row["disabled_reason"],
        last4=row["last4"],
        secret_key_id=row["secret_key_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def last4_of(secret: str) -> str:
    return secret[-4:] if len(secret) >= _MIN_LENGTH_TO_SHOW_LAST4 else ""


def _check_base_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("base_url must be an http(s) URL with a host", param="base_url")
    if parts.username or parts.password:
        # A URL is shown in responses and logs: credentials inside it would leak.
        raise InvalidRequest("base_url must not contain credentials", param="base_url")
    if parts.query or parts.fragment:
        raise InvalidRequest("base_url must not have a query or fragment", param="base_url")
    return url.strip().rstrip("/")


class _SecretInput(msgspec.Struct, frozen=True):
    api_key: str | None
    access_key_id: str | None
    secret_access_key: str | None


def _secret_for(kind: str, given: _SecretInput) -> dict[str, str]:
    """The secret document to seal for a kind, checking the right fields were given."""
    if kind == "bedrock":
        if given.api_key is not None:
            raise InvalidRequest(
                "bedrock takes access_key_id and secret_access_key, not api_key", param="api_key"
            )
        if given.access_key_id is None or given.secret_access_key is None:
            raise InvalidRequest(
                "bedrock needs access_key_id and secret_access_key",
                param="access_key_id" if given.access_key_id is None else "secret_access_key",
            )
        return {
            "access_key_id": given.access_key_id,
            "secret_access_key": given.secret_access_key,
        }
    if given.access_key_id is not None or given.secret_access_key is not None:
        raise InvalidRequest(
            "access_key_id and secret_access_key are for bedrock only", param="access_key_id"
        )
    if given.api_key is None and kind != "ollama":  # a local Ollama ignores keys
        raise InvalidRequest(f"{kind} needs an api_key", param="api_key")
    return {"api_key": given.api_key or ""}


def _last4_of_secret(secret: dict[str, str]) -> str:
    return last4_of(secret.get("api_key") or secret.get("access_key_id") or "")


def seal_plaintext(kind: str, secret: dict[str, str]) -> bytes:
    """What is sealed: the API key itself, or for Bedrock the JSON access-key pair.

    The gateway opens it the same way (`gateway.catalog.decrypt_credential`).
    """
    if kind == "bedrock":
        return msgspec.json.encode(secret)
    return secret["api_key"].encode()


def unseal_plaintext(kind: str, plaintext: bytes) -> dict[str, str]:
    if kind == "bedrock":
        return msgspec.json.decode(plaintext, type=dict[str, str])
    return {"api_key": plaintext.decode()}


class ProviderService:
    async def add(self, uow: UnitOfWork, data: CredentialCreate, key_ring: KeyRing) -> Credential:
        """Connect a provider credential; its secret is sealed before it reaches the table."""
        secret = _secret_for(
            data.kind, _SecretInput(data.api_key, data.access_key_id, data.secret_access_key)
        )
        options = dict(data.options or {})
        if data.region is not None:
            options["region"] = data.region
        if data.kind == "bedrock" and "region" not in options:
            raise InvalidRequest("bedrock needs a region", param="region")
        if data.kind != "bedrock" and data.region is not None:
            raise InvalidRequest("region is for bedrock only", param="region")
        base_url = _check_base_url(data.base_url)
        name = data.name or await self._free_name(uow.conn, data.kind)
        credential_id = uuid.uuid4()
        key_id, ciphertext = key_ring.encrypt(
            seal_plaintext(data.kind, secret), context=credential_id.bytes
        )
        last4 = _last4_of_secret(secret)
        row = await repository.insert_credential(
            uow.conn,
            credential_id=credential_id,
            kind=data.kind,
            name=name,
            base_url=base_url,
            options=options,
            weight=data.weight,
            ciphertext=ciphertext,
            key_id=key_id,
            last4=last4,
        )
        if row is None:
            raise Conflict(f"a credential named {name!r} exists", param="name", code="name_taken")
        await uow.record(
            CredentialAdded(
                credential_id=credential_id,
                kind=data.kind,
                name=name,
                last4=last4,
                actor=uow.actor,
                base_url=base_url,
                weight=data.weight,
            )
        )
        uow.invalidate("credential", str(credential_id))
        return credential_from_row(row)

    async def get(self, conn: Connection, credential_id: UUID) -> Credential:
        """One credential (without its secret), or 404."""
        row = await repository.fetch_credential(conn, credential_id)
        if row is None:
            raise NotFound("credential not found", param="credential_id")
        return credential_from_row(row)

    async def resolve(self, conn: Connection, id_or_name: str) -> Credential:
        """A credential by id or name (the CLI's `--provider NAME`)."""
        try:
            return await self.get(conn, UUID(id_or_name))
        except ValueError:
            row = await repository.fetch_credential_by_name(conn, id_or_name)
        if row is None:
            raise NotFound(f"no provider credential named {id_or_name!r}", param="provider")
        return credential_from_row(row)

    async def list_credentials(
        self, conn: Connection, *, kind: str | None = None, include_disabled: bool = True
    ) -> CredentialList:
        """Every credential, by kind and name."""
        rows = await repository.list_credentials(conn, kind=kind, include_disabled=include_disabled)
        return CredentialList(data=[credential_from_row(r) for r in rows])

    async def update(
        self, uow: UnitOfWork, credential_id: UUID, data: CredentialUpdate, key_ring: KeyRing
    ) -> Credential:
        """Change a credential; a new secret is sealed and shows up only as its last four."""
        row = await repository.fetch_credential_for_update(uow.conn, credential_id)
        if row is None:
            raise NotFound("credential not found", param="credential_id")
        kind = row["kind"]
        current: dict[str, Any] = {
            "name": row["name"],
            "base_url": row["base_url"],
            "options": dict(row["options"] or {}),
            "weight": row["weight"],
        }
        wanted = dict(current)
        if isinstance(data.name, str):
            wanted["name"] = data.name
        if data.base_url is not msgspec.UNSET:
            wanted["base_url"] = _check_base_url(data.base_url)
        if isinstance(data.weight, int):
            wanted["weight"] = data.weight
        if isinstance(data.options, dict):
            wanted["options"] = dict(data.options)
            if kind == "bedrock":
                wanted["options"].setdefault("region", current["options"].get("region"))
        if isinstance(data.region, str):
            if kind != "bedrock":
                raise InvalidRequest("region is for bedrock only", param="region")
            wanted["options"] = {**wanted["options"], "region": data.region}
        before = {f: current[f] for f in current if current[f] != wanted[f]}
        after = {f: wanted[f] for f in before}
        given = _SecretInput(
            data.api_key if isinstance(data.api_key, str) else None,
            data.access_key_id if isinstance(data.access_key_id, str) else None,
            data.secret_access_key if isinstance(data.secret_access_key, str) else None,
        )
        if given != _SecretInput(None, None, None):
            secret = _secret_for(kind, given)
            key_id, ciphertext = key_ring.encrypt(
                seal_plaintext(kind, secret), context=credential_id.bytes
            )
            last4 = _last4_of_secret(secret)
            await repository.update_secret(uow.conn, credential_id, ciphertext, key_id, last4)
            # Only the last four characters of the old and new secret enter the log.
            before["secret_last4"] = row["last4"]
            after["secret_last4"] = last4
        if not after:
            return credential_from_row(row)
        updated = await repository.update_credential(uow.conn, credential_id, wanted)
        if updated is None:
            raise Conflict(
                f"a credential named {wanted['name']!r} exists", param="name", code="name_taken"
            )
        await uow.record(
            CredentialUpdated(
                credential_id=credential_id, before=before, after=after, actor=uow.actor
            )
        )
        uow.invalidate("credential", str(credential_id))
        return credential_from_row(updated)

    async def set_enabled(
        self, uow: UnitOfWork, credential_id: UUID, enabled: bool, reason: str | None = None
    ) -> Credential:
        """Enable or disable a credential; routes through a disabled one are skipped."""
        row = await repository.fetch_credential_for_update(uow.conn, credential_id)
        if row is None:
            raise NotFound("credential not found", param="credential_id")
        if row["enabled"] == enabled:
            state = "enabled" if enabled else "disabled"
            raise Conflict(f"the credential is already {state}", code=f"already_{state}")
        updated = await repository.set_enabled(
            uow.conn, credential_id, enabled, None if enabled else reason
        )
        if enabled:
            await uow.record(CredentialEnabled(credential_id=credential_id, actor=uow.actor))
        else:
            await uow.record(
                CredentialDisabled(
                    credential_id=credential_id,
                    reason=reason or "disabled by an operator",
                    actor=uow.actor,
                )
            )
        uow.invalidate("credential", str(credential_id))
        return credential_from_row(updated)

    async def test(
        self,
        conn: Connection,
        credential_id: UUID,
        key_ring: KeyRing,
        http: aiohttp.ClientSession,
        timeout_seconds: float,
    ) -> ConnectionTest:
        """Call the provider's cheapest authenticated endpoint (its model list)."""
        row = await repository.fetch_credential_with_secret(conn, credential_id)
        if row is None:
            raise NotFound("credential not found", param="credential_id")
        secret = unseal_plaintext(
            row["kind"],
            _open(key_ring, row["secret_key_id"], row["secret_ciphertext"], credential_id.bytes),
        )
        result = await probe_credential(
            http,
            kind=row["kind"],
            base_url=row["base_url"],
            secret=secret,
            timeout_seconds=timeout_seconds,
        )
        log.info(
            "provider credential tested",
            credential_id=str(credential_id),
            kind=row["kind"],
            outcome=result.outcome,
            status=result.status,
        )
        return result

    async def reseal_all(self, uow: UnitOfWork, key_ring: KeyRing) -> SecretsRotated:
        """Re-encrypt every secret under the ring's current key (`tally secrets rotate`).

        One transaction: every credential is re-sealed, or none is. Afterwards the old key can
        be dropped from `TALLY_SECRET_KEY`.
        """
        rows = await repository.all_secrets_for_update(uow.conn)
        count = 0
        for row in rows:
            if row["secret_key_id"] == key_ring.current_kid:
                continue
            context = row["id"].bytes
            plaintext = _open(key_ring, row["secret_key_id"], row["secret_ciphertext"], context)
            key_id, ciphertext = key_ring.encrypt(plaintext, context=context)
            await repository.reseal_secret(uow.conn, row["id"], ciphertext, key_id)
            count += 1
        await uow.record(
            CredentialsReencrypted(key_id=key_ring.current_kid, count=count, actor=uow.actor)
        )
        if count:
            uow.invalidate("credential", "*")
        return SecretsRotated(key_id=key_ring.current_kid, reencrypted=count)

    async def _free_name(self, conn: Connection, kind: str) -> str:
        taken = await repository.names_starting_with(conn, kind)
        if kind not in taken:
            return kind
        n = 2
        while f"{kind}-{n}" in taken:
            n += 1
        return f"{kind}-{n}"


provider_service = ProviderService()
