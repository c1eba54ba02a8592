"""Random interleavings of every money event, price changes, fold crashes and re-runs.

After any history: each balance equals the conservation formula (with the charges recomputed
independently, the way the gateway prices), the fold (in batches, through crashes) equals the
same events applied in memory, the ledger adds up to the balance, replay rebuilds every
projection identically, and Redis ends equal to Postgres. To the nano-credit.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.balances.reconcile import Reconciler
from billing.fold.credits import TenantCredits
from billing.fold.replay import replay_verify
from billing.fold.service import Folder
from tally.config import get_settings
from tally.eventlog import Event
from tally.events.billing import (
    BalanceAdjusted,
    CreditsExpired,
    CreditsFrozen,
    CreditsGranted,
    CreditsPurchased,
    CreditsRefunded,
    CreditsUnfrozen,
    UsageRecorded,
)
from tally.live_balance import LiveBalances
from tests.fixtures.services import _TRUNCATE_ALL
from tests.integration.billing.helpers import ACTOR, append, create_tenant, gateway_usage, set_price

CREDIT = 10**9
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODELS = ("alpha", "beta")

tenant_index = st.integers(0, 2)
small_credits = st.integers(1, 40).map(lambda c: c * CREDIT // 4)
step = st.one_of(
    st.tuples(
        st.just("usage"),
        tenant_index,
        st.sampled_from(MODELS),
        st.integers(0, 400_000),
        st.integers(0, 200_000),
        st.booleans(),
    ),
    st.tuples(st.just("grant"), tenant_index, small_credits, st.booleans()),
    st.tuples(st.just("expire"), tenant_index, st.integers(0, 5)),
    st.tuples(st.just("purchase"), tenant_index, st.integers(0, 3), small_credits),
    st.tuples(st.just("refund"), tenant_index, st.integers(0, 3), small_credits),
    st.tuples(st.just("freeze"), tenant_index, st.integers(0, 1), st.integers(0, 3), small_credits),
    st.tuples(
        st.just("unfreeze"), tenant_index, st.integers(0, 1), st.sampled_from(["won", "lost"])
    ),
    st.tuples(
        st.just("adjust"),
        tenant_index,
        st.integers(-20, 20).filter(bool).map(lambda c: c * CREDIT // 8),
    ),
    st.tuples(
        st.just("price"),
        st.sampled_from(MODELS),
        st.integers(0, 30),
        st.integers(0, 60),
        st.sampled_from([None, "0", "12.5", "40"]),
    ),
    st.tuples(
        st.just("retry_append"),
    ),
    st.tuples(
        st.just("fold"),
        st.sampled_from([None, "after_writes", "after_commit"]),
        st.integers(0, 2),
        st.integers(1, 6),
    ),
    st.tuples(
        st.just("redis_lost"),
    ),
)


class Crash(RuntimeError):
    pass


@dataclass
class History:
    tenants: list[uuid.UUID]
    # Usage happens after the prices it is priced with took effect (they take effect when set).
    start: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(seconds=5))
    events: dict[uuid.UUID, list[Event]] = field(default_factory=lambda: defaultdict(list))
    grants: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=lambda: defaultdict(list))
    expected_charge: dict[uuid.UUID, int] = field(default_factory=lambda: defaultdict(int))
    usage_count: dict[uuid.UUID, int] = field(default_factory=lambda: defaultdict(int))
    # Usage the "gateway" charged 3 nano-credits too much (the fold must report and correct).
    wrong: set[str] = field(default_factory=set)
    last: tuple[Event, str] | None = None


async def _reset(pool: asyncpg.Pool, client: redis.Redis) -> None:
    async with pool.acquire() as conn:
        await conn.execute(_TRUNCATE_ALL)
    await client.flushdb()


async def _apply(
    pool: asyncpg.Pool, live: LiveBalances, history: History, step: tuple[Any, ...], n: int
) -> None:
    kind = step[0]
    event: Event | None = None
    if kind == "usage":
        _, i, model, tokens_in, tokens_out, wrong = step
        tenant = history.tenants[i]
        usage = await gateway_usage(
            pool,
            tenant,
            model,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            occurred_at=history.start + timedelta(minutes=n * 7),
            charge_delta=3 if wrong else 0,
        )
        history.expected_charge[tenant] += usage.charge_nano - (3 if wrong else 0)
        history.usage_count[tenant] += 1
        if wrong:
            history.wrong.add(usage.request_id)
        # The gateway's order: settle in Redis, then append the usage event.
        await live.settle(tenant, usage.request_id, usage.charge_nano)
        event = usage
    elif kind == "grant":
        _, i, amount, expiring = step
        tenant = history.tenants[i]
        grant_id = uuid.uuid4()
        history.grants[tenant].append(grant_id)
        event = CreditsGranted(
            tenant_id=tenant,
            grant_id=grant_id,
            amount_nano=amount,
            kind="promotional",
            reason="promo",
            actor=ACTOR,
            expires_at=history.start + timedelta(days=1) if expiring else None,
        )
    elif kind == "expire":
        _, i, which = step
        tenant = history.tenants[i]
        grants = history.grants[tenant]
        grant_id = grants[which % len(grants)] if grants else uuid.uuid4()
        event = CreditsExpired(tenant_id=tenant, grant_id=grant_id)
        # The expiry job's key makes a second expiry of a grant a duplicate, not an event.
        if not _expired_before(history, tenant, grant_id):
            history.events[tenant].append(event)
        await append(pool, event, f"expire:{grant_id}")
        return
    elif kind == "purchase":
        _, i, p, amount = step
        tenant = history.tenants[i]
        event = CreditsPurchased(
            tenant_id=tenant,
            purchase_id=f"{tenant}-p{p}",
            amount_nano=amount,
            paid_minor=amount // 10**7,
            currency="usd",
            source="checkout",
        )
    elif kind == "refund":
        _, i, p, amount = step
        tenant = history.tenants[i]
        event = CreditsRefunded(
            tenant_id=tenant,
            refund_id=f"re-{n}",
            purchase_id=f"{tenant}-p{p}",
            amount_nano=amount,
            refunded_minor=amount // 10**7,
            currency="usd",
        )
    elif kind == "freeze":
        _, i, d, p, amount = step
        tenant = history.tenants[i]
        event = CreditsFrozen(
            tenant_id=tenant,
            dispute_id=f"{tenant}-d{d}-{n}",
            purchase_id=f"{tenant}-p{p}",
            amount_nano=amount,
        )
    elif kind == "unfreeze":
        _, i, d, outcome = step
        tenant = history.tenants[i]
        opened = [
            e.dispute_id
            for e in history.events[tenant]
            if isinstance(e, CreditsFrozen) and e.dispute_id.startswith(f"{tenant}-d{d}-")
        ]
        dispute = opened[-1] if opened else f"{tenant}-d{d}-early{n}"
        event = CreditsUnfrozen(tenant_id=tenant, dispute_id=dispute, outcome=outcome)
    elif kind == "adjust":
        _, i, amount = step
        tenant = history.tenants[i]
        event = BalanceAdjusted(
            tenant_id=tenant,
            adjustment_id=uuid.uuid4(),
            amount_nano=amount,
            reason="fix",
            actor=ACTOR,
        )
    elif kind == "price":
        _, model, cents_in, cents_out, margin = step
        await set_price(pool, model, f"{cents_in / 10}", f"{cents_out / 10}", margin=margin)
        return
    elif kind == "retry_append":
        if history.last is not None:
            await append(pool, *history.last)  # a retried append changes nothing
        return
    assert event is not None
    key = f"e-{uuid.uuid4()}"
    await append(pool, event, key)
    history.last = (event, key)
    history.events[event.tenant_id].append(event)  # type: ignore[attr-defined]


def _expired_before(history: History, tenant: uuid.UUID, grant_id: uuid.UUID) -> bool:
    return any(
        isinstance(e, CreditsExpired) and e.grant_id == grant_id for e in history.events[tenant]
    )


async def _fold(pool: asyncpg.Pool, live: LiveBalances, shards: int, step: tuple[Any, ...]) -> None:
    _, point, after, batch_size = step
    calls = {"after_writes": 0, "after_commit": 0}

    def fault(where: str) -> None:
        if where == point:
            calls[where] += 1
            if calls[where] > after:
                raise Crash(where)

    folder = Folder(pool, shard_count=shards, live=live, batch_size=batch_size, fault=fault)
    try:
        await folder.fold_all()
    except Crash:
        pass  # the worker died; the next run picks up from the checkpoint


def _in_memory(events: list[Event]) -> TenantCredits:
    """The same events applied without a database, batches or crashes (charges as recorded
    minus the injected error, i.e. as the gateway priced them)."""
    credits = TenantCredits()
    for position, event in enumerate(events, start=1):
        if isinstance(event, UsageRecorded):
            credits.charge(event.charge_nano)
        elif isinstance(event, CreditsGranted):
            credits.grant(
                str(event.grant_id),
                event.amount_nano,
                source=event.kind,
                expires_at=event.expires_at,
                position=position,
                at=T0,
            )
        elif isinstance(event, CreditsExpired):
            credits.expire(str(event.grant_id), position=position)
        elif isinstance(event, CreditsPurchased):
            credits.purchase(event.purchase_id, event.amount_nano, position=position, at=T0)
        elif isinstance(event, CreditsRefunded):
            credits.refund(event.purchase_id, event.amount_nano)
        elif isinstance(event, CreditsFrozen):
            credits.freeze(event.dispute_id, event.purchase_id, event.amount_nano)
        elif isinstance(event, CreditsUnfrozen):
            credits.unfreeze(event.dispute_id, event.outcome)
        elif isinstance(event, BalanceAdjusted):
            credits.adjust(str(event.adjustment_id), event.amount_nano, position=position, at=T0)
    return credits


@pytest.mark.slow
@settings(
    max_examples=int(__import__("os").environ.get("TALLY_FOLD_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=30), shards=st.sampled_from([1, 2]))
async def test_any_history_conserves_credits_and_replays_identically(
    pool: asyncpg.Pool, redis_client: redis.Redis, steps: list[tuple[Any, ...]], shards: int
) -> None:
    await _reset(pool, redis_client)
    live = LiveBalances(redis_client)
    tenants = [await create_tenant(pool) for _ in range(3)]
    for model in MODELS:
        await set_price(pool, model, "1.5", "6", margin="20")
    history = History(tenants=tenants)
    for tenant in tenants:
        await live.load(tenant, seq=0, balance_nano=0, unfolded={})
    for n, item in enumerate(steps):
        if item[0] == "fold":
            await _fold(pool, live, shards, item)
        elif item[0] == "redis_lost":
            await redis_client.flushdb()
        else:
            await _apply(pool, live, history, item, n)

    run = await Folder(pool, shard_count=shards, live=live).drain()
    assert run.caught_up

    async with pool.acquire() as conn:
        rows = {r["tenant_id"]: r for r in await conn.fetch("SELECT * FROM balances")}
        ledger = await conn.fetch(
            "SELECT tenant_id, sum(amount_nano)::bigint AS total, count(*) AS lines"
            " FROM ledger_entries GROUP BY tenant_id"
        )
        last_lines = {
            r["tenant_id"]: r["balance_after_nano"]
            for r in await conn.fetch(
                "SELECT DISTINCT ON (tenant_id) tenant_id, balance_after_nano FROM ledger_entries"
                " ORDER BY tenant_id, position DESC"
            )
        }
        requests = {
            r["tenant_id"]: (r["requests"], r["charge"])
            for r in await conn.fetch(
                "SELECT tenant_id, sum(requests)::bigint AS requests,"
                " sum(charge_nano)::bigint AS charge FROM usage_rollups GROUP BY tenant_id"
            )
        }
    sums = {r["tenant_id"]: r["total"] for r in ledger}
    for tenant in tenants:
        row = rows[tenant]
        events = history.events[tenant]
        granted = sum(e.amount_nano for e in events if isinstance(e, CreditsGranted))
        purchased = sum(e.amount_nano for e in events if isinstance(e, CreditsPurchased))
        refunded = sum(e.amount_nano for e in events if isinstance(e, CreditsRefunded))
        adjusted = sum(e.amount_nano for e in events if isinstance(e, BalanceAdjusted))
        # Conservation, with charges recomputed independently of the fold.
        assert row["charged_nano"] == history.expected_charge[tenant]
        assert row["balance_nano"] == (
            granted
            + purchased
            + adjusted
            - refunded
            - row["expired_nano"]
            - history.expected_charge[tenant]
            - row["frozen_nano"]
            - row["dispute_lost_nano"]
        )
        # The fold through batches, crashes and re-runs equals the events applied in memory.
        reference = _in_memory(
            [
                msgspec.structs.replace(e, charge_nano=e.charge_nano - 3)
                if isinstance(e, UsageRecorded) and e.request_id in history.wrong
                else e
                for e in events
            ]
        )
        assert row["balance_nano"] == reference.balance_nano
        assert row["expired_nano"] == reference.totals.expired
        assert row["frozen_nano"] == reference.totals.frozen
        assert row["dispute_lost_nano"] == reference.totals.dispute_lost
        # Every event applied exactly once (TenantCreated included).
        assert row["folded_events"] == len(events) + 1
        # The ledger adds up to the balance and ends on it.
        assert sums.get(tenant, 0) == row["balance_nano"]
        if tenant in last_lines:
            assert last_lines[tenant] == row["balance_nano"]
        assert requests.get(tenant, (0, 0)) == (
            history.usage_count[tenant],
            history.expected_charge[tenant],
        )

    report = await replay_verify(get_settings().database_url)
    assert report.ok, msgspec.json.encode(report).decode()

    # Redis ends exactly where Postgres is, even after crashes between commit and Redis and a
    # lost Redis: reconcile repairs, and a second pass past the grace drops stale charges.
    reconciler = Reconciler(
        pool, redis_client, msgspec.structs.replace(get_settings(), fold_shards=shards)
    )
    now = datetime.now(UTC).timestamp()
    await reconciler.run(now=now, settle_seconds=0)
    await reconciler.run(now=now + get_settings().live_balance_stale_seconds + 1, settle_seconds=0)
    for tenant in tenants:
        snap = await live.snapshot(tenant)
        assert snap is not None
        assert (snap.balance_nano, snap.seq, snap.unfolded_nano) == (
            rows[tenant]["balance_nano"],
            rows[tenant]["folded_events"],
            0,
        )
