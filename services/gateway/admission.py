"""Admission in Redis: rate limits, spend caps and the credit hold in one atomic script.

One round trip admits a request (`ADMIT`) and one settles it (`SETTLE`); concurrent requests'
scripts share pipelines (`ScriptBatcher`), so under load a request costs a fraction of a round
trip. Every key of a tenant carries the `{tenant}` hash tag: one Redis Cluster slot per tenant.

The credit hold works on `tally.live_balance`'s keys with exactly its semantics (hold, settle,
reap); it is written out here only so that it runs inside the same script as the rate limits.
`LiveBalances` stays the owner of loading, folding and snapshots.

Rate limits are sliding windows of one minute (the previous window's count, weighted by how much
of it still overlaps, plus the current one), per key and per tenant, for requests and tokens.
A request's tokens are counted at admission from its estimate and corrected at settle.

Spend caps (a metered tenant's monthly budget, a key's lifetime cap) hold the worst case like
credits do: `spent + held + worst case <= cap`. The counters are rebuilt from the log when Redis
lost them; each request's hold is remembered with an expiry so a crash never leaks it for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import redis.asyncio as redis
from redis.exceptions import NoScriptError

from gateway.resp import RedisAddress, RedisPipe, pack_command

WINDOW_MS = 60_000
SPEND_COUNTER_TTL_S = 40 * 86_400

_ADMIT = """
local now_ms = tonumber(ARGV[5])
local now_s = math.floor(now_ms / 1000)
local prepaid = ARGV[3] == '1'
local hold = tonumber(ARGV[2])
local cost = tonumber(ARGV[10])
local tenant_cap = tonumber(ARGV[11])
local key_cap = tonumber(ARGV[12])
local cap_amount = tonumber(ARGV[13])
local window = 60000
local cur_start = now_ms - (now_ms % window)
local frac = (now_ms - cur_start) / window
local reset_ms = window - (now_ms - cur_start)

-- Holds of requests that never settled (a crashed gateway) are reaped a few at a time.
if prepaid then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_s, 'LIMIT', 0, 16)
  for _, id in ipairs(expired) do
    local held = redis.call('HGET', KEYS[2], id)
    if held then
      redis.call('HDEL', KEYS[2], id)
      redis.call('HINCRBY', KEYS[1], 'holds', '-' .. held)
    end
    redis.call('ZREM', KEYS[3], id)
  end
end
if tenant_cap >= 0 or key_cap >= 0 then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', now_s, 'LIMIT', 0, 16)
  for _, id in ipairs(expired) do
    local v = redis.call('HGET', KEYS[10], id)
    if v then
      redis.call('HDEL', KEYS[10], id)
      local amount, tkey, kkey = string.match(v, '^(%d+)|([^|]*)|([^|]*)$')
      for _, counter in ipairs({tkey, kkey}) do
        if counter ~= '' and redis.call('HEXISTS', counter, 'spent') == 1 then
          redis.call('HINCRBY', counter, 'held', '-' .. amount)
        end
      end
    end
    redis.call('ZREM', KEYS[11], id)
  end
end

-- Rate limits: {scope, limit, current key, previous key, field, cost}
local limits = {
  {'key', 'requests', tonumber(ARGV[6]), KEYS[4], KEYS[5], 'r', 1},
  {'key', 'tokens', tonumber(ARGV[7]), KEYS[4], KEYS[5], 't', cost},
  {'tenant', 'requests', tonumber(ARGV[8]), KEYS[6], KEYS[7], 'r', 1},
  {'tenant', 'tokens', tonumber(ARGV[9]), KEYS[6], KEYS[7], 't', cost},
}
local rem = {requests = -1, tokens = -1}
local lim = {requests = -1, tokens = -1}
for _, l in ipairs(limits) do
  local limit = l[3]
  if limit > 0 then
    local c = tonumber(redis.call('HGET', l[4], l[6]) or '0')
    local p = tonumber(redis.call('HGET', l[5], l[6]) or '0')
    local used = p * (1 - frac) + c
    if used + l[7] > limit then
      local excess = used + l[7] - limit
      local wait_ms = reset_ms
      if p > 0 and excess <= p * (1 - frac) then wait_ms = math.ceil(excess * window / p) end
      return {'rate_limited', l[1], l[2], tostring(wait_ms), tostring(limit)}
    end
    local left = math.floor(limit - used - l[7])
    if rem[l[2]] < 0 or left < rem[l[2]] then
      rem[l[2]] = left
      lim[l[2]] = limit
    end
  end
