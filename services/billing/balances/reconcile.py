"""Keeping Redis's live balances honest: periodic reconcile, and reaping lost holds.

Reconcile compares each tenant's live balance with Postgres (folded balance, fold sequence and
the unfolded usage tail, read in one snapshot). A difference is drift: it is logged, counted,
recorded in `live_balance_drift` and repaired by rebuilding the entry atomically from Postgres.
A tenant Redis has lost is rebuilt the same way, so the gateway never starts from nothing.

Unfolded charges Redis holds but the tail lacks are usually in flight (the gateway settles
before it appends); one still there after `live_balance_stale_seconds` was folded without Redis
hearing of it (a worker died between its commit and telling Redis) or never appended: dropped.
"""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

import asyncpg
import msgspec
import prometheus_client
import redis.asyncio as redis

from tally.config import Settings
from tally.db import Connection
from tally.live_balance import LiveBalances, live_balances_from_postgres
from tally.log import get_logger

log = get_logger(__name__)

DRIFT = prometheus_client.Counter(
    "tally_live_balance_drift_total", "Live balances found to differ from Postgres", ["kind"]
)
HOLDS_REAPED = prometheus_client.Counter(
    "tally_live_balance_holds_reaped_total", "Expired credit holds dropped by the reaper"
)

_TENANT_PAGE = """
SELECT tenant_id FROM balances WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2
"""
_RECORD_DRIFT = """
INSERT INTO live_balance_drift (tenant_id, kind, redis_seq, pg_seq, redis_balance_nano,
                                pg_balance_nano, detail, repaired)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8)
"""
# Per tenant (same hash slot as its live balance): request id -> when reconcile first saw its
# unfolded charge without a usage event in the tail.
_SUSPECTS_TTL_SECONDS = 86_400
_ZERO_UUID = UUID(int=0)


class ReconcileReport(msgspec.Struct, kw_only=True):
    tenants: int = 0
    rebuilt_missing: int = 0
    drifted: int = 0
    repaired: int = 0
    stale_dropped: int = 0


