"""Low-balance alerts: one signed webhook per crossing, retried with backoff by real ARQ jobs,
delivered to a local receiver that checks the signature as a customer's server would."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import asyncpg
import msgspec
from arq.connections import RedisSettings

from billing.alerts import tasks as alert_tasks
from billing.alerts.schemas import LowBalanceAlertIn
from billing.alerts.service import alert_service
from billing.alerts.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from billing.fold.service import Folder
from tally.config import Settings, get_settings
from tally.events.billing import CreditsGranted
from tests.fakes.webhook_receiver import Receiver, run_delivery_worker
from tests.integration.billing.helpers import (
    ACTOR,
    append,
    create_tenant,
    gateway_usage,
    set_price,
)

CREDIT = 10**9


def _settings() -> Settings:
    return msgspec.structs.replace(
        get_settings(), alert_webhook_retry_seconds=0.2, alert_webhook_max_attempts=4
    )


async def _fold_and_queue(pool: asyncpg.Pool, redis_url: str) -> list[uuid.UUID]:
    """The live fold with delivery jobs queued after each commit, as in the worker."""
    from arq import create_pool

    arq_redis = await create_pool(RedisSettings.from_dsn(redis_url))
    created: list[uuid.UUID] = []

    async def notify(ids: list[uuid.UUID]) -> None:
        created.extend(ids)
        await alert_tasks.enqueue_deliveries(arq_redis, ids)

    try:
        await Folder(pool, shard_count=1, notify=notify).drain()
    finally:
        await arq_redis.aclose()
    return created


async def test_crossing_the_threshold_sends_one_signed_webhook_per_crossing(
    pool: asyncpg.Pool, redis_url: str, receiver: Receiver
) -> None:
    settings = _settings()
    tenant = await create_tenant(pool)
    await set_price(pool, "m", "1", "1")
    await append(
        pool,
        CreditsGranted(
            tenant_id=tenant,
            grant_id=uuid.uuid4(),
            amount_nano=5 * CREDIT,
            kind="manual",
            reason="",
            actor=ACTOR,
        ),
    )
    # Folded before the alert exists: a fold may stop between two events (it never reads past
    # a transaction still open anywhere on the server), and a new tenant's 0 is below any
    # threshold.
    await _fold_and_queue(pool, redis_url)
    async with pool.acquire() as conn:
        alert = await alert_service.configure(
            conn,
            settings,
            tenant,
            LowBalanceAlertIn(threshold_nano=2 * CREDIT, url=receiver.url),
        )
    secret = alert.signing_secret
    assert secret is not None
    await append(
        pool, await gateway_usage(pool, tenant, "m", input_tokens=500_000, output_tokens=0)
    )
    assert await _fold_and_queue(pool, redis_url) == []  # 4.5 credits: above the threshold

    # Down to 1.5: below 2, one alert. Further down: still below, no second alert.
    await append(
        pool, await gateway_usage(pool, tenant, "m", input_tokens=3_000_000, output_tokens=0)
    )
    first = await _fold_and_queue(pool, redis_url)
    await append(
        pool, await gateway_usage(pool, tenant, "m", input_tokens=500_000, output_tokens=0)
    )
    assert await _fold_and_queue(pool, redis_url) == []
    assert len(first) == 1
    await run_delivery_worker(pool, redis_url, settings)

    assert len(receiver.calls) == 1
    headers, body, _ = receiver.calls[0]
    assert verify(headers[SIGNATURE_HEADER], body, secret, now=int(time.time())) > 0
    assert headers[EVENT_ID_HEADER] == str(first[0])
    payload = msgspec.json.decode(body)
    assert payload["type"] == "balance.low"
    assert payload["data"]["balance_nano"] == 1_500_000_000
    assert payload["data"]["threshold_nano"] == 2 * CREDIT

    # Topped up above the threshold, the alert re-arms; the next crossing alerts again.
    await append(
        pool,
        CreditsGranted(
            tenant_id=tenant,
            grant_id=uuid.uuid4(),
            amount_nano=10 * CREDIT,
            kind="manual",
            reason="",
            actor=ACTOR,
        ),
    )
    assert await _fold_and_queue(pool, redis_url) == []
    await append(
        pool, await gateway_usage(pool, tenant, "m", input_tokens=10_000_000, output_tokens=0)
    )
    second = await _fold_and_queue(pool, redis_url)
    assert len(second) == 1
    await run_delivery_worker(pool, redis_url, settings)
    assert len(receiver.calls) == 2
    async with pool.acquire() as conn:
        page = await alert_service.notifications(conn, tenant, cursor=None, limit=10)
    assert [n.status for n in page.data] == ["delivered", "delivered"]


async def test_a_failing_receiver_gets_retries_with_growing_delays_then_the_delivery(
    pool: asyncpg.Pool, redis_url: str, receiver: Receiver
) -> None:
    receiver.failures = 2
    settings = _settings()
    tenant = await create_tenant(pool)
    async with pool.acquire() as conn:
        await alert_service.configure(
            conn, settings, tenant, LowBalanceAlertIn(threshold_nano=CREDIT, url=receiver.url)
        )
    await append(
        pool,
        CreditsGranted(
            tenant_id=tenant,
            grant_id=uuid.uuid4(),
            amount_nano=CREDIT // 2,
            kind="manual",
            reason="",
            actor=ACTOR,
        ),
    )
    [notification] = await _fold_and_queue(pool, redis_url)
    await run_delivery_worker(pool, redis_url, settings)

    assert len(receiver.calls) == 3
    gaps = [b[2] - a[2] for a, b in zip(receiver.calls, receiver.calls[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # 0.2 s, then doubled
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM notifications WHERE id = $1", notification)
    assert (row["status"], row["attempts"], row["last_status"]) == ("delivered", 3, 204)


async def test_a_receiver_that_never_answers_marks_the_notification_failed(
    pool: asyncpg.Pool, redis_url: str, receiver: Receiver
) -> None:
    receiver.failures = 100
    settings = _settings()
    tenant = await create_tenant(pool)
    async with pool.acquire() as conn:
        await alert_service.configure(
            conn, settings, tenant, LowBalanceAlertIn(threshold_nano=CREDIT, url=receiver.url)
        )
    await append(
        pool,
        CreditsGranted(
            tenant_id=tenant,
            grant_id=uuid.uuid4(),
            amount_nano=1,
            kind="manual",
            reason="",
            actor=ACTOR,
        ),
    )
    [notification] = await _fold_and_queue(pool, redis_url)
    await run_delivery_worker(pool, redis_url, settings)
    assert len(receiver.calls) == settings.alert_webhook_max_attempts
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM notifications WHERE id = $1", notification)
    assert (row["status"], row["last_error"]) == ("failed", "HTTP 503")


async def test_the_sweeper_queues_deliveries_whose_job_was_lost(
    pool: asyncpg.Pool, redis_url: str, receiver: Receiver
) -> None:
    settings = _settings()
    tenant = await create_tenant(pool)
    async with pool.acquire() as conn:
        await alert_service.configure(
            conn, settings, tenant, LowBalanceAlertIn(threshold_nano=CREDIT, url=receiver.url)
        )
    await append(
        pool,
        CreditsGranted(
            tenant_id=tenant,
            grant_id=uuid.uuid4(),
            amount_nano=1,
            kind="manual",
            reason="",
            actor=ACTOR,
        ),
    )
    # Folded without queueing (a worker died right after the commit).
    await Folder(pool, shard_count=1).drain()
    from arq import create_pool

    arq_redis = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        assert await alert_tasks.sweep_notifications({"pool": pool, "redis": arq_redis}) == 1
    finally:
        await arq_redis.aclose()
    await run_delivery_worker(pool, redis_url, settings)
    assert len(receiver.calls) == 1
    assert datetime.now(UTC)  # delivered once, by the swept job
