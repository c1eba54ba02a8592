"""The shipped price catalog: valid, covering the ten providers, documented with sources."""

from __future__ import annotations

from pathlib import Path

from billing.prices.service import load_catalog, model_price_of

ROOT = Path(__file__).resolve().parents[3]


def test_the_catalog_is_valid_and_covers_the_ten_providers() -> None:
    catalog = load_catalog(ROOT / "catalog" / "prices.json")
    assert {m.provider for m in catalog.models} == {
        "openai",
        "anthropic",
        "gemini",
        "bedrock",
        "deepseek",
        "ollama",
        "openrouter",
        "xai",
        "doubao",
        "poe",
    }
    assert len({m.model for m in catalog.models}) == len(catalog.models)
    for entry in catalog.models:
        model_price_of(entry)  # raises on a bad price
        assert entry.source.startswith("https://"), entry.model
        assert entry.as_of, entry.model


def test_docs_pricing_lists_every_catalog_model_with_its_source() -> None:
    docs = (ROOT / "docs" / "pricing.md").read_text()
    for entry in load_catalog(ROOT / "catalog" / "prices.json").models:
        assert f"`{entry.model}`" in docs, entry.model
        assert entry.source in docs, entry.source