class Reconciler:
    def __init__(self, pool: asyncpg.Pool, client: redis.Redis, settings: Settings) -> None:
        self._pool = pool
        self._redis = client
        self._live = LiveBalances(client)
        self._settings = settings

    async def run(
        self, *, page_size: int = 500, now: float | None = None, settle_seconds: float = 1.0
    ) -> ReconcileReport:
        """Reconcile every tenant with a folded balance, page by page."""
        report = ReconcileReport()
        moment = time.time() if now is None else now
        after = _ZERO_UUID
        behind: list[UUID] = []
        while True:
            async with self._pool.acquire() as conn:
                ids = [r["tenant_id"] for r in await conn.fetch(_TENANT_PAGE, after, page_size)]
                if not ids:
                    break
                await self._reconcile(conn, ids, moment, report, behind)
            report.tenants += len(ids)
            after = ids[-1]
        if behind:
            # Redis one fold behind is usually a fold telling it right now: look again shortly,
            # and repair only what is still behind.
            await asyncio.sleep(settle_seconds)
            async with self._pool.acquire() as conn:
                await self._reconcile(conn, behind, moment, report, None)
        if report.drifted or report.rebuilt_missing:
            log.warning("live balance reconcile found drift", **msgspec.structs.asdict(report))
        return report

    async def _reconcile(
        self,
        conn: Connection,
        ids: list[UUID],
        now: float,
        report: ReconcileReport,
        behind: list[UUID] | None,
    ) -> None:
        expected = await live_balances_from_postgres(
            conn, ids, fold_shards=self._settings.fold_shards
        )
        for tenant_id in ids:
            await self._reconcile_one(conn, tenant_id, expected[tenant_id], now, report, behind)

    async def _reconcile_one(
        self,
        conn: Connection,
        tenant_id: UUID,
        expected: tuple[int, int, dict[str, int]],
        now: float,
        report: ReconcileReport,
        behind: list[UUID] | None,
    ) -> None:
        pg_seq, pg_balance, tail = expected
        snapshot = await self._live.snapshot(tenant_id)
        if snapshot is None:
            if await self._live.load(tenant_id, seq=pg_seq, balance_nano=pg_balance, unfolded=tail):
                report.rebuilt_missing += 1
                DRIFT.labels("missing").inc()
                await self._record(
                    conn, tenant_id, "missing", None, pg_seq, None, pg_balance, {}, True
                )
            return
        if snapshot.seq > pg_seq:
            return  # a fold committed after our Postgres read; next run compares again
        unfolded = await self._live.unfolded_charges(tenant_id)
        kinds: list[str] = []
        detail: dict[str, object] = {}
        if snapshot.seq < pg_seq:
            if behind is not None:
                behind.append(tenant_id)
                return
            kinds.append("behind")
        elif snapshot.balance_nano != pg_balance:
            kinds.append("balance")
        wrong = {rid: c for rid, c in tail.items() if unfolded.get(rid) != c}
        if wrong:
            kinds.append("unfolded")
            detail["missing_or_different"] = sorted(wrong)[:20]
        stale = await self._stale(tenant_id, set(unfolded) - set(tail), now)
        if stale:
            kinds.append("stale_unfolded")
            detail["stale"] = stale[:20]
        if not kinds:
            return
        repaired = await self._live.rebuild(
            tenant_id, seq=pg_seq, balance_nano=pg_balance, unfolded=tail, stale=stale
        )
        report.drifted += 1
        report.repaired += int(repaired)
        report.stale_dropped += len(stale) if repaired else 0
        for kind in kinds:
            DRIFT.labels(kind).inc()
        log.warning(
            "live balance drift",
            tenant_id=str(tenant_id),
            kinds=kinds,
            redis_balance_nano=snapshot.balance_nano,
            pg_balance_nano=pg_balance,
            repaired=repaired,
        )
        await self._record(
            conn,
            tenant_id,
            ",".join(kinds),
            snapshot.seq,
            pg_seq,
            snapshot.balance_nano,
            pg_balance,
            detail,
            repaired,
        )

    async def _stale(self, tenant_id: UUID, extras: set[str], now: float) -> list[str]:
        """Extras seen for longer than the grace period; remembers first sightings."""
        key = f"tally:{{{tenant_id}}}:suspects"
        raw: dict[bytes, bytes] = await self._redis.hgetall(key)  # type: ignore[misc]
        known = {k.decode(): float(v) for k, v in raw.items()}
        grace = self._settings.live_balance_stale_seconds
        stale = sorted(rid for rid in extras if rid in known and now - known[rid] >= grace)
        fresh = {rid: now for rid in extras if rid not in known}
        gone = [rid for rid in known if rid not in extras or rid in stale]
        if fresh:
            await self._redis.hset(key, mapping=fresh)  # type: ignore[misc]
            await self._redis.expire(key, _SUSPECTS_TTL_SECONDS)
        if gone:
            await self._redis.hdel(key, *gone)  # type: ignore[misc]
        return stale

    @staticmethod
    async def _record(
        conn: Connection,
        tenant_id: UUID,
        kind: str,
        redis_seq: int | None,
        pg_seq: int,
        redis_balance: int | None,
        pg_balance: int,
        detail: dict[str, object],
        repaired: bool,
    ) -> None:
        await conn.execute(
            _RECORD_DRIFT,
            tenant_id,
            kind,
            redis_seq,
            pg_seq,
            redis_balance,
            pg_balance,
            msgspec.json.encode(detail).decode(),
            repaired,
        )


async def reap_expired_holds(client: redis.Redis, *, now: int | None = None) -> int:
    """Drop holds whose request never settled (a crashed gateway), for every tenant."""
    live = LiveBalances(client)
    moment = int(time.time()) if now is None else now
    reaped = 0
    async for key in client.scan_iter(match="tally:{*}:hold_exp", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        # "tally:{<uuid>}:hold_exp"
        try:
            tenant_id = UUID(name[len("tally:{") : name.index("}")])
        except ValueError:
            continue
        reaped += await live.reap_expired_holds(tenant_id, moment)
    if reaped:
        HOLDS_REAPED.inc(reaped)
        log.info("expired holds reaped", count=reaped)
    return reaped
