"""Billing's operator commands: prices, credits, balances, the fold and replay.

    tally price set MODEL --input USD --output USD [--cached-input ..] [--cache-write ..]
                          [--reasoning ..] [--per-request ..] [--image SIZE[/Q]=USD ...]
                          [--margin PCT] [--effective ISO] [--force]
    tally price default-margin PCT [--force]     tally price credit-price USD
    tally price import FILE [--margin PCT] [--effective ISO] [--force]
    tally price list
    tally credits grant --tenant ID_OR_NAME --credits N [--reason R] [--expires ISO8601]
    tally credits adjust --tenant ID_OR_NAME --credits ±N --reason R
    tally balance --tenant ID_OR_NAME
    tally fold                                    tally reconcile
    tally replay --verify

Every command takes `--json` and then prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as redis

from tally.cli import CommandError, add_json_flag, emit
from tally.config import Settings, SettingsError, get_settings
from tally.db import create_pool
from tally.errors import TallyError
from tally.events.tenant import Actor
from tally.log import configure_logging
from tally.money import MoneyError, format_credits, parse_credits, to_decimal
from tally.supervisor import command_settings


@dataclass
class _Resources:
    settings: Settings
    pool: asyncpg.Pool
    redis: redis.Redis | None


@asynccontextmanager
async def _resources(*, need_redis: bool = False) -> AsyncIterator[_Resources]:
    settings = command_settings()
    try:
        pool = await create_pool(settings, min_size=1, max_size=4)
    except (OSError, asyncpg.PostgresError) as exc:
        raise CommandError(f"cannot reach Postgres: {exc}") from None
    client = redis.from_url(settings.redis_url) if settings.redis_url else None  # type: ignore[no-untyped-call]
    if need_redis and client is None:
        await pool.close()
        raise SettingsError("TALLY_REDIS_URL: required by this command")
    try:
        yield _Resources(settings, pool, client)
    finally:
        if client is not None:
            await client.aclose()
        await pool.close()


def _run(coroutine: Awaitable[int]) -> int:
    # Logs go to stderr, so stdout carries only the command's result.
    configure_logging(get_settings())
    try:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    except TallyError as exc:
        raise CommandError(exc.message) from None
    except MoneyError as exc:
        raise CommandError(str(exc)) from None


def _actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return Actor(kind="cli", id=user)


def _decimal(text: str, name: str) -> Decimal:
    try:
        return to_decimal(text.strip().removeprefix("$"))
    except MoneyError:
        raise CommandError(f"{name}: not a decimal number: {text!r}") from None


def _moment(text: str | None, name: str) -> datetime | None:
    """ISO 8601; a date or a time without zone is taken as UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(f"{name}: not an ISO 8601 date or time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _credits(text: str, name: str = "--credits") -> int:
    try:
        return parse_credits(text)
    except MoneyError as exc:
        raise CommandError(f"{name}: {exc}") from None


def _handler(function: Callable[[argparse.Namespace], Awaitable[int]]) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        return _run(function(args))

    return run


# --- price ---------------------------------------------------------------------------------


async def _price_set(args: argparse.Namespace) -> int:
    from billing.prices.schemas import PriceIn
    from billing.prices.service import price_service

    images: dict[str, Decimal] = {}
    for item in args.image or []:
        size, sep, usd = item.partition("=")
        if not sep or not size:
            raise CommandError(f"--image: expected SIZE[/QUALITY]=USD, got {item!r}")
        images[size.strip()] = _decimal(usd, "--image")
    try:
        data = msgspec.convert(
            {
                "model": args.model,
                "input_per_mtok": _decimal(args.input, "--input"),
                "output_per_mtok": _decimal(args.output, "--output"),
                "cached_input_per_mtok": _decimal(args.cached_input, "--cached-input")
                if args.cached_input is not None
                else None,
                "cache_write_per_mtok": _decimal(args.cache_write, "--cache-write")
                if args.cache_write is not None
                else None,
                "reasoning_per_mtok": _decimal(args.reasoning, "--reasoning")
                if args.reasoning is not None
                else None,
                "per_image": images,
                "per_request": _decimal(args.per_request, "--per-request"),
                "margin_pct": _decimal(args.margin, "--margin")
                if args.margin is not None
                else None,
                "effective_at": _moment(args.effective, "--effective"),
                "force": args.force,
            },
            PriceIn,
        )
    except msgspec.ValidationError as exc:
        raise CommandError(str(exc)) from None
    async with _resources() as res, res.pool.acquire() as conn:
        change = await price_service.set_price(conn, res.redis, data, _actor())
    human = f"{change.model}: price-book version {change.price_version}"
    for warning in change.warnings:
        human += f"\nwarning (forced): {warning}"
    emit(args, change, human)
    return 0


async def _price_default_margin(args: argparse.Namespace) -> int:
    from billing.prices.service import price_service

    margin = _decimal(args.margin, "PCT")
    async with _resources() as res, res.pool.acquire() as conn:
        change = await price_service.set_default_margin(
            conn, res.redis, margin, args.force, _actor()
        )
    emit(args, change, f"default margin {margin}%: price-book version {change.price_version}")
    return 0


async def _price_credit_price(args: argparse.Namespace) -> int:
    from billing.prices.service import price_service

    usd = _decimal(args.usd, "USD")
    async with _resources() as res, res.pool.acquire() as conn:
        change = await price_service.set_credit_price(conn, res.redis, usd, _actor())
    emit(args, change, f"1 credit = ${usd}: price-book version {change.price_version}")
    return 0


async def _price_import(args: argparse.Namespace) -> int:
    from billing.prices.service import load_catalog, price_service

    catalog = load_catalog(Path(args.file))
    margin = _decimal(args.margin, "--margin") if args.margin is not None else None
    async with _resources() as res, res.pool.acquire() as conn:
        result = await price_service.import_catalog(
            conn,
            res.redis,
            catalog,
            margin_pct=margin,
            effective_at=_moment(args.effective, "--effective"),
            force=args.force,
            actor=_actor(),
        )
    human = f"imported {len(result.imported)} model(s), {len(result.unchanged)} unchanged"
    for warning in result.warnings:
        human += f"\nwarning (forced): {warning}"
    emit(args, result, human)
    return 0


async def _price_list(args: argparse.Namespace) -> int:
    from billing.prices.service import price_service

    async with _resources() as res, res.pool.acquire() as conn:
        book = await price_service.price_book(conn)
    lines = [
        f"price-book version {book.price_version}; default margin {book.default_margin_pct}%;"
        f" 1 credit = ${book.credit_price_usd}"
    ]
    for m in book.models:
        lines.append(
            f"  {m.model:<40} in ${m.price.input_per_mtok}/Mtok  out ${m.price.output_per_mtok}"
            f"/Mtok  margin {m.effective_margin_pct}%{'  BELOW COST' if m.below_cost else ''}"
        )
    lines.extend(f"below cost: {finding}" for finding in book.below_cost)
    emit(args, book, "\n".join(lines))
    return 0


# --- credits and balance ---------------------------------------------------------------------


async def _credits_grant(args: argparse.Namespace) -> int:
    from billing.accounts.service import resolve_tenant
    from billing.grants.schemas import GrantIn
    from billing.grants.service import grant_service

    amount = _credits(args.credits)
    if amount <= 0:
        raise CommandError("--credits must be positive (use `tally credits adjust` to remove)")
    data = GrantIn(
        amount_nano=amount,
        kind=args.kind,
        reason=args.reason or "",
        expires_at=_moment(args.expires, "--expires"),
    )
    async with _resources() as res, res.pool.acquire() as conn:
        tenant = await resolve_tenant(conn, args.tenant)
        granted = await grant_service.grant(conn, tenant.id, data, _actor())
    result = {**msgspec.to_builtins(granted), "credits": format_credits(amount)}
    emit(args, result, f"granted {format_credits(amount)} credits to {tenant.name}")
    return 0


async def _credits_adjust(args: argparse.Namespace) -> int:
    from billing.accounts.service import resolve_tenant
    from billing.grants.schemas import AdjustmentIn
    from billing.grants.service import grant_service

    amount = _credits(args.credits)
    if not args.reason or not args.reason.strip():
        raise CommandError("--reason is required")
    if amount == 0:
        raise CommandError("--credits must not be zero")
    async with _resources() as res, res.pool.acquire() as conn:
        tenant = await resolve_tenant(conn, args.tenant)
        adjusted = await grant_service.adjust(
            conn, tenant.id, AdjustmentIn(amount_nano=amount, reason=args.reason), _actor()
        )
    result = {**msgspec.to_builtins(adjusted), "credits": format_credits(amount)}
    emit(args, result, f"adjusted {tenant.name} by {format_credits(amount)} credits")
    return 0


async def _balance(args: argparse.Namespace) -> int:
    from billing.accounts.service import resolve_tenant
    from billing.balances.service import balance_service
    from tally.live_balance import LiveBalances

    async with _resources() as res, res.pool.acquire() as conn:
        tenant = await resolve_tenant(conn, args.tenant)
        live = LiveBalances(res.redis) if res.redis is not None else None
        balance = await balance_service.balance(
            conn, live, tenant.id, fold_shards=res.settings.fold_shards
        )
    result: dict[str, Any] = {**msgspec.to_builtins(balance), "tenant_name": tenant.name}
    emit(
        args,
        result,
        f"{tenant.name}: balance {balance.balance_credits} credits,"
        f" available {balance.available_credits}",
    )
    return 0


# --- fold, reconcile, replay ------------------------------------------------------------------


async def _fold(args: argparse.Namespace) -> int:
    from billing.fold.service import Folder
    from tally.live_balance import LiveBalances

    async with _resources() as res:
        live = LiveBalances(res.redis) if res.redis is not None else None
        folder = Folder(
            res.pool,
            shard_count=res.settings.fold_shards,
            live=live,
            batch_size=res.settings.fold_batch_size,
        )
        # Everything committed so far, waiting out transactions still running elsewhere.
        run = await folder.drain(timeout=args.timeout)
    emit(
        args,
        {"events": run.events, "batches": run.batches, "caught_up": run.caught_up},
        f"folded {run.events} event(s)" + ("" if run.caught_up else " (not caught up yet)"),
    )
    return 0


async def _reconcile(args: argparse.Namespace) -> int:
    from billing.balances.reconcile import Reconciler

    async with _resources(need_redis=True) as res:
        assert res.redis is not None
        report = await Reconciler(res.pool, res.redis, res.settings).run()
    emit(
        args,
        report,
        f"{report.tenants} tenant(s): {report.drifted} drifted, {report.repaired} repaired,"
        f" {report.rebuilt_missing} rebuilt",
    )
    return 0


async def _replay(args: argparse.Namespace) -> int:
    from billing.fold.replay import replay_verify

    if not args.verify:
        raise CommandError("only `tally replay --verify` exists: it never changes live data")
    settings = command_settings()
    report = await replay_verify(settings.database_url, batch_size=settings.fold_batch_size)
    lines = [
        f"replayed {report.events_replayed} event(s) in {report.seconds} s:"
        f" {'identical' if report.ok else 'DIFFERENCES FOUND'}"
    ]
    for table, diff in report.tables.items():
        lines.append(
            f"  {table:<26} live {diff.live_rows:>10}  replayed {diff.replayed_rows:>10}"
            f"  differences {diff.differences}"
        )
    lines.extend(f"  {error}" for error in report.invariant_errors)
    if report.conservation_violations:
        lines.append(f"  balances breaking conservation: {report.conservation_violations}")
    emit(args, report, "\n".join(lines))
    return 0 if report.ok else 1


# --- registration ---------------------------------------------------------------------------


def register(commands: Any) -> None:
    """Add billing's commands to the `tally` parser."""
    price = commands.add_parser("price", help="the price book: model prices and margins")
    price_commands = price.add_subparsers(dest="price_command", required=True, metavar="COMMAND")

    set_ = price_commands.add_parser("set", help="set a model's base prices (USD) and margin")
    set_.add_argument("model")
    set_.add_argument("--input", required=True, metavar="USD_PER_MTOK")
    set_.add_argument("--output", required=True, metavar="USD_PER_MTOK")
    set_.add_argument("--cached-input", metavar="USD_PER_MTOK")
    set_.add_argument("--cache-write", metavar="USD_PER_MTOK")
    set_.add_argument("--reasoning", metavar="USD_PER_MTOK")
    set_.add_argument("--per-request", default="0", metavar="USD")
    set_.add_argument("--image", action="append", metavar="SIZE[/QUALITY]=USD")
    set_.add_argument("--margin", metavar="PCT", help="default: the global default margin")
    set_.add_argument("--effective", metavar="ISO8601", help="when it takes effect (default now)")
    set_.add_argument("--force", action="store_true", help="accept a price below base cost")
    add_json_flag(set_)
    set_.set_defaults(handler=_handler(_price_set))

    default = price_commands.add_parser("default-margin", help="set the global default margin")
    default.add_argument("margin", metavar="PCT")
    default.add_argument("--force", action="store_true", help="accept a negative margin")
    add_json_flag(default)
    default.set_defaults(handler=_handler(_price_default_margin))

    credit = price_commands.add_parser("credit-price", help="set the USD price of one credit")
    credit.add_argument("usd", metavar="USD")
    add_json_flag(credit)
    credit.set_defaults(handler=_handler(_price_credit_price))

    import_ = price_commands.add_parser("import", help="import a price catalog (JSON)")
    import_.add_argument("file", help="e.g. catalog/prices.json")
    import_.add_argument("--margin", metavar="PCT", help="for entries without their own margin")
    import_.add_argument("--effective", metavar="ISO8601")
    import_.add_argument("--force", action="store_true")
    add_json_flag(import_)
    import_.set_defaults(handler=_handler(_price_import))

    list_ = price_commands.add_parser("list", help="the book in force, with below-cost findings")
    add_json_flag(list_)
    list_.set_defaults(handler=_handler(_price_list))

    credits = commands.add_parser("credits", help="grant credits or adjust a balance")
    credit_commands = credits.add_subparsers(
        dest="credits_command", required=True, metavar="COMMAND"
    )
    grant = credit_commands.add_parser("grant", help="grant free credits")
    grant.add_argument("--tenant", required=True, metavar="ID_OR_NAME")
    grant.add_argument("--credits", required=True, metavar="N")
    grant.add_argument("--reason", default="")
    grant.add_argument("--expires", metavar="ISO8601")
    grant.add_argument("--kind", choices=("manual", "promotional"), default="manual")
    add_json_flag(grant)
    grant.set_defaults(handler=_handler(_credits_grant))

    adjust = credit_commands.add_parser("adjust", help="correct a balance up or down")
    adjust.add_argument("--tenant", required=True, metavar="ID_OR_NAME")
    adjust.add_argument("--credits", required=True, metavar="±N")
    adjust.add_argument("--reason", required=True)
    add_json_flag(adjust)
    adjust.set_defaults(handler=_handler(_credits_adjust))

    balance = commands.add_parser("balance", help="a tenant's balance and available credits")
    balance.add_argument("--tenant", required=True, metavar="ID_OR_NAME")
    add_json_flag(balance)
    balance.set_defaults(handler=_handler(_balance))

    fold = commands.add_parser("fold", help="fold the log into balances now (catch up)")
    fold.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")
    add_json_flag(fold)
    fold.set_defaults(handler=_handler(_fold))

    reconcile = commands.add_parser("reconcile", help="reconcile Redis live balances now")
    add_json_flag(reconcile)
    reconcile.set_defaults(handler=_handler(_reconcile))

    replay = commands.add_parser(
        "replay", help="rebuild every money projection from the log and compare"
    )
    replay.add_argument("--verify", action="store_true", help="compare with the live tables")
    add_json_flag(replay)
    replay.set_defaults(handler=_handler(_replay))
