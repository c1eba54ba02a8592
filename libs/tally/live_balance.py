"""Live balances in Redis: what the gateway checks and holds against on every request.

    available = folded balance - open holds - charges settled but not yet folded

Per tenant T (the `{T}` hash tag keeps one tenant's keys in one Redis Cluster slot):
    tally:{T}:bal       hash   balance, seq (fold sequence), holds (sum), unfolded (sum)
    tally:{T}:holds     hash   request id -> held nano-credits
    tally:{T}:hold_exp  zset   request id -> expiry (unix seconds), for reaping lost holds
    tally:{T}:unfolded  hash   request id -> charged nano-credits not yet folded

Every change is one Lua script, so it is atomic and a retry of the same request id is a no-op.
Order on the gateway's path: hold, call upstream, then settle and append the usage event
together (see `gateway.metering.Meter.record` for why a fold cannot overtake the settle, and
what happens if a stalled Redis lets it).
Lua numbers are doubles: sums are kept exact by HINCRBY on the integer strings; comparisons are
exact below 2**53 nano-credits (9 million credits) and within a nano beyond.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal
from uuid import UUID

import msgspec
import redis.asyncio as redis

from tally.db import Connection

_HOLD = """
if redis.call('HEXISTS', KEYS[1], 'balance') == 0 then return {'missing', '0'} end
local function available()
  local b = tonumber(redis.call('HGET', KEYS[1], 'balance'))
  local h = tonumber(redis.call('HGET', KEYS[1], 'holds') or '0')
  local u = tonumber(redis.call('HGET', KEYS[1], 'unfolded') or '0')
  return b - h - u
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {'ok', string.format('%.0f', available())}
end
local avail = available()
local amount = tonumber(ARGV[2])
if avail <= 0 or avail < amount then return {'insufficient', string.format('%.0f', avail)} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'holds', ARGV[2])
return {'ok', string.format('%.0f', avail - amount)}
"""

_SETTLE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'holds', '-' .. held)
end
if redis.call('HEXISTS', KEYS[1], 'balance') == 0 then return 0 end
if ARGV[2] ~= '0' and redis.call('HSETNX', KEYS[4], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'unfolded', ARGV[2])
end
return 1
"""

_APPLY_FOLD = """
if redis.call('HEXISTS', KEYS[1], 'balance') == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1') >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'balance', ARGV[2], 'seq', ARGV[1])
for i = 3, #ARGV do
  local charged = redis.call('HGET', KEYS[2], ARGV[i])
  if charged then
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('HINCRBY', KEYS[1], 'unfolded', '-' .. charged)
  end
end
return 1
"""

# apply_fold with the request ids in one argument, separated by newlines (a request id is
# printable, so never contains one): packing thousands of arguments costs the client far more
# than splitting one string costs Redis.
_APPLY_FOLD_PACKED = """
if redis.call('HEXISTS', KEYS[1], 'balance') == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1') >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'balance', ARGV[2], 'seq', ARGV[1])
for id in string.gmatch(ARGV[3], '[^\\n]+') do
  local charged = redis.call('HGET', KEYS[2], id)
  if charged then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HINCRBY', KEYS[1], 'unfolded', '-' .. charged)
  end
end
return 1
"""

_LOAD = """
if redis.call('HEXISTS', KEYS[1], 'balance') == 1 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
local function total(key)
  local sum = 0
  local values = redis.call('HVALS', key)
  for _, v in ipairs(values) do sum = sum + tonumber(v) end
  return string.format('%.0f', sum)
end
redis.call('HSET', KEYS[1], 'balance', ARGV[2], 'seq', ARGV[1],
           'unfolded', total(KEYS[2]), 'holds', total(KEYS[3]))
return 1
"""

# Reconcile's repair: install the Postgres view (balance, seq, the unfolded tail) atomically,
# unless a fold applied a newer seq meanwhile. Unfolded entries not named (settled charges whose
# usage event is not in the log yet) are kept; `stale` ones (folded, or never appended) go.
# ARGV: expected-max seq, new seq, balance, n_stale, stale ids..., then id/charge pairs.
_REBUILD = """
local current = redis.call('HGET', KEYS[1], 'seq')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
local n_stale = tonumber(ARGV[4])
for i = 5, 4 + n_stale do redis.call('HDEL', KEYS[2], ARGV[i]) end
for i = 5 + n_stale, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
local function total(key)
  local sum = 0
  for _, v in ipairs(redis.call('HVALS', key)) do sum = sum + tonumber(v) end
  return string.format('%.0f', sum)
end
redis.call('HSET', KEYS[1], 'balance', ARGV[3], 'seq', ARGV[2],
           'unfolded', total(KEYS[2]), 'holds', total(KEYS[3]))
return 1
"""

_REAP = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
for _, id in ipairs(expired) do
  local held = redis.call('HGET', KEYS[2], id)
  if held then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HINCRBY', KEYS[1], 'holds', '-' .. held)
  end
  redis.call('ZREM', KEYS[3], id)
