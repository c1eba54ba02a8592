"""Pricing: the one function that turns usage facts and a price sheet into a charge.

The gateway prices a request with it before settling, and the billing fold prices the same
recorded facts again with the same price-book version; both must agree to the nano-credit
(design invariant 1), so this module is pure: no I/O, no clock, no float.

Token counts are disjoint, each priced once: `input_tokens` excludes cached and cache-write
tokens, `output_tokens` excludes reasoning tokens. Provider adapters normalise their usage into
this shape (OpenAI's `prompt_tokens` includes cached tokens; Anthropic's `input_tokens` does not).
"""

from __future__ import annotations

from decimal import Decimal, localcontext

import msgspec

from tally.money import EXACT, NANO_PER_CREDIT, round_nano

MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)
HUNDRED = Decimal(100)


class PricingError(ValueError):
    """The usage cannot be priced with this sheet (an image size it has no price for, ...)."""


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one request consumed, in disjoint counts (each token is in exactly one field)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    # Generated images by "SIZE" or "SIZE/QUALITY" (e.g. "1024x1024/hd"): count.
    images: dict[str, int] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Runs for every usage event decoded (the fold decodes them all): one min() call.
        least = min(
            self.input_tokens,
            self.cached_input_tokens,
            self.cache_write_tokens,
            self.output_tokens,
            self.reasoning_tokens,
        )
        if least < 0 or (self.images and min(self.images.values()) < 0):
            raise PricingError("usage counts cannot be negative")

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    @property
    def total_output_tokens(self) -> int:
        return self.output_tokens + self.reasoning_tokens


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base prices of one model in USD: per million tokens, per image, per request.

    A rate left out falls back to its neighbour: cached input and cache writes to the input
    rate, reasoning to the output rate.
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    per_image: dict[str, Decimal] = msgspec.field(default_factory=dict)
    per_request: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        rates = [
            self.input_per_mtok,
            self.output_per_mtok,
            self.cached_input_per_mtok,
            self.cache_write_per_mtok,
            self.reasoning_per_mtok,
            self.per_request,
            *self.per_image.values(),
        ]
        for rate in rates:
            if rate is not None and (not rate.is_finite() or rate < 0):
                raise PricingError("prices must be finite and not negative")

    @property
    def cached_input(self) -> Decimal:
        return (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else self.cached_input_per_mtok
        )

    @property
    def cache_write(self) -> Decimal:
        return (
            self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        )

    @property
    def reasoning(self) -> Decimal:
        return self.output_per_mtok if self.reasoning_per_mtok is None else self.reasoning_per_mtok

    def image_price(self, key: str) -> Decimal:
        """Price of one image: exact "SIZE/QUALITY" first, then "SIZE" alone."""
        if key in self.per_image:
            return self.per_image[key]
        size = key.split("/", 1)[0]
        if size in self.per_image:
            return self.per_image[size]
        raise PricingError(f"no image price for {key!r}")


class Charge(msgspec.Struct, frozen=True):
    """A priced request: base cost and what the tenant pays, both in nano-credits."""

    base_nano: int
    charge_nano: int

    @property
    def margin_nano(self) -> int:
        return self.charge_nano - self.base_nano


def base_cost_usd(usage: TokenUsage, price: ModelPrice) -> Decimal:
    """The provider's cost of `usage` in USD, exact."""
    with localcontext(EXACT):
        return _base_cost_usd(usage, price)


def _base_cost_usd(usage: TokenUsage, price: ModelPrice) -> Decimal:
    # EXACT must be in force. The billing fold prices every request again, so this path
    # avoids work that does not change the result (entering contexts, summing no images).
    tokens = (
        usage.input_tokens * price.input_per_mtok
        + usage.cached_input_tokens * price.cached_input
        + usage.cache_write_tokens * price.cache_write
        + usage.output_tokens * price.output_per_mtok
        + usage.reasoning_tokens * price.reasoning
    ) / MILLION
    images = (
        sum((count * price.image_price(key) for key, count in usage.images.items()), _ZERO)
        if usage.images
        else _ZERO
    )
    return tokens + images + price.per_request


def price_usage(
    usage: TokenUsage, price: ModelPrice, *, margin_pct: Decimal, credit_price_usd: Decimal
) -> Charge:
    """Price `usage`: base cost plus margin, converted to credits, each rounded exactly once."""
    if credit_price_usd <= 0:
        raise PricingError("the credit price must be positive")
    with localcontext(EXACT):
        base_usd = _base_cost_usd(usage, price)
        to_nano = NANO_PER_CREDIT / credit_price_usd
        base = base_usd * to_nano
        charged = base * (HUNDRED + margin_pct) / HUNDRED
    return Charge(base_nano=round_nano(base), charge_nano=max(0, round_nano(charged)))


def worst_case_usage(
    price: ModelPrice,
    *,
    input_tokens: int,
    max_output_tokens: int,
    images: dict[str, int] | None = None,
) -> TokenUsage:
    """The dearest way the request could turn out: what a credit hold must cover.

    Every input token at the dearer of the input and cache-write rates, every output token at
    the dearer of the output and reasoning rates.
    """
    input_dearer = price.cache_write > price.input_per_mtok
    output_dearer = price.reasoning > price.output_per_mtok
    return TokenUsage(
        input_tokens=0 if input_dearer else input_tokens,
        cache_write_tokens=input_tokens if input_dearer else 0,
        output_tokens=0 if output_dearer else max_output_tokens,
        reasoning_tokens=max_output_tokens if output_dearer else 0,
        images=images or {},
    )