end

-- Spend caps.
local function spend_left(counter, cap)
  local spent = tonumber(redis.call('HGET', counter, 'spent'))
  local held = tonumber(redis.call('HGET', counter, 'held') or '0')
  return cap - spent - held
end
if tenant_cap >= 0 then
  if redis.call('HEXISTS', KEYS[8], 'spent') == 0 then return {'spend_missing', 'tenant'} end
  local left = spend_left(KEYS[8], tenant_cap)
  if left < cap_amount then return {'cap', 'tenant', string.format('%.0f', left)} end
end
if key_cap >= 0 then
  if redis.call('HEXISTS', KEYS[9], 'spent') == 0 then return {'spend_missing', 'key'} end
  local left = spend_left(KEYS[9], key_cap)
  if left < cap_amount then return {'cap', 'key', string.format('%.0f', left)} end
end

-- The credit hold (tally.live_balance semantics; idempotent per request id).
local available = 0
if prepaid then
  if redis.call('HEXISTS', KEYS[1], 'balance') == 0 then return {'missing'} end
  local b = tonumber(redis.call('HGET', KEYS[1], 'balance'))
  local h = tonumber(redis.call('HGET', KEYS[1], 'holds') or '0')
  local u = tonumber(redis.call('HGET', KEYS[1], 'unfolded') or '0')
  available = b - h - u
  if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
    if available <= 0 or available < hold then
      return {'insufficient', string.format('%.0f', available)}
    end
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
    redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
    redis.call('HINCRBY', KEYS[1], 'holds', ARGV[2])
    available = available - hold
  end
end

-- Admitted: count it.
if tonumber(ARGV[6]) > 0 or tonumber(ARGV[7]) > 0 then
  redis.call('HINCRBY', KEYS[4], 'r', 1)
  redis.call('HINCRBY', KEYS[4], 't', cost)
  redis.call('PEXPIRE', KEYS[4], window * 2)
end
if tonumber(ARGV[8]) > 0 or tonumber(ARGV[9]) > 0 then
  redis.call('HINCRBY', KEYS[6], 'r', 1)
  redis.call('HINCRBY', KEYS[6], 't', cost)
  redis.call('PEXPIRE', KEYS[6], window * 2)
end
if tenant_cap >= 0 or key_cap >= 0 then
  local tkey, kkey = '', ''
  if tenant_cap >= 0 then tkey = KEYS[8]; redis.call('HINCRBY', KEYS[8], 'held', ARGV[13]) end
  if key_cap >= 0 then kkey = KEYS[9]; redis.call('HINCRBY', KEYS[9], 'held', ARGV[13]) end
  redis.call('HSET', KEYS[10], ARGV[1], ARGV[13] .. '|' .. tkey .. '|' .. kkey)
  redis.call('ZADD', KEYS[11], ARGV[4], ARGV[1])
end
return {'ok', string.format('%.0f', available), tostring(rem.requests), tostring(lim.requests),
        tostring(rem.tokens), tostring(lim.tokens), tostring(reset_ms)}
"""

_SETTLE = """
if ARGV[4] == '1' then
  -- tally.live_balance settle: release the hold, count the charge as settled, once.
  local held = redis.call('HGET', KEYS[2], ARGV[1])
  if held then
    redis.call('HDEL', KEYS[2], ARGV[1])
    redis.call('ZREM', KEYS[3], ARGV[1])
    redis.call('HINCRBY', KEYS[1], 'holds', '-' .. held)
  end
  if redis.call('HEXISTS', KEYS[1], 'balance') == 1 and ARGV[2] ~= '0'
     and redis.call('HSETNX', KEYS[4], ARGV[1], ARGV[2]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'unfolded', ARGV[2])
  end
end
local spend = redis.call('HGET', KEYS[7], ARGV[1])
if spend then
  redis.call('HDEL', KEYS[7], ARGV[1])
  redis.call('ZREM', KEYS[8], ARGV[1])
  local amount, tkey, kkey = string.match(spend, '^(%d+)|([^|]*)|([^|]*)$')
  for _, counter in ipairs({tkey, kkey}) do
    if counter ~= '' and redis.call('HEXISTS', counter, 'spent') == 1 then
      redis.call('HINCRBY', counter, 'held', '-' .. amount)
      redis.call('HINCRBY', counter, 'spent', ARGV[2])
    end
  end
