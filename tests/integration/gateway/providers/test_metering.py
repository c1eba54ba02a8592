"""Metering per provider: the charge equals tokens x price for every token kind.

Each fake reports usage touching every kind its provider has (fresh input, cache reads, cache
writes, output, reasoning), in the provider's own accounting (Anthropic's input excludes the
cache; Gemini's prompt includes it and its thoughts sit beside the output). The price sheet
has a distinct rate per kind, so a count normalised into the wrong kind, or counted twice,
changes the charge.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.providers.base import Credential
from tally.pricing import TokenUsage
from tests.fakes.upstream import FakeUpstream, Reply
from tests.integration.gateway.providers.harness import (
    charge_nano,
    chat,
    chat_stream,
    credential,
    expected_charge_nano,
)

CASES: dict[str, dict[str, Any]] = {
    "anthropic": {
        "model": "claude-sonnet-4-5",
        "usage": {
            "input_tokens": 1_234,
            "cache_creation_input_tokens": 2_048,
            "cache_read_input_tokens": 30_000,
            "output_tokens": 777,
            "output_tokens_details": {"thinking_tokens": 300},
        },
        "expected": TokenUsage(
            input_tokens=1_234,
            cache_write_tokens=2_048,
            cached_input_tokens=30_000,
            output_tokens=477,
            reasoning_tokens=300,
        ),
    },
    "gemini": {
        "model": "gemini-2.5-pro",
        "usage": {
            "promptTokenCount": 41_000,  # includes the 40 000 cached
            "cachedContentTokenCount": 40_000,
            "toolUsePromptTokenCount": 66,
            "candidatesTokenCount": 512,
            "thoughtsTokenCount": 1_999,  # beside the candidates, not inside
        },
        "expected": TokenUsage(
            input_tokens=1_066,
            cached_input_tokens=40_000,
            output_tokens=512,
            reasoning_tokens=1_999,
        ),
    },
    "bedrock": {
        "model": "anthropic.claude-3-7-sonnet-20250219-v1:0",
        "usage": {
            "inputTokens": 901,
            "cacheReadInputTokens": 12_000,
            "cacheWriteInputTokens": 3_100,
            "outputTokens": 333,
        },
        "expected": TokenUsage(
            input_tokens=901,
            cached_input_tokens=12_000,
            cache_write_tokens=3_100,
            output_tokens=333,
        ),
    },
}


def _cred(kind: str, fake: Any) -> Credential:
    if kind == "bedrock":
        return credential(
            kind,
            fake.base_url,
            api_key=None,
            access_key_id=fake.access_key_id,
            secret_access_key=fake.secret_access_key,
            options={"region": fake.region},
        )
    return credential(kind, fake.base_url, api_key=fake.api_key)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", sorted(CASES))
async def test_charge_is_tokens_times_price_for_every_kind(
    kind: str, stream: bool, http: aiohttp.ClientSession, provider_fakes: dict[str, FakeUpstream]
) -> None:
    fake = provider_fakes[kind]
    case = CASES[kind]
    fake.enqueue(Reply(text="Priced answer.", usage=case["usage"]))
    body = {"model": "m", "messages": [{"role": "user", "content": "price me"}]}
    cred = _cred(kind, fake)
    if stream:
        outcome = await chat_stream(http, kind, cred, case["model"], body)
        assert outcome.error is None
        usage = outcome.usage
    else:
        usage = (await chat(http, kind, cred, case["model"], body)).usage

    expected: TokenUsage = case["expected"]
    assert usage == expected
    assert charge_nano(usage) == expected_charge_nano(expected)
    # Each kind contributes: removing any one of them changes the charge.
    for kind_name in ("input_tokens", "cached_input_tokens", "cache_write_tokens",
                      "output_tokens", "reasoning_tokens"):  # fmt: skip
        if getattr(expected, kind_name):
            fewer = TokenUsage(**{**_counts(expected), kind_name: 0})
            assert charge_nano(fewer) < charge_nano(usage)


def _counts(usage: TokenUsage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def test_the_hand_computation_matches_a_worked_example() -> None:
    # 1M input at $3 + 1M cached at $0.30 + 1M writes at $3.75 + 1M output at $15 +
    # 1M reasoning at $20 = $42.05 = 4 205 credits at $0.01 = 4.205e12 nano-credits.
    usage = TokenUsage(
        input_tokens=10**6,
        cached_input_tokens=10**6,
        cache_write_tokens=10**6,
        output_tokens=10**6,
        reasoning_tokens=10**6,
    )
    assert charge_nano(usage) == expected_charge_nano(usage) == 4_205_000_000_000
