"""The gateway's own series on `/metrics`: upstream latency, errors and failovers by provider,
tokens and credits by model, open holds, and the usage events' group-commit batches."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.fixtures.gateway import GatewayServer
from tests.integration.gateway.conftest import World
from tests.integration.gateway.test_failover_and_streams import add_second_route
from tests.integration.gateway.test_openai_client import MESSAGES, usage_events

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: GatewayServer) -> Samples:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_a_failed_over_request_shows_on_metrics_by_provider_and_model(
    world: World,
    pool: asyncpg.Pool,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    backup = fakes["deepseek"]
    await add_second_route(pool, gateway_server, world, backup)
    world.fake.script.append(Behaviour(status=503, retry_after="30"))
    before = await scrape(gateway_server)

    completion = await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert completion.choices[0].message.content
    stream = await world.client.chat.completions.create(
        model=world.model,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for _ in stream:
        pass

    after = await scrape(gateway_server)
    events = await usage_events(pool)
    assert len(events) == 2
    # Upstream: the 503 of the first route, one failover away from it, and three attempts
    # timed (the failed one, the backup's answer, the stream from the cooled-down backup).
    name = "tally_gateway_upstream_errors_total"
    assert delta(before, after, name, provider="openai", error="server_error") == 1
    assert delta(before, after, "tally_gateway_upstream_failovers_total", provider="openai") == 1
    assert delta(before, after, "tally_gateway_upstream_failovers_total", provider="deepseek") == 0
    count = "tally_gateway_upstream_duration_seconds_count"
    assert delta(before, after, count, provider="openai") == 1
    assert delta(before, after, count, provider="deepseek") == 2
    bucket = "tally_gateway_upstream_duration_seconds_bucket"
    assert delta(before, after, bucket, provider="deepseek", le="+Inf") == 2
    # Tokens and credits of this model are exactly what its usage events recorded.
    for kind, field in (("input", "input_tokens"), ("output", "output_tokens")):
        expected = sum(e["usage"].get(field, 0) for e in events)
        assert expected > 0
        tokens = value(after, "tally_gateway_tokens_total", model=world.model, kind=kind)
        assert tokens == expected, kind
    credits = value(after, "tally_gateway_credits_nano_total", model=world.model)
    assert credits == sum(e["charge_nano"] for e in events) > 0
    # Every hold was settled; both usage events went through the group commit.
    assert delta(before, after, "tally_gateway_open_holds") == 0
    batches = delta(before, after, "tally_gateway_event_append_batch_size_count")
    assert 1 <= batches <= 2
    assert delta(before, after, "tally_gateway_event_append_batch_size_sum") == 2
    assert delta(before, after, "tally_gateway_event_append_commit_seconds_count") == batches


async def test_a_request_error_counts_as_a_client_error_without_failover(
    world: World,
    pool: asyncpg.Pool,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    await add_second_route(pool, gateway_server, world, fakes["deepseek"])
    world.fake.script.append(Behaviour(status=400, error_message="context too long"))
    before = await scrape(gateway_server)
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {world.key}"},
            json={"model": world.model, "messages": MESSAGES},
        )
    assert response.status_code == 400
    after = await scrape(gateway_server)
    name = "tally_gateway_upstream_errors_total"
    assert delta(before, after, name, provider="openai", error="client_error") == 1
    assert delta(before, after, "tally_gateway_upstream_failovers_total", provider="openai") == 0
    assert value(after, "tally_gateway_credits_nano_total", model=world.model) == 0
    assert delta(before, after, "tally_gateway_open_holds") == 0


async def test_open_holds_counts_a_request_while_it_waits_on_its_provider(
    world: World, gateway_server: GatewayServer
) -> None:
    world.fake.script.append(Behaviour(latency=1.0))
    before = await scrape(gateway_server)
    request = asyncio.create_task(
        world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    )
    held = 0.0
    for _ in range(100):
        held = delta(before, await scrape(gateway_server), "tally_gateway_open_holds")
        if held or request.done():
            break
        await asyncio.sleep(0.01)
    assert held == 1
    await request
    assert delta(before, await scrape(gateway_server), "tally_gateway_open_holds") == 0