end
return #expired
"""


def _keys(tenant_id: UUID) -> tuple[str, str, str, str]:
    base = f"tally:{{{tenant_id}}}"
    return f"{base}:bal", f"{base}:holds", f"{base}:hold_exp", f"{base}:unfolded"


class HoldResult(msgspec.Struct, frozen=True):
    status: Literal["ok", "insufficient", "missing"]
    # Available credits after the hold ("ok") or before it ("insufficient").
    available_nano: int


class Snapshot(msgspec.Struct, frozen=True):
    balance_nano: int
    holds_nano: int
    unfolded_nano: int
    seq: int

    @property
    def available_nano(self) -> int:
        return self.balance_nano - self.holds_nano - self.unfolded_nano


class FoldApplied(msgspec.Struct, frozen=True):
    """What one committed fold batch did to one tenant (the arguments of `apply_fold`)."""

    tenant_id: UUID
    seq: int
    balance_nano: int
    folded_request_ids: list[str]


class LiveBalances:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._hold = client.register_script(_HOLD)
        self._settle = client.register_script(_SETTLE)
        self._apply_fold = client.register_script(_APPLY_FOLD)
        self._apply_fold_packed = client.register_script(_APPLY_FOLD_PACKED)
        self._load = client.register_script(_LOAD)
        self._reap = client.register_script(_REAP)
        self._rebuild = client.register_script(_REBUILD)

    async def hold(
        self, tenant_id: UUID, request_id: str, amount_nano: int, *, expires_at: int
    ) -> HoldResult:
        """Reserve `amount_nano` for a request if available; idempotent per request id.

        `missing` means Redis has no live balance for the tenant: load it, then hold again.
        """
        bal, holds, hold_exp, _ = _keys(tenant_id)
        status, available = await self._hold(
            keys=[bal, holds, hold_exp], args=[request_id, amount_nano, expires_at]
        )
        return HoldResult(status.decode(), int(available))

    async def settle(self, tenant_id: UUID, request_id: str, charge_nano: int) -> None:
        """Release the request's hold and count its charge as settled but not yet folded."""
        await self._settle(keys=list(_keys(tenant_id)), args=[request_id, charge_nano])

    async def release(self, tenant_id: UUID, request_id: str) -> None:
        """Drop the request's hold without charging (the request failed before any output)."""
        await self.settle(tenant_id, request_id, 0)

    async def apply_fold(
        self, tenant_id: UUID, *, seq: int, balance_nano: int, folded_request_ids: list[str]
    ) -> bool:
        """After a fold committed: the new folded balance, and the charges it absorbed.

        `seq` only grows (the tenant's count of folded events); an older fold arriving late is
        ignored, so a slow worker cannot roll a balance back.
        """
        bal, _, _, unfolded = _keys(tenant_id)
        applied = await self._apply_fold(
            keys=[bal, unfolded], args=[seq, balance_nano, *folded_request_ids]
        )
        return bool(applied)

    async def apply_folds(self, folds: Sequence[FoldApplied]) -> int:
        """`apply_fold` for many tenants in one pipelined round trip; returns how many applied."""
        if not folds:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for fold in folds:
                bal, _, _, unfolded = _keys(fold.tenant_id)
                await self._apply_fold_packed(
                    keys=[bal, unfolded],
                    args=[fold.seq, fold.balance_nano, "\n".join(fold.folded_request_ids)],
                    client=pipe,
                )
            results = await pipe.execute()
        return sum(1 for r in results if r)

    async def unfolded_charges(self, tenant_id: UUID) -> dict[str, int]:
        """The settled charges Redis counts as not yet folded, by request id."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(_keys(tenant_id)[3])  # type: ignore[misc]
        return {k.decode(): int(v) for k, v in raw.items()}

    async def rebuild(
        self,
        tenant_id: UUID,
        *,
        seq: int,
        balance_nano: int,
        unfolded: dict[str, int],
        stale: Sequence[str] = (),
    ) -> bool:
        """Overwrite the live balance with Postgres's (reconcile's repair), atomically.

        Refused (False) when a fold already applied a newer seq: the caller's view is stale.
        Holds are kept; unfolded charges not in `unfolded` are kept unless listed in `stale`.
        """
        bal, holds, _, unfolded_key = _keys(tenant_id)
        pairs = [item for pair in unfolded.items() for item in pair]
        done = await self._rebuild(
            keys=[bal, unfolded_key, holds],
            args=[seq, seq, balance_nano, len(stale), *stale, *pairs],
        )
        return bool(done)

    async def load(
        self, tenant_id: UUID, *, seq: int, balance_nano: int, unfolded: dict[str, int]
    ) -> bool:
        """Install a balance rebuilt from Postgres, unless another process already did."""
        bal, holds, _, unfolded_key = _keys(tenant_id)
        pairs = [item for pair in unfolded.items() for item in pair]
        loaded = await self._load(keys=[bal, unfolded_key, holds], args=[seq, balance_nano, *pairs])
        return bool(loaded)

    async def reap_expired_holds(self, tenant_id: UUID, now: int) -> int:
        """Drop holds whose request never settled (a crashed gateway); returns how many."""
        bal, holds, hold_exp, _ = _keys(tenant_id)
        reaped: int = await self._reap(keys=[bal, holds, hold_exp], args=[now])
        return reaped

    async def snapshot(self, tenant_id: UUID) -> Snapshot | None:
        values: list[bytes | None] = await self._redis.hmget(  # type: ignore[misc]
            _keys(tenant_id)[0], ["balance", "holds", "unfolded", "seq"]
        )
        if values[0] is None:
            return None
        balance, holds, unfolded, seq = (int(v or 0) for v in values)
        return Snapshot(balance, holds, unfolded, seq)

    async def forget(self, tenant_id: UUID) -> None:
        """Drop the tenant's live balance (not its holds); the next request reloads it."""
        await self._redis.delete(_keys(tenant_id)[0], _keys(tenant_id)[3])


