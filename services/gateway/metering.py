"""Admission and metering of one request: hold before upstream, charge exactly after.

    begin:  model, price and worst case → ADMIT script (rate limits, caps, credit hold)
    finish: usage → charge (tally.pricing, the fold's own code) → SETTLE script → UsageRecorded
            appended through the process's group commit, durable before the response completes

A request that fails before any output releases its hold and records nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

import asyncpg
import redis.asyncio as redis

from gateway import metrics, repository
from gateway.admission import (
    ADMIT,
    LOAD_SPEND,
    SETTLE,
    SPEND_COUNTER_TTL_S,
    UNSETTLE,
    AdmitKeys,
    Admitted,
    Refused,
    ScriptBatcher,
    ScriptCall,
    admit_keys,
    month_start,
    parse_admit,
    tenant_keys,
)
from gateway.auth import Caller
from gateway.catalog import ModelEntry
from gateway.errors import (
    InsufficientCredits,
    InvalidRequest,
    RateLimited,
    SpendCapReached,
    Unavailable,
)
from gateway.resp import ignore_result
from gateway.upstream import Attempt
from tally.eventlog import GroupCommitAppender
from tally.events.billing import UsageRecorded
from tally.live_balance import LiveBalances, live_balance_from_postgres
from tally.log import get_logger
from tally.money import format_credits
from tally.pricing import Charge, PricingError, TokenUsage, worst_case_usage
from tally.tariff import Tariff

log = get_logger(__name__)

UsageStatus = Literal["ok", "error", "client_disconnected"]


@dataclass(slots=True)
class Call:
    """One admitted request on its way through the gateway."""

    request_id: str
    endpoint: str
    caller: Caller
    model: ModelEntry
    tariff: Tariff
    started: float
    started_at: datetime
    keys: AdmitKeys
    worst_case_nano: int
    tpm_estimate: int
    admitted: Admitted | None = None
    attempt: Attempt = field(default_factory=Attempt)
    finished: bool = False

    @property
    def held(self) -> bool:
        return self.caller.prepaid

    @property
    def capped(self) -> bool:
        return self.caller.key_spend_cap_nano is not None or (
            not self.caller.prepaid and self.caller.tenant_budget_cap_nano is not None
        )

    @property
    def rate_limited(self) -> bool:
        c = self.caller
        return bool(c.key_rpm or c.key_tpm or c.tenant_rpm or c.tenant_tpm)

    def overhead_ms(self) -> float:
        """The gateway's own time so far: elapsed minus the time spent waiting on upstreams."""
        return max(0.0, (time.perf_counter() - self.started - self.attempt.upstream_s) * 1000)

    def rate_limit_headers(self) -> list[tuple[bytes, bytes]]:
        admitted = self.admitted
        if admitted is None:
            return []
        headers: list[tuple[bytes, bytes]] = []
        reset = f"{max(admitted.reset_ms, 0) / 1000:.3f}s".encode()
        if admitted.limit_requests > 0:
            headers += [
                (b"x-ratelimit-limit-requests", str(admitted.limit_requests).encode()),
                (b"x-ratelimit-remaining-requests", str(admitted.remaining_requests).encode()),
                (b"x-ratelimit-reset-requests", reset),
            ]
        if admitted.limit_tokens > 0:
            headers += [
                (b"x-ratelimit-limit-tokens", str(admitted.limit_tokens).encode()),
                (b"x-ratelimit-remaining-tokens", str(admitted.remaining_tokens).encode()),
                (b"x-ratelimit-reset-tokens", reset),
            ]
        return headers