end
if ARGV[3] ~= '0' then
  for i = 5, 6 do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HINCRBY', KEYS[i], 't', ARGV[3]) end
  end
end
return 1
"""

# The usage event of a settled request could not be made durable: take its charge back out of
# the live balance, so Redis never counts a charge the log does not have.
_UNSETTLE = """
local charged = redis.call('HGET', KEYS[2], ARGV[1])
if charged then
  redis.call('HDEL', KEYS[2], ARGV[1])
  if redis.call('HEXISTS', KEYS[1], 'balance') == 1 then
    redis.call('HINCRBY', KEYS[1], 'unfolded', '-' .. charged)
  end
end
return 1
"""

_LOAD_SPEND = """
if redis.call('HEXISTS', KEYS[1], 'spent') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'held', '0')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def tenant_keys(tenant_id: UUID) -> tuple[str, str, str, str]:
    """tally.live_balance's keys: balance hash, holds, hold expiries, unfolded charges."""
    base = f"tally:{{{tenant_id}}}"
    return f"{base}:bal", f"{base}:holds", f"{base}:hold_exp", f"{base}:unfolded"


def month_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class AdmitKeys:
    """A request's Redis keys for `ADMIT` and `SETTLE`, packed for the wire once per key and
    minute (see `admit_keys`)."""

    __slots__ = (
        "admit",
        "key_spend",
        "key_window",
        "keys",
        "settle",
        "tenant_spend",
        "tenant_window",
    )

    def __init__(
        self,
        keys: list[str],
        key_window: str,
        tenant_window: str,
        tenant_spend: str,
        key_spend: str,
    ) -> None:
        self.keys = keys
        self.key_window = key_window
        self.tenant_window = tenant_window
        self.tenant_spend = tenant_spend
        self.key_spend = key_spend
        bal, holds, hold_exp = keys[0], keys[1], keys[2]
        base = bal.removesuffix(":bal")
        self.admit = PackedKeys(keys)
        self.settle = PackedKeys(
            [
                bal,
                holds,
                hold_exp,
                f"{base}:unfolded",
                key_window,
                tenant_window,
                f"{base}:sholds",
                f"{base}:shold_exp",
            ]
        )


_admit_keys_cache: dict[tuple[UUID, UUID, int, int], AdmitKeys] = {}


def admit_keys(tenant_id: UUID, key_id: UUID, now_ms: int, at: datetime) -> AdmitKeys:
    """The keys of a request of `key_id` at `now_ms` (`at`): the same object for every request
    of that key in that minute, so building and packing them is paid once a minute."""
    window = now_ms // WINDOW_MS
    month = at.year * 100 + at.month if at.tzinfo is UTC else 0
    cache_key = (tenant_id, key_id, window, month)
    cached = _admit_keys_cache.get(cache_key)
    if cached is not None and month:
        return cached
    keys = _build_admit_keys(tenant_id, key_id, window, at)
    if month:
        if len(_admit_keys_cache) >= 4096:
            _admit_keys_cache.clear()  # old windows are never asked for again
        _admit_keys_cache[cache_key] = keys
    return keys


def _build_admit_keys(tenant_id: UUID, key_id: UUID, window: int, at: datetime) -> AdmitKeys:
    base = f"tally:{{{tenant_id}}}"
    bal, holds, hold_exp, _ = tenant_keys(tenant_id)
    key_cur, key_prev = f"{base}:rl:k:{key_id}:{window}", f"{base}:rl:k:{key_id}:{window - 1}"
    ten_cur, ten_prev = f"{base}:rl:t:{window}", f"{base}:rl:t:{window - 1}"
    tenant_spend = f"{base}:spend:{at.astimezone(UTC):%Y%m}"
    key_spend = f"{base}:kspend:{key_id}"
    return AdmitKeys(
        [
            bal,
            holds,
            hold_exp,
            key_cur,
            key_prev,
            ten_cur,
            ten_prev,
            tenant_spend,
            key_spend,
            f"{base}:sholds",
            f"{base}:shold_exp",
        ],
        key_cur,
        ten_cur,
        tenant_spend,
        key_spend,
    )