# --- Rebuilding from Postgres ------------------------------------------------------------------
# The billing fold keeps `balances` (balance and fold sequence per tenant) and its shard
# checkpoints in one transaction; reading both, and the usage events after the checkpoint, in
# one REPEATABLE READ snapshot gives exactly the live balance's parts.

FOLD_CONSUMER = "billing.fold"


def fold_consumer_name(index: int, count: int) -> str:
    return f"{FOLD_CONSUMER}:{index}/{count}"


_SHARD_OF = "SELECT mod(hashtextextended($1::text, 0) & 9223372036854775807, $2)::int"
_BALANCE = "SELECT balance_nano, folded_events FROM balances WHERE tenant_id = $1"
_UNFOLDED_USAGE = """
SELECT data->>'request_id' AS request_id, (data->>'charge_nano')::bigint AS charge_nano
FROM events
WHERE tenant_id = $1 AND type = 'UsageRecorded'
  AND (txid, position) > (
      SELECT c.txid, c.position FROM (
          SELECT txid, position FROM consumer_checkpoints WHERE consumer = $2
          UNION ALL SELECT '0'::xid8, 0::bigint
      ) c ORDER BY c.txid DESC, c.position DESC LIMIT 1)
"""


async def live_balance_from_postgres(
    conn: Connection, tenant_id: UUID, *, fold_shards: int
) -> tuple[int, int, dict[str, int]]:
    """(fold seq, folded balance, unfolded charges by request id), one consistent snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        shard = await conn.fetchval(_SHARD_OF, str(tenant_id), fold_shards)
        row = await conn.fetchrow(_BALANCE, tenant_id)
        rows = await conn.fetch(_UNFOLDED_USAGE, tenant_id, fold_consumer_name(shard, fold_shards))
    seq, balance = (row["folded_events"], row["balance_nano"]) if row else (0, 0)
    return seq, balance, {r["request_id"]: r["charge_nano"] for r in rows if r["charge_nano"]}


_BALANCES = (
    "SELECT tenant_id, balance_nano, folded_events FROM balances WHERE tenant_id = ANY($1::uuid[])"
)
# The same tail as _UNFOLDED_USAGE, for many tenants at once: each tenant against the checkpoint
# of its own shard.
_UNFOLDED_USAGE_MANY = """
WITH t AS (
    SELECT tenant_id,
           $2::text || ':' || mod(hashtextextended(tenant_id::text, 0) & 9223372036854775807,
                                  $3::int) || '/' || $3::int AS consumer
    FROM unnest($1::uuid[]) AS tenant_id),
cp AS (
    SELECT t.tenant_id, coalesce(c.txid, '0'::xid8) AS txid, coalesce(c.position, 0) AS position
    FROM t LEFT JOIN consumer_checkpoints c ON c.consumer = t.consumer)
SELECT e.tenant_id, e.data->>'request_id' AS request_id,
       (e.data->>'charge_nano')::bigint AS charge_nano
FROM cp JOIN events e
  ON e.tenant_id = cp.tenant_id AND e.type = 'UsageRecorded'
 AND (e.txid, e.position) > (cp.txid, cp.position)
"""


async def live_balances_from_postgres(
    conn: Connection, tenant_ids: Sequence[UUID], *, fold_shards: int
) -> dict[UUID, tuple[int, int, dict[str, int]]]:
    """`live_balance_from_postgres` for many tenants, in one consistent snapshot."""
    result: dict[UUID, tuple[int, int, dict[str, int]]] = {t: (0, 0, {}) for t in tenant_ids}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for row in await conn.fetch(_BALANCES, list(tenant_ids)):
            result[row["tenant_id"]] = (row["folded_events"], row["balance_nano"], {})
        rows = await conn.fetch(_UNFOLDED_USAGE_MANY, list(tenant_ids), FOLD_CONSUMER, fold_shards)
    for row in rows:
        if row["charge_nano"]:
            result[row["tenant_id"]][2][row["request_id"]] = row["charge_nano"]
    return result
