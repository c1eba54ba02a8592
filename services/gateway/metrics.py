"""The gateway's Prometheus metrics (served on its `/metrics` by `tally.http`).

Label values come from small closed sets only: the provider kind of a credential, a model name
from the catalog (the operator's list, never what a caller typed), a fixed error class. Children
are looked up once per label tuple and kept, so the hot path pays a dict lookup and an
increment, not prometheus_client's label validation and lock.
"""

from __future__ import annotations

from typing import Literal

import prometheus_client

from tally.pricing import TokenUsage

UpstreamErrorKind = Literal[
    "timeout", "unreachable", "rate_limited", "server_error", "credential_refused", "client_error"
]

UPSTREAM_LATENCY = prometheus_client.Histogram(
    "tally_gateway_upstream_duration_seconds",
    "Time from sending a request to a provider until its response headers (or the failure), per "
    "attempt, by provider kind.",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
UPSTREAM_ERRORS = prometheus_client.Counter(
    "tally_gateway_upstream_errors_total",
    "Provider attempts that failed, by provider kind and error: timeout, unreachable, "
    "rate_limited (429), server_error (5xx), credential_refused (401/403), client_error (other "
    "4xx, the request's own fault).",
    ["provider", "error"],
)
UPSTREAM_FAILOVERS = prometheus_client.Counter(
    "tally_gateway_upstream_failovers_total",
    "Requests moved on to another route after a retryable failure, by the provider kind of the "
    "route that failed.",
    ["provider"],
)
TOKENS = prometheus_client.Counter(
    "tally_gateway_tokens_total",
    "Tokens metered in recorded usage events, by model and kind (input, cached_input, "
    "cache_write, output, reasoning; the kinds are disjoint).",
    ["model", "kind"],
)
CREDITS = prometheus_client.Counter(
    "tally_gateway_credits_nano_total",
    "Nano-credits charged in recorded usage events, by model.",
    ["model"],
)
OPEN_HOLDS = prometheus_client.Gauge(
    "tally_gateway_open_holds",
    "Admitted requests of this process whose credit hold is not settled yet.",
)
APPEND_BATCH_SIZE = prometheus_client.Histogram(
    "tally_gateway_event_append_batch_size",
    "Usage events per group-commit batch appended to the event log.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
APPEND_COMMIT = prometheus_client.Histogram(
    "tally_gateway_event_append_commit_seconds",
    "Time to append and commit one group-commit batch of usage events.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

REDIS_BATCH_SIZE = prometheus_client.Histogram(
    "tally_gateway_redis_batch_size",
    "Admission and settle scripts sent to Redis together in one round trip.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

_TOKEN_KINDS = ("input", "cached_input", "cache_write", "output", "reasoning")

_latency: dict[str, prometheus_client.Histogram] = {}
_errors: dict[tuple[str, str], prometheus_client.Counter] = {}
_failovers: dict[str, prometheus_client.Counter] = {}
_tokens: dict[str, tuple[prometheus_client.Counter, ...]] = {}
_credits: dict[str, prometheus_client.Counter] = {}


def upstream_attempt(provider: str, seconds: float) -> None:
    """One attempt at a provider took `seconds` until its headers (or its failure)."""
    child = _latency.get(provider)
    if child is None:
        child = _latency[provider] = UPSTREAM_LATENCY.labels(provider)
    child.observe(seconds)


def upstream_error(provider: str, error: UpstreamErrorKind) -> None:
    child = _errors.get((provider, error))
    if child is None:
        child = _errors[(provider, error)] = UPSTREAM_ERRORS.labels(provider, error)
    child.inc()


def error_kind(status: int) -> UpstreamErrorKind:
    """The error class of a provider's HTTP status (>= 400)."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "credential_refused"
    if status in (408, 504):
        return "timeout"
    if status >= 500:
        return "server_error"
    return "client_error"


def failover(provider: str) -> None:
    """A request leaves a failed route of `provider` for the next one."""
    child = _failovers.get(provider)
    if child is None:
        child = _failovers[provider] = UPSTREAM_FAILOVERS.labels(provider)
    child.inc()


def usage(model: str, usage: TokenUsage, charge_nano: int) -> None:
    """A usage event of `model` is durable: count its tokens and its charge."""
    children = _tokens.get(model)
    if children is None:
        children = _tokens[model] = tuple(TOKENS.labels(model, kind) for kind in _TOKEN_KINDS)
        _credits[model] = CREDITS.labels(model)
    counts = (
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
    )
    for child, count in zip(children, counts, strict=True):
        if count:
            child.inc(count)
    if charge_nano:
        _credits[model].inc(charge_nano)


def append_batch(size: int, seconds: float) -> None:
    """GroupCommitAppender's `on_batch` hook."""
    APPEND_BATCH_SIZE.observe(size)
    APPEND_COMMIT.observe(seconds)
