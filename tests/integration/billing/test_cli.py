"""The operator commands, run as the `tally` console script, each printing one JSON object."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from billing.fold.service import Folder
from tests.integration.billing.helpers import create_tenant

ROOT = Path(__file__).resolve().parents[3]
TALLY = str(Path(sys.executable).parent / "tally")
CREDIT = 10**9


async def tally(*args: str) -> tuple[int, dict[str, Any], str]:
    process = await asyncio.create_subprocess_exec(
        TALLY, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await process.communicate()
    lines = out.decode().strip().splitlines()
    assert len(lines) == 1, (out, err)  # --json prints exactly one object
    return process.returncode or 0, json.loads(lines[0]), err.decode()


async def test_price_set_list_and_below_cost_refusal(pool: asyncpg.Pool) -> None:
    code, change, _ = await tally(
        "price",
        "set",
        "gpt-x",
        "--input",
        "2.50",
        "--output",
        "10",
        "--cached-input",
        "1.25",
        "--margin",
        "20",
        "--json",
    )
    assert code == 0 and change["model"] == "gpt-x" and change["price_version"] >= 1
    code, error, _ = await tally(
        "price", "set", "gpt-x", "--input", "1", "--output", "1", "--margin", "-10", "--json"
    )
    assert code == 1 and "below base cost" in error["error"]["message"]
    code, forced, _ = await tally(
        "price",
        "set",
        "cheap",
        "--input",
        "1",
        "--output",
        "1",
        "--margin",
        "-10",
        "--force",
        "--json",
    )
    assert code == 0 and forced["forced"] and forced["warnings"]
    code, _, _ = await tally("price", "default-margin", "15", "--json")
    assert code == 0
    code, book, _ = await tally("price", "list", "--json")
    assert code == 0
    assert book["default_margin_pct"] == "15"
    by_model = {m["model"]: m for m in book["models"]}
    assert by_model["gpt-x"]["price"]["cached_input_per_mtok"] == "1.25"
    assert by_model["cheap"]["below_cost"] is True


async def test_the_shipped_catalog_imports_and_a_second_import_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    catalog = ROOT / "catalog" / "prices.json"
    code, result, _ = await tally("price", "import", str(catalog), "--margin", "20", "--json")
    assert code == 0, result
    providers = {m["provider"] for m in json.loads(catalog.read_text())["models"]}
    assert providers == {
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
    assert len(result["imported"]) == len(json.loads(catalog.read_text())["models"])
    code, again, _ = await tally("price", "import", str(catalog), "--margin", "20", "--json")
    assert (
        code == 0 and again["imported"] == [] and len(again["unchanged"]) == len(result["imported"])
    )
    async with pool.acquire() as conn:
        events = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'PriceChanged'")
    assert events == len(result["imported"])


async def test_grant_adjust_and_balance_by_tenant_name(pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(pool, "Acme Corp")
    code, granted, _ = await tally(
        "credits",
        "grant",
        "--tenant",
        "acme corp",
        "--credits",
        "12.5",
        "--reason",
        "pilot",
        "--expires",
        "2099-01-01T00:00:00Z",
        "--json",
    )
    assert code == 0 and granted["tenant_id"] == str(tenant)
    assert granted["amount_nano"] == 12_500_000_000
    code, adjusted, _ = await tally(
        "credits",
        "adjust",
        "--tenant",
        str(tenant),
        "--credits",
        "-2.5",
        "--reason",
        "typo",
        "--json",
    )
    assert code == 0 and adjusted["amount_nano"] == -2_500_000_000
    code, balance, _ = await tally("balance", "--tenant", "Acme Corp", "--json")
    assert code == 0
    assert balance["balance_nano"] == 10 * CREDIT
    assert balance["available_nano"] == 10 * CREDIT
    code, folded, _ = await tally("fold", "--json")
    assert code == 0 and folded["events"] >= 3
    code, balance, _ = await tally("balance", "--tenant", "acme corp", "--json")
    assert balance["folded_balance_nano"] == 10 * CREDIT and balance["pending_events"] == 0


async def test_bad_commands_fail_with_a_json_error_and_write_nothing(pool: asyncpg.Pool) -> None:
    await create_tenant(pool, "known")
    for args in (
        ("credits", "grant", "--tenant", "nobody", "--credits", "5"),
        ("credits", "grant", "--tenant", "known", "--credits", "abc"),
        ("credits", "grant", "--tenant", "known", "--credits", "-5"),
        ("credits", "grant", "--tenant", "known", "--credits", "0.0000000001"),
        ("credits", "grant", "--tenant", "known", "--credits", "5", "--expires", "2001-01-01"),
        ("credits", "adjust", "--tenant", "known", "--credits", "5", "--reason", "  "),
        ("balance", "--tenant", str(uuid.uuid4())),
        ("price", "set", "m", "--input", "x", "--output", "1"),
        ("price", "import", "/nonexistent/prices.json"),
    ):
        code, error, stderr = await tally(*args, "--json")
        assert code == 1, args
        assert error["error"]["message"], args
        assert stderr.startswith("tally: "), args
    async with pool.acquire() as conn:
        # Only the tenant's own TenantCreated is in the log.
        assert await conn.fetchval("SELECT count(*) FROM events") == 1


async def test_replay_verify_exits_zero_when_identical_and_one_on_a_difference(
    pool: asyncpg.Pool,
) -> None:
    tenant = await create_tenant(pool, "replayed")
    await tally("credits", "grant", "--tenant", "replayed", "--credits", "3", "--json")
    await Folder(pool, shard_count=1).drain()
    code, report, _ = await tally("replay", "--verify", "--json")
    assert code == 0 and report["ok"], report
    assert report["tables"]["ledger_entries"]["replayed_rows"] == 1

    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE balances SET balance_nano = balance_nano + 1 WHERE tenant_id = $1", tenant
        )
    code, report, _ = await tally("replay", "--verify", "--json")
    assert code == 1 and not report["ok"]
    assert report["tables"]["balances"]["differences"] == 2
    assert report["conservation_violations"] == 1
