"""Operator commands: `tally checkout create`, `tally pack create|list|archive`,
`tally payments reconcile`. Each takes `--json` and then prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec

from billing.payments.reconciliation import Reconciliation
from billing.payments.runtime import PaymentsRuntime
from billing.payments.schemas import CheckoutRequest, CreatePackRequest
from billing.payments.service import PaymentsService
from tally.cli import CommandError, add_json_flag, emit
from tally.db import create_pool
from tally.errors import TallyError
from tally.events.tenant import Actor
from tally.log import configure_logging
from tally.supervisor import command_settings

T = TypeVar("T")
CLI_ACTOR = Actor(kind="cli")


def register(commands: Any) -> None:
    checkout = commands.add_parser("checkout", help="Stripe Checkout sessions (payment links)")
    checkout_cmds = checkout.add_subparsers(dest="checkout_command", required=True)
    create = checkout_cmds.add_parser(
        "create", help="make a Checkout Session for a tenant, to send as a payment link"
    )
    create.add_argument("--tenant", required=True, help="tenant id or name")
    amount = create.add_mutually_exclusive_group(required=True)
    amount.add_argument("--credits", type=int, help="a custom amount of whole credits")
    amount.add_argument("--pack", help="a pack id")
    create.add_argument("--save-card", action="store_true", help="save the card for auto top-up")
    add_json_flag(create)
    create.set_defaults(handler=_checkout_create)

    pack = commands.add_parser("pack", help="credit packs on sale")
    pack_cmds = pack.add_subparsers(dest="pack_command", required=True)
    pack_create = pack_cmds.add_parser("create", help="offer a pack")
    pack_create.add_argument("--name", required=True)
    pack_create.add_argument("--credits", type=int, required=True, help="whole credits")
    pack_create.add_argument("--price", required=True, help='decimal price, e.g. "90.00"')
    pack_create.add_argument("--currency", default="usd")
    add_json_flag(pack_create)
    pack_create.set_defaults(handler=_pack_create)
    pack_list = pack_cmds.add_parser("list", help="packs on sale")
    pack_list.add_argument("--all", action="store_true", help="include archived packs")
    add_json_flag(pack_list)
    pack_list.set_defaults(handler=_pack_list)
    pack_archive = pack_cmds.add_parser("archive", help="withdraw a pack from sale")
    pack_archive.add_argument("pack_id")
    add_json_flag(pack_archive)
    pack_archive.set_defaults(handler=_pack_archive)

    payments = commands.add_parser("payments", help="Stripe payments: reconciliation")
    payments_cmds = payments.add_subparsers(dest="payments_command", required=True)
    reconcile = payments_cmds.add_parser(
        "reconcile", help="compare Stripe's payments and refunds with the log for a period"
    )
    reconcile.add_argument("--since", required=True, help="ISO 8601 start (inclusive)")
    reconcile.add_argument("--until", required=True, help="ISO 8601 end (exclusive)")
    add_json_flag(reconcile)
    reconcile.set_defaults(handler=_reconcile)


def _run(work: Callable[[PaymentsRuntime], Awaitable[T]]) -> T:
    settings = command_settings()
    configure_logging(settings)

    async def main() -> T:
        pool = await create_pool(settings, min_size=1, max_size=2)
        runtime = PaymentsRuntime(pool=pool, settings=settings)
        try:
            return await work(runtime)
        except TallyError as exc:
            raise CommandError(exc.message) from None
        finally:
            await runtime.close()
            await pool.close()

    return asyncio.run(main())


def _uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise CommandError(f"{what} must be an id, got {text!r}") from None


def _validated(type_: type[T], **fields: Any) -> T:
    """The request struct, checked like an API body (bounds, patterns)."""
    try:
        return msgspec.convert(fields, type_)
    except msgspec.ValidationError as exc:
        raise CommandError(str(exc).replace("$.", "--")) from None


def _checkout_create(args: argparse.Namespace) -> int:
    pack_id = _uuid(args.pack, "--pack") if args.pack else None
    request = _validated(
        CheckoutRequest, pack_id=pack_id, credits=args.credits, save_payment_method=args.save_card
    )

    async def work(runtime: PaymentsRuntime) -> Any:
        service = PaymentsService(runtime)
        tenant = await service.resolve_tenant(args.tenant)
        return await service.create_checkout(tenant.id, request, CLI_ACTOR)

    created = _run(work)
    emit(args, created, f"{created.url}\n(session {created.session_id}, {created.credits} credits)")
    return 0


def _pack_create(args: argparse.Namespace) -> int:
    request = _validated(
        CreatePackRequest,
        name=args.name,
        credits=args.credits,
        price=args.price,
        currency=args.currency,
    )

    async def work(runtime: PaymentsRuntime) -> Any:
        return await PaymentsService(runtime).create_pack(request, CLI_ACTOR)

    pack = _run(work)
    emit(args, pack, f"{pack.id}  {pack.name}: {pack.credits} credits for {pack.price_display}")
    return 0


def _pack_list(args: argparse.Namespace) -> int:
    async def work(runtime: PaymentsRuntime) -> Any:
        return await PaymentsService(runtime).list_packs(include_archived=args.all)

    packs = _run(work)
    lines = [
        f"{p.id}  {p.name}: {p.credits} credits for {p.price_display}"
        + ("" if p.active else " (archived)")
        for p in packs.data
    ]
    emit(args, packs, "\n".join(lines) or "no packs")
    return 0


def _pack_archive(args: argparse.Namespace) -> int:
    pack_id = _uuid(args.pack_id, "PACK_ID")

    async def work(runtime: PaymentsRuntime) -> Any:
        return await PaymentsService(runtime).archive_pack(pack_id, CLI_ACTOR)

    pack = _run(work)
    emit(args, pack, f"archived {pack.id} ({pack.name})")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    try:
        since = datetime.fromisoformat(args.since)
        until = datetime.fromisoformat(args.until)
    except ValueError as exc:
        raise CommandError(f"bad time: {exc}") from None

    async def work(runtime: PaymentsRuntime) -> Any:
        return await Reconciliation(runtime).run_period(since, until)

    run = _run(work)
    emit(
        args,
        run,
        f"run {run.id}: {run.stripe_payments} payments, {run.stripe_refunds} refunds, "
        f"{run.mismatch_count} mismatch(es)",
    )
    return 0 if run.mismatch_count == 0 else 3
