"""Operator commands of the control plane: tenants, keys, providers, models, people, secrets.

Every command goes through the same services as the HTTP API, in one unit of work, straight
against Postgres (`TALLY_DATABASE_URL`), publishing cache invalidations on `TALLY_REDIS_URL`.
Inputs are validated by the same msgspec schemas as the API. `--json` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import msgspec

from tally.cli import CommandError, add_json_flag, emit
from tally.crypto import SecretKeyError
from tally.errors import TallyError
from tally.events.tenant import Actor
from tally.log import configure_logging
from tally.money import MoneyError, parse_credits
from tally.supervisor import command_settings
from tenant.api_keys.schemas import ApiKeyCreate, ApiKeyRotate
from tenant.api_keys.service import api_key_service
from tenant.catalog.schemas import ModelCreate, ModelUpdate, RouteCreate
from tenant.catalog.service import catalog_service
from tenant.people.schemas import UserCreate
from tenant.people.service import people_service, user_from_row
from tenant.providers.schemas import CredentialCreate, CredentialUpdate
from tenant.providers.service import provider_service
from tenant.runtime import Runtime, open_runtime
from tenant.tenants.schemas import TenantCreate, TenantQuery, TenantUpdate
from tenant.tenants.service import tenant_service

T = TypeVar("T")
Command = Callable[[Runtime, argparse.Namespace], Awaitable[int]]

PROVIDER_KINDS = (
    "openai",
    "anthropic",
    "gemini",
    "bedrock",
    "deepseek",
    "ollama",
    "openrouter",
    "xai",
    "doubao",
    "poe",
)
ROLES = ("operator", "finance", "owner", "admin", "member")


def _cli_actor() -> Actor:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. in a bare container
        who = "unknown"
    return Actor(kind="cli", id=who)


def _validated(data: dict[str, Any], schema: type[T], *, clears: bool = False) -> T:
    """Build a request schema from flags, with the API's own validation.

    Flags not given (None) are left out; with `clears`, UNSET marks a flag not given and None
    is kept, meaning "clear this field".
    """
    absent = msgspec.UNSET if clears else None
    try:
        return msgspec.convert({k: v for k, v in data.items() if v is not absent}, schema)
    except msgspec.ValidationError as exc:
        raise CommandError(str(exc).replace("`$.", "`--").replace("_", "-")) from None


def _credits_to_nano(text: str, flag: str) -> int:
    try:
        return parse_credits(text)
    except MoneyError as exc:
        raise CommandError(f"{flag}: {exc}") from None


def _read_secret(prompt: str) -> str:
    """A secret from stdin (piped, or typed without echo), so it stays out of shell history."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        settings = command_settings()
        # Logs go to stderr, so stdout carries nothing but the command's result.
        configure_logging(settings)

        async def main() -> int:
            async with open_runtime(settings) as runtime:
                return await command(runtime, args)

        try:
            return asyncio.run(main())
        except TallyError as exc:
            raise CommandError(exc.message) from None
        except SecretKeyError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"cannot reach Postgres or Redis: {exc}") from None

    return run


def _command(
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    command: Command,
) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text, description=help_text)
    add_json_flag(parser)
    parser.set_defaults(handler=_runner(command))
    return parser


def _optional(text: str | None) -> Any:
    """Flags that clear a value take the word `none`."""
    return msgspec.UNSET if text is None else (None if text.lower() == "none" else text)


# --- tenants -------------------------------------------------------------------------------------


async def _tenant_create(rt: Runtime, args: argparse.Namespace) -> int:
    data = _validated(
        {
            "name": args.name,
            "mode": args.mode,
            "credits": args.credits,
            "billing_email": args.billing_email,
            "country": args.country,
            "tax_id": args.tax_id,
            "budget_cap_nano": _credits_to_nano(args.budget_cap, "--budget-cap")
            if args.budget_cap
            else None,
        },
        TenantCreate,
    )
    async with rt.unit(_cli_actor()) as uow:
        tenant = await tenant_service.create(uow, data, rt.settings)
    emit(args, tenant, f"created tenant {tenant.name} ({tenant.id}), mode {tenant.mode}")
    return 0


async def _tenant_list(rt: Runtime, args: argparse.Namespace) -> int:
    query = _validated(
        {
            "search": args.search,
            "status": args.status,
            "mode": args.mode,
            "limit": args.limit,
            "cursor": args.cursor,
        },
        TenantQuery,
    )
    async with rt.pool.acquire() as conn:
        page = await tenant_service.list_tenants(conn, query)
    lines = [f"{t.id}  {t.status:<9} {t.mode:<8} {t.name}" for t in page.data]
    if page.next_cursor:
        lines.append(f"more: --cursor {page.next_cursor}")
    emit(args, page, "\n".join(lines) or "no tenants")
    return 0