class Script:
    """A Lua script called by its SHA, loaded again if Redis forgot it (restart, flush)."""

    def __init__(self, source: str) -> None:
        import hashlib

        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id
        self._sha = self.sha.encode()

    def command(self, keys: PackedKeys, args: Sequence[str | int]) -> bytes:
        """`EVALSHA sha numkeys keys... args...` in the Redis protocol (RESP)."""
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n" % (3 + keys.count + len(args), self._sha)
        return head + keys.packed + pack_args(args)


class PackedKeys:
    """A script's `numkeys keys...`, packed once: a request's keys repeat for many requests."""

    __slots__ = ("count", "keys", "packed")

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)
        self.count = len(self.keys)
        self.packed = pack_args([self.count, *self.keys])


def pack_args(values: Sequence[str | int]) -> bytes:
    """Bulk strings of the Redis protocol; ints and strs only (bools are refused)."""
    parts = []
    for value in values:
        if isinstance(value, str):
            data = value.encode()
        elif type(value) is int:
            data = b"%d" % value
        else:
            raise TypeError(f"cannot send {type(value).__name__} to a script")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class ScriptCall:
    """A script call on its way: its command went out (or goes out at the end of this loop
    iteration); `ScriptBatcher.result` waits for the reply."""

    __slots__ = ("command", "future", "script")

    def __init__(self, script: Script, command: bytes, future: asyncio.Future[Any]) -> None:
        self.script = script
        self.command = command
        self.future = future


class ScriptBatcher:
    """Script calls of concurrent requests, pipelined on one Redis connection (`RedisPipe`).

    Calls issued while others are in flight go out together in one write at the end of the
    loop iteration, so a lone request pays one plain round trip and a busy process a fraction
    of one. `start` issues a call without waiting for it (the settle runs beside the usage
    append without a task of its own); `result` waits for its reply.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pipe = RedisPipe(RedisAddress(client))

    def start(
        self,
        script: Script,
        keys: Sequence[str] | PackedKeys,
        args: Sequence[str | int],
        *,
        cork: bool = False,
    ) -> ScriptCall:
        packed_keys = keys if isinstance(keys, PackedKeys) else PackedKeys(keys)
        command = script.command(packed_keys, args)
        return ScriptCall(script, command, self._pipe.request(command, cork=cork))

    async def result(self, call: ScriptCall) -> Any:
        """The reply of a started call; a script Redis forgot is loaded and run again."""
        try:
            return await call.future
        except NoScriptError:
            await self._pipe.request(pack_command(b"SCRIPT", b"LOAD", call.script.source))
            return await self._pipe.request(call.command)

    async def call(
        self, script: Script, keys: Sequence[str] | PackedKeys, args: Sequence[str | int]
    ) -> Any:
        return await self.result(self.start(script, keys, args))

    async def close(self) -> None:
        await self._pipe.close()


ADMIT = Script(_ADMIT)
SETTLE = Script(_SETTLE)
UNSETTLE = Script(_UNSETTLE)
LOAD_SPEND = Script(_LOAD_SPEND)


class Admitted(msgspec.Struct, frozen=True):
    """An admitted request: what it holds, and the rate-limit state for the headers."""

    available_nano: int
    remaining_requests: int
    limit_requests: int
    remaining_tokens: int
    limit_tokens: int
    reset_ms: int


class Refused(msgspec.Struct, frozen=True):
    status: str  # rate_limited | insufficient | missing | spend_missing | cap
    scope: str = ""
    what: str = ""
    amount: int = 0  # wait ms (rate_limited) or what is left (insufficient, cap)
    limit: int = 0


def parse_admit(reply: list[bytes]) -> Admitted | Refused:
    status = reply[0].decode()
    if status == "ok":
        values = [int(v) for v in reply[1:]]
        return Admitted(*values)
    if status == "rate_limited":
        return Refused(status, reply[1].decode(), reply[2].decode(), int(reply[3]), int(reply[4]))
    if status == "insufficient":
        return Refused(status, amount=int(reply[1]))
    if status == "cap":
        return Refused(status, reply[1].decode(), amount=int(reply[2]))
    if status == "spend_missing":
        return Refused(status, reply[1].decode())
    return Refused(status)
