"""The admission scripts keep `tally.live_balance`'s contract: a hold placed by ADMIT is a
LiveBalances hold (settled, reaped and snapshotted by LiveBalances), and SETTLE settles exactly
like LiveBalances.settle."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as redis
from redis.asyncio.connection import Connection

from gateway.admission import (
    ADMIT,
    SETTLE,
    Admitted,
    PackedKeys,
    Refused,
    Script,
    ScriptBatcher,
    admit_keys,
    parse_admit,
    tenant_keys,
)
from gateway.metering import utcnow
from tally.live_balance import LiveBalances

FAR = 2**40


def admit_args(request_id: str, amount: int, *, expires_at: int = FAR, rpm: int = 0) -> list:
    now_ms = int(time.time() * 1000)
    return [request_id, amount, "1", expires_at, now_ms, rpm, 0, 0, 0, 10, -1, -1, amount]


async def admit(
    scripts: ScriptBatcher, tenant: uuid.UUID, key: uuid.UUID, args: list
) -> Admitted | Refused:
    keys = admit_keys(tenant, key, args[4], utcnow())
    return parse_admit(await scripts.call(ADMIT, keys.keys, args))


async def test_an_admit_hold_is_a_live_balance_hold(redis_client: redis.Redis) -> None:
    live, scripts = LiveBalances(redis_client), ScriptBatcher(redis_client)
    tenant, key = uuid.uuid4(), uuid.uuid4()
    assert (await admit(scripts, tenant, key, admit_args("r1", 300))) == Refused("missing")
    await live.load(tenant, seq=1, balance_nano=1_000, unfolded={})

    result = await admit(scripts, tenant, key, admit_args("r1", 300))
    assert isinstance(result, Admitted) and result.available_nano == 700
    # Idempotent per request id, like LiveBalances.hold.
    again = await admit(scripts, tenant, key, admit_args("r1", 300))
    assert isinstance(again, Admitted) and again.available_nano == 700
    refused = await admit(scripts, tenant, key, admit_args("r2", 701))
    assert refused == Refused("insufficient", amount=700)

    # LiveBalances settles an ADMIT hold.
    await live.settle(tenant, "r1", 120)
    snapshot = await live.snapshot(tenant)
    assert snapshot is not None
    assert (snapshot.holds_nano, snapshot.unfolded_nano, snapshot.available_nano) == (0, 120, 880)


async def test_settle_matches_live_balances_and_expired_holds_are_reaped(
    redis_client: redis.Redis,
) -> None:
    live, scripts = LiveBalances(redis_client), ScriptBatcher(redis_client)
    tenant, key = uuid.uuid4(), uuid.uuid4()
    await live.load(tenant, seq=1, balance_nano=1_000, unfolded={})
    await live.hold(tenant, "lh", 200, expires_at=FAR)  # a LiveBalances hold...
    bal, holds, hold_exp, unfolded = tenant_keys(tenant)
    window = admit_keys(tenant, key, int(time.time() * 1000), utcnow())
    settle_keys = [
        bal,
        holds,
        hold_exp,
        unfolded,
        window.key_window,
        window.tenant_window,
        "x:sholds",
        "x:shold_exp",
    ]
    await scripts.call(SETTLE, settle_keys, ["lh", 150, 0, "1"])  # ...settled by SETTLE
    await scripts.call(SETTLE, settle_keys, ["lh", 150, 0, "1"])  # twice: charged once
    snapshot = await live.snapshot(tenant)
    assert snapshot is not None
    assert (snapshot.holds_nano, snapshot.unfolded_nano) == (0, 150)

    # A hold whose request never settled (a crash) is reaped by the next admission.
    await admit(scripts, tenant, key, admit_args("crashed", 100, expires_at=1))
    await admit(scripts, tenant, key, admit_args("next", 10))
    snapshot = await live.snapshot(tenant)
    assert snapshot is not None
    assert snapshot.holds_nano == 10


async def test_rate_limits_refuse_without_holding(redis_client: redis.Redis) -> None:
    live, scripts = LiveBalances(redis_client), ScriptBatcher(redis_client)
    tenant, key = uuid.uuid4(), uuid.uuid4()
    await live.load(tenant, seq=1, balance_nano=1_000, unfolded={})
    for i in range(2):
        assert isinstance(
            await admit(scripts, tenant, key, admit_args(f"r{i}", 1, rpm=2)), Admitted
        )
    refused = await admit(scripts, tenant, key, admit_args("r3", 1, rpm=2))
    assert isinstance(refused, Refused)
    assert (refused.status, refused.scope, refused.what, refused.limit) == (
        "rate_limited",
        "key",
        "requests",
        2,
    )
    assert 0 < refused.amount <= 60_000
    snapshot = await live.snapshot(tenant)
    assert snapshot is not None
    assert snapshot.holds_nano == 2


async def test_concurrent_admits_share_round_trips_and_each_gets_its_own_answer(
    redis_client: redis.Redis,
) -> None:
    live, scripts = LiveBalances(redis_client), ScriptBatcher(redis_client)
    tenant, key = uuid.uuid4(), uuid.uuid4()
    await live.load(tenant, seq=1, balance_nano=1_000, unfolded={})
    results = await asyncio.gather(
        *(admit(scripts, tenant, key, admit_args(f"r{i}", 30)) for i in range(40))
    )
    # 1,000 holds 33 requests of 30; the other seven are refused, each with its own reply.
    assert sum(isinstance(r, Admitted) for r in results) == 33
    assert sorted(r.available_nano for r in results if isinstance(r, Admitted)) == list(
        range(10, 1_000, 30)
    )
    assert all(r == Refused("insufficient", amount=10) for r in results if isinstance(r, Refused))
    snapshot = await live.snapshot(tenant)
    assert snapshot is not None and snapshot.holds_nano == 990
    await scripts.close()


def test_scripts_are_packed_exactly_as_redis_py_packs_them() -> None:
    keys = ["tally:{t}:bal", "tally:{t}:holds"]
    args: list[str | int] = ["req-1", 123_456_789_012, -1, "1", 0, "ünïcode"]
    expected = b"".join(Connection().pack_command("EVALSHA", ADMIT.sha, len(keys), *keys, *args))
    assert ADMIT.command(PackedKeys(keys), args) == expected


async def test_a_script_redis_does_not_know_yet_is_loaded_and_run(
    redis_client: redis.Redis,
) -> None:
    scripts = ScriptBatcher(redis_client)
    # A source no Redis has seen: the first EVALSHA answers NOSCRIPT.
    unknown = Script(f"return ARGV[1] .. '-{uuid.uuid4()}'")
    assert (await scripts.call(unknown, [], ["a"])).startswith(b"a-")
    other = Script(f"return ARGV[1] .. '-{uuid.uuid4()}'")
    # The same inside a shared round trip (the first call, of the known script, goes out
    # alone; the others queue behind it and share one): every call gets its own reply.
    replies = await asyncio.gather(
        scripts.call(unknown, [], ["first"]),
        *(scripts.call(other, [], [str(i)]) for i in range(5)),
    )
    assert [r.split(b"-")[0] for r in replies] == [b"first", b"0", b"1", b"2", b"3", b"4"]
    await scripts.close()