async def _tenant_show(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.pool.acquire() as conn:
        tenant = await tenant_service.resolve(conn, args.tenant)
    emit(args, tenant, msgspec.json.format(msgspec.json.encode(tenant)).decode())
    return 0


async def _tenant_update(rt: Runtime, args: argparse.Namespace) -> int:
    cap = _optional(args.budget_cap)
    fields: dict[str, Any] = {
        "name": args.name if args.name is not None else msgspec.UNSET,
        "mode": args.mode if args.mode is not None else msgspec.UNSET,
        "billing_email": _optional(args.billing_email),
        "tax_id": _optional(args.tax_id),
        "country": _optional(args.country),
        "margin_override_pct": _optional(args.margin),
        "budget_cap_nano": _credits_to_nano(cap, "--budget-cap") if isinstance(cap, str) else cap,
    }
    data = _validated(fields, TenantUpdate, clears=True)
    async with rt.pool.acquire() as conn:
        tenant_id = (await tenant_service.resolve(conn, args.tenant)).id
    async with rt.unit(_cli_actor()) as uow:
        tenant = await tenant_service.update(uow, tenant_id, data, as_operator=True)
    emit(args, tenant, f"updated tenant {tenant.name} ({tenant.id})")
    return 0


async def _tenant_suspend(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.pool.acquire() as conn:
        tenant_id = (await tenant_service.resolve(conn, args.tenant)).id
    async with rt.unit(_cli_actor()) as uow:
        tenant = await tenant_service.suspend(uow, tenant_id, args.reason)
    emit(args, tenant, f"suspended tenant {tenant.name} ({tenant.id})")
    return 0


async def _tenant_reactivate(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.pool.acquire() as conn:
        tenant_id = (await tenant_service.resolve(conn, args.tenant)).id
    async with rt.unit(_cli_actor()) as uow:
        tenant = await tenant_service.reactivate(uow, tenant_id)
    emit(args, tenant, f"reactivated tenant {tenant.name} ({tenant.id})")
    return 0


# --- API keys ------------------------------------------------------------------------------------


async def _key_create(rt: Runtime, args: argparse.Namespace) -> int:
    data = _validated(
        {
            "name": args.name,
            "expires_at": args.expires,
            "allowed_models": [m.strip() for m in args.models.split(",") if m.strip()]
            if args.models
            else None,
            "rpm_limit": args.rpm,
            "tpm_limit": args.tpm,
            "spend_cap_nano": _credits_to_nano(args.spend_cap, "--spend-cap")
            if args.spend_cap
            else None,
        },
        ApiKeyCreate,
    )
    async with rt.pool.acquire() as conn:
        tenant_id = (await tenant_service.resolve(conn, args.tenant)).id
    async with rt.unit(_cli_actor()) as uow:
        issued = await api_key_service.create(uow, tenant_id, data)
    emit(args, issued, f"{issued.key}\n(key {issued.id}; shown once, store it now)")
    return 0


async def _key_list(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.pool.acquire() as conn:
        tenant_id = (await tenant_service.resolve(conn, args.tenant)).id
        page = await api_key_service.list_keys(
            conn, tenant_id, include_revoked=args.all, cursor=args.cursor, limit=args.limit
        )
    lines = [f"{k.id}  {k.prefix}…  {k.status:<8} {k.name}" for k in page.data]
    if page.next_cursor:
        lines.append(f"more: --cursor {page.next_cursor}")
    emit(args, page, "\n".join(lines) or "no keys")
    return 0


async def _key_revoke(rt: Runtime, args: argparse.Namespace) -> int:
    key_id = _uuid(args.key_id, "KEY_ID")
    async with rt.unit(_cli_actor()) as uow:
        tenant_id = await api_key_service.tenant_of(uow.conn, key_id)
        key = await api_key_service.revoke(uow, tenant_id, key_id)
    emit(args, key, f"revoked key {key.id} ({key.prefix}…)")
    return 0


async def _key_rotate(rt: Runtime, args: argparse.Namespace) -> int:
    key_id = _uuid(args.key_id, "KEY_ID")
    grace = _validated({"grace_seconds": args.grace}, ApiKeyRotate).grace_seconds
    async with rt.unit(_cli_actor()) as uow:
        tenant_id = await api_key_service.tenant_of(uow.conn, key_id)
        issued = await api_key_service.rotate(uow, tenant_id, key_id, grace_seconds=grace)
    emit(args, issued, f"{issued.key}\n(key {issued.id} replaces {key_id}; shown once)")
    return 0


def _uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise CommandError(f"{what}: {text!r} is not an id") from None


# --- providers -----------------------------------------------------------------------------------


async def _provider_add(rt: Runtime, args: argparse.Namespace) -> int:
    api_key, secret_access_key = args.api_key, args.secret_access_key
    if args.api_key_stdin:
        secret = _read_secret("secret: ")
        if args.kind == "bedrock":
            secret_access_key = secret
        else:
            api_key = secret
    data = _validated(
        {
            "kind": args.kind,
            "name": args.name,
            "api_key": api_key,
            "access_key_id": args.access_key_id,
            "secret_access_key": secret_access_key,
            "region": args.region,
            "base_url": args.base_url,
            "weight": args.weight,
        },
        CredentialCreate,
    )
    async with rt.unit(_cli_actor()) as uow:
        credential = await provider_service.add(uow, data, rt.key_ring)
    emit(
        args,
        credential,
        f"added {credential.kind} credential {credential.name} ({credential.id}),"
        f" secret …{credential.last4}",
    )
    return 0


async def _provider_update(rt: Runtime, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {
        name: msgspec.UNSET if value is None else value
        for name, value in [
            ("name", args.name),
            ("api_key", args.api_key),
            ("access_key_id", args.access_key_id),
            ("secret_access_key", args.secret_access_key),
            ("region", args.region),
            ("weight", args.weight),
        ]
    }
    fields["base_url"] = _optional(args.base_url)
    if args.api_key_stdin:
        async with rt.pool.acquire() as conn:
            kind = (await provider_service.resolve(conn, args.provider)).kind
        fields["secret_access_key" if kind == "bedrock" else "api_key"] = _read_secret("secret: ")
    data = _validated(fields, CredentialUpdate, clears=True)
    async with rt.unit(_cli_actor()) as uow:
        credential_id = (await provider_service.resolve(uow.conn, args.provider)).id
        credential = await provider_service.update(uow, credential_id, data, rt.key_ring)
    emit(args, credential, f"updated {credential.name}, secret …{credential.last4}")
    return 0


async def _provider_list(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.pool.acquire() as conn:
        listing = await provider_service.list_credentials(conn, kind=args.kind)
    lines = [
        f"{c.id}  {c.kind:<10} {'on ' if c.enabled else 'off'} w={c.weight:<4} {c.name}"
        f"  …{c.last4}  {c.base_url or '(default URL)'}"
        for c in listing.data
    ]
    emit(args, listing, "\n".join(lines) or "no provider credentials")
    return 0


async def _provider_show(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.pool.acquire() as conn:
        credential = await provider_service.resolve(conn, args.provider)
    emit(args, credential, msgspec.json.format(msgspec.json.encode(credential)).decode())
    return 0


async def _provider_disable(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.unit(_cli_actor()) as uow:
        credential_id = (await provider_service.resolve(uow.conn, args.provider)).id
        credential = await provider_service.set_enabled(uow, credential_id, False, args.reason)
    emit(args, credential, f"disabled {credential.name}")
    return 0


async def _provider_enable(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.unit(_cli_actor()) as uow:
        credential_id = (await provider_service.resolve(uow.conn, args.provider)).id
        credential = await provider_service.set_enabled(uow, credential_id, True)
    emit(args, credential, f"enabled {credential.name}")
    return 0


async def _provider_test(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.pool.acquire() as conn:
        credential = await provider_service.resolve(conn, args.provider)
        result = await provider_service.test(
            conn,
            credential.id,
            rt.key_ring,
            rt.http,
            rt.settings.provider_test_timeout_seconds,
        )
    emit(args, result, f"{credential.name}: {result.outcome} — {result.message}")
    return 0 if result.ok else 1


# --- models --------------------------------------------------------------------------------------


def _modalities(text: str | None) -> list[str] | None:
    return [m.strip() for m in text.split(",") if m.strip()] if text else None


async def _model_add(rt: Runtime, args: argparse.Namespace) -> int:
    metadata = {
        "context_window": args.context_window,
        "max_output_tokens": args.max_output_tokens,
        "modalities": _modalities(args.modalities),
    }
    create = _validated({"name": args.model, **metadata}, ModelCreate)
    route = _validated(
        {
            "model": args.model,
            "provider": args.provider,
            "upstream_model": args.upstream_model,
            "priority": args.priority,
            "weight": args.weight,
        },
        RouteCreate,
    )
    async with rt.unit(_cli_actor()) as uow:
        created = False
        try:
            await catalog_service.get_model(uow.conn, args.model, with_routes=False)
        except TallyError:
            await catalog_service.add_model(uow, create)
            created = True
        else:
            update = _validated(metadata, ModelUpdate)
            await catalog_service.update_model(uow, args.model, update)
        added = await catalog_service.add_route(uow, route)
    result = {**msgspec.to_builtins(added), "model_created": created}
    emit(
        args,
        result,
        f"{'added model ' + args.model + '; ' if created else ''}{args.model} → "
        f"{added.credential_name}:{added.upstream_model} (priority {added.priority},"
        f" weight {added.weight})",
    )
    return 0


async def _model_list(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.pool.acquire() as conn:
        listing = await catalog_service.list_models(
            conn, with_routes=True, include_disabled=args.all
        )
    lines = []
    for model in listing.data:
        routes = ", ".join(
            f"{r.credential_name}:{r.upstream_model}(p{r.priority},w{r.weight}"
            f"{'' if r.enabled and r.credential_enabled else ',off'})"
            for r in model.routes or []
        )
        lines.append(f"{model.name:<30} {'on ' if model.enabled else 'off'} {routes or '-'}")
    emit(args, listing, "\n".join(lines) or "no models")
    return 0


async def _model_set_enabled(rt: Runtime, args: argparse.Namespace, enabled: bool) -> int:
    async with rt.unit(_cli_actor()) as uow:
        model = await catalog_service.update_model(uow, args.model, ModelUpdate(enabled=enabled))
    emit(args, model, f"{'enabled' if enabled else 'disabled'} {model.name}")
    return 0


async def _model_disable(rt: Runtime, args: argparse.Namespace) -> int:
    return await _model_set_enabled(rt, args, False)


async def _model_enable(rt: Runtime, args: argparse.Namespace) -> int:
    return await _model_set_enabled(rt, args, True)


# --- people --------------------------------------------------------------------------------------


def _password_from(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return _read_secret("password: ")
    password: str | None = args.password
    return password


async def _user_create(rt: Runtime, args: argparse.Namespace) -> int:
    tenant_role = args.role in ("owner", "admin", "member")
    if tenant_role and not args.tenant:
        raise CommandError(f"--role {args.role} is a tenant role: add --tenant ID_OR_NAME")
    if not tenant_role and args.tenant:
        raise CommandError(f"--role {args.role} is a platform role: drop --tenant")
    password = _password_from(args)
    data = _validated(
        {
            "email": args.email,
            "password": password,
            "platform_roles": [] if tenant_role else [args.role],
        },
        UserCreate,
    )
    async with rt.unit(_cli_actor()) as uow:
        tenant_id = (
            (await tenant_service.resolve(uow.conn, args.tenant)).id if tenant_role else None
        )
        row = await people_service.create_user(
            uow,
            email=data.email,
            password=data.password,
            platform_roles=list(data.platform_roles),
        )
        if tenant_id is not None:
            await people_service.add_member(uow, tenant_id, row["id"], args.role)
    user = user_from_row(row)
    result = {**msgspec.to_builtins(user), "tenant_id": str(tenant_id) if tenant_id else None}
    emit(args, result, f"created {user.email} ({user.id}) as {args.role}")
    return 0


async def _user_invite(rt: Runtime, args: argparse.Namespace) -> int:
    tenant_role = args.role in ("owner", "admin", "member")
    if tenant_role and not args.tenant:
        raise CommandError(f"--role {args.role} is a tenant role: add --tenant ID_OR_NAME")
    if not tenant_role and args.tenant:
        raise CommandError(f"--role {args.role} is a platform role: drop --tenant")
    email = _validated({"email": args.email}, UserCreate).email
    async with rt.unit(_cli_actor()) as uow:
        tenant_id = (
            (await tenant_service.resolve(uow.conn, args.tenant)).id if tenant_role else None
        )
        issued = await people_service.invite(
            uow, tenant_id=tenant_id, email=email, role=args.role, settings=rt.settings, by=None
        )
    invitation = issued.invitation
    result = {**msgspec.to_builtins(invitation), "token": issued.token}
    emit(
        args,
        result,
        f"invitation for {invitation.email} as {invitation.role}, valid until"
        f" {invitation.expires_at:%Y-%m-%d %H:%M} UTC:\n{issued.token}\n"
        "(send the token to the invitee: POST /v1/invitations/accept)",
    )
    return 0


async def _user_list(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.pool.acquire() as conn:
        page = await people_service.list_users(
            conn, search=args.search, cursor=args.cursor, limit=args.limit
        )
    lines = [
        f"{u.id}  {u.status:<8} {','.join(u.platform_roles) or '-':<16} {u.email}"
        for u in page.data
    ]
    if page.next_cursor:
        lines.append(f"more: --cursor {page.next_cursor}")
    emit(args, page, "\n".join(lines) or "no users")
    return 0


async def _user_set_password(rt: Runtime, args: argparse.Namespace) -> int:
    from tenant.auth.service import auth_service

    password = _password_from(args)
    if password is None:
        raise CommandError("give --password-stdin or --password")
    async with rt.unit(_cli_actor()) as uow:
        user = await people_service.resolve_user(uow.conn, args.user)
        await auth_service.set_password(uow, user.id, user.email, password)
    emit(args, {"id": str(user.id), "email": user.email}, f"password set for {user.email}")
    return 0


# --- secrets -------------------------------------------------------------------------------------


async def _secrets_rotate(rt: Runtime, args: argparse.Namespace) -> int:
    async with rt.unit(_cli_actor()) as uow:
        result = await provider_service.reseal_all(uow, rt.key_ring)
    emit(args, result, f"re-encrypted {result.reencrypted} secret(s) under key {result.key_id}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `tenant`, `key`, `provider`, `model`, `user` and `secrets` to the `tally` command."""
    tenant = commands.add_parser("tenant", help="create and manage tenants")
    group = tenant.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(group, "create", "create a tenant", _tenant_create)
    p.add_argument("name")
    p.add_argument("--mode", choices=("prepaid", "metered"), default="prepaid")
    p.add_argument("--credits", help="credits to grant at once (decimal, e.g. 100 or 2.5)")
    p.add_argument("--billing-email")
    p.add_argument("--country", help="ISO 3166 two-letter code")
    p.add_argument("--tax-id")
    p.add_argument("--budget-cap", help="metered budget cap in credits")
    p = _command(group, "list", "list tenants, newest first", _tenant_list)
    p.add_argument("--search", help="a fragment of the name or billing email, or an id")
    p.add_argument("--status", choices=("active", "suspended"))
    p.add_argument("--mode", choices=("prepaid", "metered"))
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")
    p = _command(group, "show", "show one tenant", _tenant_show)
    p.add_argument("tenant", metavar="ID_OR_NAME")
    p = _command(group, "update", "change a tenant (`none` clears a field)", _tenant_update)
    p.add_argument("tenant", metavar="ID_OR_NAME")
    p.add_argument("--name")
    p.add_argument("--mode", choices=("prepaid", "metered"))
    p.add_argument("--billing-email")
    p.add_argument("--tax-id")
    p.add_argument("--country")
    p.add_argument("--margin", help="margin override in percent (e.g. 25), or none")
    p.add_argument("--budget-cap", help="metered budget cap in credits, or none")
    p = _command(group, "suspend", "suspend a tenant: its keys stop working", _tenant_suspend)
    p.add_argument("tenant", metavar="ID_OR_NAME")
    p.add_argument("--reason", default="suspended by an operator")
    p = _command(group, "reactivate", "reactivate a suspended tenant", _tenant_reactivate)
    p.add_argument("tenant", metavar="ID_OR_NAME")

    key = commands.add_parser("key", help="issue and manage tenants' API keys")
    group = key.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(group, "create", "issue an API key (shown once)", _key_create)
    p.add_argument("--tenant", required=True, metavar="ID_OR_NAME")
    p.add_argument("--name", default="default")
    p.add_argument("--expires", metavar="ISO8601", help="e.g. 2027-01-01T00:00:00Z")
    p.add_argument("--models", help="comma-separated allow-list of model names")
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute")
    p.add_argument("--spend-cap", help="most the key may spend, in credits")
    p = _command(group, "list", "list a tenant's keys", _key_list)
    p.add_argument("--tenant", required=True, metavar="ID_OR_NAME")
    p.add_argument("--all", action="store_true", help="include revoked keys")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")
    p = _command(group, "revoke", "revoke a key", _key_revoke)
    p.add_argument("key_id", metavar="KEY_ID")
    p = _command(group, "rotate", "replace a key by a new one", _key_rotate)
    p.add_argument("key_id", metavar="KEY_ID")
    p.add_argument("--grace", type=int, default=0, help="seconds the old key keeps working")

    provider = commands.add_parser("provider", help="connect and manage provider credentials")
    group = provider.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(group, "add", "add a provider credential", _provider_add)
    p.add_argument("--kind", required=True, choices=PROVIDER_KINDS)
    p.add_argument("--api-key", help="the provider API key (or use --api-key-stdin)")
    p.add_argument(
        "--api-key-stdin",
        action="store_true",
        help="read the secret from stdin (bedrock: the secret access key)",
    )
    p.add_argument("--access-key-id", help="bedrock: AWS access key id")
    p.add_argument("--secret-access-key", help="bedrock: AWS secret access key")
    p.add_argument("--region", help="bedrock: AWS region, e.g. us-east-1")
    p.add_argument("--base-url", help="API base URL (default: the provider's public API)")
    p.add_argument("--name", help="default: the kind (openai, openai-2, ...)")
    p.add_argument("--weight", type=int, default=1)
    p = _command(
        group, "update", "change a credential (a new secret, URL, weight)", _provider_update
    )
    p.add_argument("provider", metavar="NAME_OR_ID")
    p.add_argument("--api-key", help="a new API key (or use --api-key-stdin)")
    p.add_argument("--api-key-stdin", action="store_true", help="read the new secret from stdin")
    p.add_argument("--access-key-id", help="bedrock: a new AWS access key id")
    p.add_argument("--secret-access-key", help="bedrock: a new AWS secret access key")
    p.add_argument("--region", help="bedrock: AWS region")
    p.add_argument("--base-url", help="API base URL, or none for the provider's default")
    p.add_argument("--name", help="rename the credential")
    p.add_argument("--weight", type=int)
    p = _command(group, "list", "list provider credentials", _provider_list)
    p.add_argument("--kind", choices=PROVIDER_KINDS)
    for name, help_text, handler in (
        ("show", "show one credential", _provider_show),
        ("enable", "enable a credential", _provider_enable),
        ("test", "test a credential against the provider", _provider_test),
    ):
        p = _command(group, name, help_text, handler)
        p.add_argument("provider", metavar="NAME_OR_ID")
    p = _command(group, "disable", "disable a credential", _provider_disable)
    p.add_argument("provider", metavar="NAME_OR_ID")
    p.add_argument("--reason", default="disabled by an operator")

    model = commands.add_parser("model", help="manage the model catalog and routes")
    group = model.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(group, "add", "add a route (and the model, if new)", _model_add)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--provider", required=True, metavar="NAME", help="credential name or id")
    p.add_argument("--upstream-model", help="the provider's model id (default: MODEL)")
    p.add_argument("--priority", type=int, default=0, help="lower is tried first")
    p.add_argument("--weight", type=int, default=1)
    p.add_argument("--context-window", type=int)
    p.add_argument("--max-output-tokens", type=int)
    p.add_argument("--modalities", help="comma-separated: text,image,image_generation,...")
    p = _command(group, "list", "list models and their routes", _model_list)
    p.add_argument("--all", action="store_true", help="include disabled models")
    for name, help_text, handler in (
        ("disable", "disable a model", _model_disable),
        ("enable", "enable a model", _model_enable),
    ):
        p = _command(group, name, help_text, handler)
        p.add_argument("model", metavar="MODEL")

    user = commands.add_parser("user", help="manage people and invitations")
    group = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(group, "create", "create an account (e.g. the first operator)", _user_create)
    p.add_argument("--email", required=True)
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    secret.add_argument("--password")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--tenant", metavar="ID_OR_NAME", help="for owner, admin or member")
    p = _command(group, "invite", "invite someone (prints the invitation token)", _user_invite)
    p.add_argument("--email", required=True)
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--tenant", metavar="ID_OR_NAME", help="for owner, admin or member")
    p = _command(group, "list", "list accounts", _user_list)
    p.add_argument("--search")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")
    p = _command(group, "set-password", "set an account's password", _user_set_password)
    p.add_argument("user", metavar="EMAIL_OR_ID")
    secret = p.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password-stdin", action="store_true")
    secret.add_argument("--password")

    secrets_parser = commands.add_parser("secrets", help="provider-secret encryption keys")
    group = secrets_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    _command(
        group,
        "rotate",
        "re-encrypt every provider secret under the first key of TALLY_SECRET_KEY",
        _secrets_rotate,
    )