class PostgresHealth:
    """Whether the event log is writable; paid work is refused (503) while it is not."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.ok = True
        self._probe: asyncio.Task[None] | None = None

    def failed(self) -> None:
        self.ok = False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_for_recovery())

    async def _wait_for_recovery(self) -> None:
        while not self.ok:
            await asyncio.sleep(0.5)
            try:
                async with self._pool.acquire(timeout=2) as conn:
                    await conn.fetchval("SELECT 1")
                self.ok = True
                log.info("postgres reachable again")
            except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError):
                continue

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()


def estimate_tokens(chars: int) -> int:
    """A realistic token count for text of `chars` characters (about 4 per token)."""
    return math.ceil(chars / 4)


class Meter:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        redis_client: redis.Redis,
        appender: GroupCommitAppender,
        health: PostgresHealth,
        fold_shards: int,
        hold_ttl_s: int,
    ) -> None:
        self._pool = pool
        self._redis = redis_client
        self.scripts = ScriptBatcher(redis_client)
        self.live = LiveBalances(redis_client)
        self.appender = appender
        self.health = health
        self._fold_shards = fold_shards
        self._hold_ttl = hold_ttl_s
        self._balance_loads: dict[UUID, asyncio.Task[None]] = {}

    async def close(self) -> None:
        await self.scripts.close()

    # --- admission ----------------------------------------------------------------------------

    def worst_case(
        self,
        tariff: Tariff,
        *,
        input_tokens: int,
        max_output_tokens: int,
        images: dict[str, int] | None = None,
    ) -> int:
        """The dearest the request can turn out, in nano-credits: what it must hold."""
        try:
            usage = worst_case_usage(
                tariff.price.price,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                images=images,
            )
            return tariff.charge(usage).charge_nano
        except PricingError as exc:
            raise InvalidRequest(f"This request cannot be priced: {exc}.") from None

    async def admit(self, call: Call) -> None:
        """Rate limits, spend caps and the credit hold, atomically; raise if refused."""
        if not self.health.ok:
            raise Unavailable("Usage cannot be recorded right now; try again shortly.")
        caller = call.caller
        if not (call.held or call.capped or call.rate_limited):
            return
        args: list[str | int] = [
            call.request_id,
            call.worst_case_nano if call.held else 0,
            "1" if call.held else "0",
            int(time.time()) + self._hold_ttl,
            0,  # now_ms, filled per attempt
            caller.key_rpm,
            caller.key_tpm,
            caller.tenant_rpm,
            caller.tenant_tpm,
            call.tpm_estimate,
            -1
            if caller.prepaid or caller.tenant_budget_cap_nano is None
            else caller.tenant_budget_cap_nano,
            -1 if caller.key_spend_cap_nano is None else caller.key_spend_cap_nano,
            call.worst_case_nano,
        ]
        for _ in range(4):
            args[4] = int(time.time() * 1000)
            try:
                reply = await self.scripts.call(ADMIT, call.keys.admit, args)
            except (redis.RedisError, OSError) as exc:
                log.error("redis unavailable at admission", error=str(exc))
                raise Unavailable(
                    "Credit and rate-limit checks are unavailable; try again."
                ) from None
            result = parse_admit(reply)
            if isinstance(result, Admitted):
                call.admitted = result
                if call.held:
                    metrics.OPEN_HOLDS.inc()
                return
            if result.status == "missing":
                await self._load_balance(call)
            elif result.status == "spend_missing":
                await self._load_spend(call, result.scope)
            else:
                self._refuse(call, result)
        raise Unavailable("Live balances could not be loaded; try again.")

    def _refuse(self, call: Call, refused: Refused) -> None:
        if refused.status == "rate_limited":
            wait_s = max(1, math.ceil(refused.amount / 1000))
            kind = "requests" if refused.what == "requests" else "tokens"
            headers = {
                "retry-after": str(wait_s),
                "retry-after-ms": str(max(refused.amount, 0)),
                f"x-ratelimit-limit-{kind}": str(refused.limit),
                f"x-ratelimit-remaining-{kind}": "0",
                f"x-ratelimit-reset-{kind}": f"{wait_s}s",
            }
            per = "this API key" if refused.scope == "key" else "your organization"
            raise RateLimited(
                f"Rate limit reached for {per}: {refused.limit} {kind} per minute. "
                f"Try again in {wait_s}s.",
                headers=headers,
            )
        if refused.status == "insufficient":
            raise InsufficientCredits(
                f"Insufficient credits: this request needs up to "
                f"{format_credits(call.worst_case_nano)} credits "
                f"({call.worst_case_nano} nano-credits) and "
                f"{format_credits(max(refused.amount, 0))} are available "
                f"({max(refused.amount, 0)} nano-credits). Lower max_tokens or add credits."
            )
        if refused.status == "cap":
            which = "this API key's spend cap" if refused.scope == "key" else "the monthly budget"
            raise SpendCapReached(
                f"This request needs up to {call.worst_case_nano} nano-credits and {which} has "
                f"{max(refused.amount, 0)} left."
            )
        raise Unavailable(f"Admission failed ({refused.status}).")

    async def _load_balance(self, call: Call) -> None:
        """Redis lost the tenant's live balance: rebuild it from Postgres.

        Concurrent requests of one tenant share a single rebuild: the unfolded tail can be
        long (the fold behind), and every request loading it at once would multiply that.
        """
        tenant_id = call.caller.tenant_id
        pending = self._balance_loads.get(tenant_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self._rebuild_balance(tenant_id))
            self._balance_loads[tenant_id] = pending
            pending.add_done_callback(lambda _: self._balance_loads.pop(tenant_id, None))
        await asyncio.shield(pending)

    async def _rebuild_balance(self, tenant_id: UUID) -> None:
        try:
            async with self._pool.acquire() as conn:
                seq, balance, unfolded = await live_balance_from_postgres(
                    conn, tenant_id, fold_shards=self._fold_shards
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.health.failed()
            raise Unavailable("Balances cannot be loaded right now; try again.") from exc
        await self.live.load(tenant_id, seq=seq, balance_nano=balance, unfolded=unfolded)
        log.info("live balance rebuilt from postgres", tenant_id=str(tenant_id), seq=seq)

    async def _load_spend(self, call: Call, scope: str) -> None:
        caller = call.caller
        try:
            async with self._pool.acquire() as conn:
                if scope == "tenant":
                    key = call.keys.tenant_spend
                    spent = await repository.tenant_spend_since(
                        conn, caller.tenant_id, month_start(call.started_at)
                    )
                else:
                    key = call.keys.key_spend
                    spent = await repository.key_spend(conn, caller.tenant_id, caller.key_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.health.failed()
            raise Unavailable("Spend counters cannot be loaded right now; try again.") from exc
        await self.scripts.call(LOAD_SPEND, [key], [spent, SPEND_COUNTER_TTL_S])

    # --- metering -------------------------------------------------------------------------------

    async def release(self, call: Call) -> None:
        """The request failed before any output: drop its holds, charge nothing."""
        if call.finished:
            return
        call.finished = True
        self._hold_closed(call)
        await self._settled(call, self._start_settle(call, 0, 0))

    @staticmethod
    def _hold_closed(call: Call) -> None:
        if call.held and call.admitted is not None:
            metrics.OPEN_HOLDS.dec()

    def _start_settle(
        self, call: Call, charge_nano: int, tokens: int, *, cork: bool = False
    ) -> ScriptCall | None:
        """Send the request's SETTLE (None when it has nothing to settle); `_settled` waits."""
        if not (call.held or call.capped or call.rate_limited) or call.admitted is None:
            return None
        tpm_delta = tokens - call.tpm_estimate if call.rate_limited else 0
        try:
            return self.scripts.start(
                SETTLE,
                call.keys.settle,
                [call.request_id, charge_nano, tpm_delta, "1" if call.held else "0"],
                cork=cork,
            )
        except (redis.RedisError, OSError) as exc:
            log.error("settle failed", request_id=call.request_id, error=str(exc))
            return None

    async def _settled(self, call: Call, settle: ScriptCall | None) -> None:
        if settle is None:
            return
        try:
            await self.scripts.result(settle)
        except (redis.RedisError, OSError) as exc:
            # The hold expires on its own; the charge still reaches the balance through the
            # usage event and the fold.
            log.error("settle failed", request_id=call.request_id, error=str(exc))

    async def record(
        self,
        call: Call,
        usage: TokenUsage,
        *,
        status: UsageStatus,
        estimated: bool = False,
        ttft_ms: int | None = None,
    ) -> Charge:
        """Charge the request and make its usage event durable; returns the charge.

        The settle and the append go out together (one round trip less on every request).
        A fold can tell Redis about the event only after it committed (a WAL flush) and was
        read, folded and committed again: milliseconds after the settle reached Redis.
        Should Redis still take the fold's update first (Redis stalled for that long), the
        charge counts twice in the live balance until reconcile drops the extra as stale:
        admission errs on the safe side, never the other. If the event cannot be committed,
        the settle is undone and the caller gets 503: a response never completes without its
        usage in the log.
        """
        if call.finished:
            raise RuntimeError("a request is metered once")
        call.finished = True
        self._hold_closed(call)
        try:
            charge = call.tariff.charge(usage)
        except PricingError as exc:
            # The worst case priced, so only an image size the hold did not foresee gets here.
            log.error("usage cannot be priced", error=str(exc), request_id=call.request_id)
            await self._settled(call, self._start_settle(call, 0, 0))
            raise InvalidRequest(f"This request cannot be priced: {exc}.") from None
        tokens = usage.total_input_tokens + usage.total_output_tokens
        # Corked: the append below writes first, the settle at the end of this loop iteration.
        settle = self._start_settle(call, charge.charge_nano, tokens, cork=True)
        route = call.attempt.route
        event = UsageRecorded(
            request_id=call.request_id,
            tenant_id=call.caller.tenant_id,
            key_id=call.caller.key_id,
            model=call.model.name,
            endpoint=call.endpoint,
            usage=usage,
            price_version=call.tariff.price.price_version,
            charge_nano=charge.charge_nano,
            base_nano=charge.base_nano,
            status=status,
            latency_ms=int((time.perf_counter() - call.started) * 1000),
            occurred_at=call.started_at,
            provider=route.credential.kind if route else None,
            credential_id=route.credential.id if route else None,
            route_id=route.route_id if route else None,
            upstream_model=route.upstream_model if route else None,
            ttft_ms=ttft_ms,
            estimated=estimated,
        )
        try:
            # The append pool's statement timeout bounds the wait (gateway.runtime).
            await self.appender.append(event, f"usage:{call.request_id}")
        except Exception as exc:
            log.error("usage event not durable", request_id=call.request_id, error=repr(exc))
            self.health.failed()
            await self._settled(call, settle)
            await self._unsettle(call)
            raise Unavailable(
                "The request could not be recorded, so its result is withheld; try again."
            ) from None
        except BaseException:
            # Cancelled: the settle's reply arrives anyway; nobody waits for it.
            if settle is not None:
                settle.future.add_done_callback(ignore_result)
            raise
        await self._settled(call, settle)
        metrics.usage(call.model.name, usage, charge.charge_nano)
        return charge

    async def _unsettle(self, call: Call) -> None:
        if not call.held:
            return
        bal, _, _, unfolded = tenant_keys(call.caller.tenant_id)
        try:
            await self.scripts.call(UNSETTLE, [bal, unfolded], [call.request_id])
        except (redis.RedisError, OSError) as exc:
            log.error("unsettle failed", request_id=call.request_id, error=str(exc))


def new_call(
    *,
    request_id: str,
    endpoint: str,
    caller: Caller,
    model: ModelEntry,
    tariff: Tariff,
    started: float,
    started_at: datetime,
    worst_case_nano: int,
    tpm_estimate: int,
) -> Call:
    now_ms = int(started_at.timestamp() * 1000)
    return Call(
        request_id=request_id,
        endpoint=endpoint,
        caller=caller,
        model=model,
        tariff=tariff,
        started=started,
        started_at=started_at,
        keys=admit_keys(caller.tenant_id, caller.key_id, now_ms, started_at),
        worst_case_nano=worst_case_nano,
        tpm_estimate=tpm_estimate,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
